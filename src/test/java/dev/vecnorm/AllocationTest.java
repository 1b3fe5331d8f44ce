package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.sun.management.ThreadMXBean;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.management.ManagementFactory;
import org.junit.jupiter.api.Test;

/**
 * A call allocates nothing once the JIT has compiled it: engines call BatchNorm per layer and per
 * step, and garbage per call would be garbage per layer. Measured with the thread's allocation
 * counter over windows of calls on small tensors (where any per-call object would dominate);
 * the JIT needs some calls before escape analysis and the Vector API's intrinsics apply, so the
 * test looks for one window without a byte allocated among the first {@link #WINDOWS}. A single
 * per-call object (16 bytes or more) makes every window allocate at least {@link #CALLS} x 16
 * bytes, so the test cannot pass by chance.
 */
class AllocationTest {

    static final int CALLS = 2_000;
    static final int WINDOWS = 200;

    @Test
    void trainingInferenceAndBackwardAllocateNothingPerCall() {
        for (TensorShape shape : new TensorShape[] {TensorShape.nchw(8, 64, 1, 1),
                TensorShape.nchw(2, 16, 5, 7), TensorShape.nhwc(2, 24, 3, 3),
                // Rows wider than 1024 channels take the four-row loops (in place, and dx).
                TensorShape.nhwc(1, 1040, 2, 3)}) {
            try (Arena arena = Arena.ofConfined()) {
                int e = (int) shape.elements(), c = shape.channels();
                MemorySegment x = Segments.of(arena, TestData.gaussian(e, 1, 3));
                MemorySegment dy = Segments.of(arena, TestData.gaussian(e, 2, 1));
                MemorySegment gamma = Segments.of(arena, TestData.gaussian(c, 3, 1));
                MemorySegment beta = Segments.of(arena, TestData.gaussian(c, 4, 1));
                MemorySegment y = arena.allocate(4L * e, 64), dx = arena.allocate(4L * e, 64);
                MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
                MemorySegment dgamma = arena.allocate(4L * c), dbeta = arena.allocate(4L * c);
                BatchNorm bn = BatchNorm.builder(shape).build();
                assertEquals(0, leastBytesPerWindow(() -> bn.forwardTraining(x, gamma, beta, y, mean, var)),
                        "forwardTraining " + shape);
                assertEquals(0, leastBytesPerWindow(() -> bn.forwardInference(x, gamma, beta, mean, var, y)),
                        "forwardInference " + shape);
                // In place on a copy: applied thousands of times, the transform drives its input
                // towards huge values, and the later calls must not meet far channels (which
                // allocate by design; see BatchNormEngine.FAR_MEAN).
                MemorySegment xi = arena.allocate(4L * e, 64).copyFrom(x);
                assertEquals(0, leastBytesPerWindow(() -> bn.forwardInference(xi, gamma, beta, mean, var, xi)),
                        "forwardInference in place " + shape);
                assertEquals(0, leastBytesPerWindow(() -> bn.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta)),
                        "backward " + shape);
                // The fused calls: ReLU, the residual (y over it too), the mask and dresidual.
                BatchNorm relu = BatchNorm.builder(shape).activation(Activation.RELU).build();
                MemorySegment r = Segments.of(arena, TestData.gaussian(e, 5, 1));
                MemorySegment dres = arena.allocate(4L * e, 64), work = arena.allocate(4L * e, 64);
                assertEquals(0, leastBytesPerWindow(() -> relu.forwardTraining(x, r, gamma, beta, y, mean, var)),
                        "fused forwardTraining " + shape);
                assertEquals(0, leastBytesPerWindow(() -> relu.forwardInference(x, r, gamma, beta, mean, var, y)),
                        "fused forwardInference " + shape);
                assertEquals(0, leastBytesPerWindow(() -> relu.forwardInference(x, work, gamma, beta, mean, var, work)),
                        "fused forwardInference over the residual " + shape);
                assertEquals(0, leastBytesPerWindow(() -> relu.backward(x, dy, y, gamma, mean, var, dx, dres, dgamma, dbeta)),
                        "fused backward " + shape);
                assertEquals(0, leastBytesPerWindow(() -> relu.backwardWithFrozenStatistics(x, dy, y, gamma, mean, var, dx,
                        dres, dgamma, dbeta)), "fused frozen backward " + shape);
            }
        }
    }

    @Test
    void theNormFamilyAllocatesNothingPerCall() {
        try (Arena arena = Arena.ofConfined()) {
            // Rows with heads and a stride, Gemma's offset (its 1 + w goes through scratch).
            LayerNorm ln = LayerNorm.builder(5, 40).heads(2).rowStride(90).build();
            RMSNorm rms = RMSNorm.builder(5, 40).heads(2).rowStride(90).unitOffset(true).build();
            long e = ln.tensorFloats();
            MemorySegment x = Segments.of(arena, TestData.gaussian((int) e, 1, 3));
            MemorySegment dy = Segments.of(arena, TestData.gaussian((int) e, 2, 1));
            MemorySegment w = Segments.of(arena, TestData.gaussian(40, 3, 1)), b = Segments.of(arena, TestData.gaussian(40, 4, 1));
            MemorySegment y = arena.allocate(4 * e), dx = arena.allocate(4 * e), h = arena.allocate(4 * e);
            MemorySegment mean = arena.allocate(40), rstd = arena.allocate(40), dw = arena.allocate(160), db = arena.allocate(160);
            ln.forward(x, w, b, y, mean, rstd);
            assertEquals(0, leastBytesPerWindow(() -> ln.forward(x, w, b, y, mean, rstd)), "LayerNorm forward");
            assertEquals(0, leastBytesPerWindow(() -> ln.backward(x, dy, w, mean, rstd, dx, dw, db)), "LayerNorm backward");
            assertEquals(0, leastBytesPerWindow(() -> rms.forward(x, w, y, rstd)), "RMSNorm forward");
            assertEquals(0, leastBytesPerWindow(() -> rms.forwardWithResidual(x, h, w, y, rstd)), "RMSNorm with residual");
            assertEquals(0, leastBytesPerWindow(() -> rms.backward(x, dy, w, rstd, dx, dw)), "RMSNorm backward");
            for (TensorShape shape : new TensorShape[] {TensorShape.nchw(2, 8, 5, 5), TensorShape.nhwc(2, 8, 5, 5)}) {
                int n = (int) shape.elements();
                MemorySegment gx = Segments.of(arena, TestData.gaussian(n, 5, 2)), gdy = Segments.of(arena, TestData.gaussian(n, 6, 1));
                MemorySegment gy = arena.allocate(4L * n), gdx = arena.allocate(4L * n);
                MemorySegment gw = Segments.of(arena, TestData.gaussian(8, 7, 1)), gb = arena.allocate(32);
                MemorySegment gm = arena.allocate(32), gr = arena.allocate(32), rm = arena.allocate(32), rv = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});
                MemorySegment gdw = arena.allocate(32);
                GroupNorm gn = GroupNorm.builder(shape, 4).build();
                InstanceNorm in = InstanceNorm.builder(shape).build();
                gn.forward(gx, gw, gb, gy, gm, gr);
                assertEquals(0, leastBytesPerWindow(() -> gn.forward(gx, gw, gb, gy, gm, gr)), "GroupNorm forward " + shape);
                assertEquals(0, leastBytesPerWindow(() -> gn.backward(gx, gdy, gw, gm, gr, gdx, gdw, null)),
                        "GroupNorm backward " + shape);
                assertEquals(0, leastBytesPerWindow(() -> in.forward(gx, gw, gb, gy, null, null, rm, rv)), "InstanceNorm forward " + shape);
                assertEquals(0, leastBytesPerWindow(() -> in.forwardInference(gx, gw, gb, rm, rv, gy)), "InstanceNorm eval " + shape);
            }
        }
    }

    /** The fewest bytes this thread allocated in one window of calls, stopping at 0. */
    private static long leastBytesPerWindow(Runnable call) {
        ThreadMXBean threads = (ThreadMXBean) ManagementFactory.getThreadMXBean();
        long least = Long.MAX_VALUE;
        for (int w = 0; w < WINDOWS && least > 0; w++) {
            long before = threads.getCurrentThreadAllocatedBytes();
            for (int i = 0; i < CALLS; i++) {
                call.run();
            }
            least = Math.min(least, threads.getCurrentThreadAllocatedBytes() - before);
        }
        return least;
    }
}
