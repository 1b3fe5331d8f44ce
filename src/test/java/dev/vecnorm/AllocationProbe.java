package dev.vecnorm;

import com.sun.management.ThreadMXBean;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.management.ManagementFactory;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The child JVM of {@link AllocationTest}: runs one call of a scenario until a window of
 * {@link #CALLS} calls allocates nothing (at most {@link #WINDOWS} windows), and prints
 * {@code alloc <bytes in the best window> <call>}.
 */
final class AllocationProbe {

    static final int CALLS = 2_000;
    static final int WINDOWS = 200;

    /** The scenarios, by name: the four BatchNorm shapes, the row norms, GroupNorm and InstanceNorm per layout. */
    static final String[] SCENARIOS = {"batchnorm 0", "batchnorm 1", "batchnorm 2", "batchnorm 3", "rows all",
            "groups nchw", "groups nhwc"};

    static final TensorShape[] BATCH_NORM_SHAPES = {TensorShape.nchw(8, 64, 1, 1), TensorShape.nchw(2, 16, 5, 7),
            TensorShape.nhwc(2, 24, 3, 3),
            // Rows wider than 1024 channels take the four-row loops (in place, and dx).
            TensorShape.nhwc(1, 1040, 2, 3)};

    private AllocationProbe() {
    }

    /** Runs call number {@code args[2]} of scenario {@code args[0] args[1]} (see {@link #calls}). */
    public static void main(String[] args) {
        try (Arena arena = Arena.ofConfined()) {
            List<Map.Entry<String, Runnable>> calls = List.copyOf(calls(arena, args[0] + " " + args[1]).entrySet());
            Map.Entry<String, Runnable> call = calls.get(Integer.parseInt(args[2]));
            System.out.println("alloc " + leastBytesPerWindow(call.getValue()) + " " + call.getKey());
        }
    }

    /** The calls of a scenario, by name, on tensors allocated in {@code arena}. */
    static Map<String, Runnable> calls(Arena arena, String scenario) {
        String[] s = scenario.split(" ");
        return switch (s[0]) {
            case "batchnorm" -> batchNorm(arena, BATCH_NORM_SHAPES[Integer.parseInt(s[1])]);
            case "rows" -> rows(arena);
            case "groups" -> groups(arena, s[1].equals("nchw") ? TensorShape.nchw(2, 8, 5, 5) : TensorShape.nhwc(2, 8, 5, 5));
            default -> throw new IllegalArgumentException("scenario: expected batchnorm, rows or groups, got " + s[0]);
        };
    }

    private static Map<String, Runnable> batchNorm(Arena arena, TensorShape shape) {
        int e = (int) shape.elements(), c = shape.channels();
        MemorySegment x = Segments.of(arena, TestData.gaussian(e, 1, 3));
        MemorySegment dy = Segments.of(arena, TestData.gaussian(e, 2, 1));
        MemorySegment gamma = Segments.of(arena, TestData.gaussian(c, 3, 1));
        MemorySegment beta = Segments.of(arena, TestData.gaussian(c, 4, 1));
        MemorySegment y = arena.allocate(4L * e, 64), dx = arena.allocate(4L * e, 64);
        MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
        MemorySegment dgamma = arena.allocate(4L * c), dbeta = arena.allocate(4L * c);
        BatchNorm bn = BatchNorm.builder(shape).build();
        // In place on a copy: applied thousands of times, the transform drives its input towards
        // huge values, and the later calls must not meet far channels (which allocate by design;
        // see BatchNormEngine.FAR_MEAN).
        MemorySegment xi = arena.allocate(4L * e, 64).copyFrom(x);
        // The fused calls: ReLU, the residual (y over it too), the mask and dresidual.
        BatchNorm relu = BatchNorm.builder(shape).activation(Activation.RELU).build();
        MemorySegment r = Segments.of(arena, TestData.gaussian(e, 5, 1));
        MemorySegment dres = arena.allocate(4L * e, 64), work = arena.allocate(4L * e, 64);
        Map<String, Runnable> calls = new LinkedHashMap<>();
        calls.put("forwardTraining " + shape, () -> bn.forwardTraining(x, gamma, beta, y, mean, var));
        calls.put("forwardInference " + shape, () -> bn.forwardInference(x, gamma, beta, mean, var, y));
        calls.put("forwardInference in place " + shape, () -> bn.forwardInference(xi, gamma, beta, mean, var, xi));
        calls.put("backward " + shape, () -> bn.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta));
        calls.put("fused forwardTraining " + shape, () -> relu.forwardTraining(x, r, gamma, beta, y, mean, var));
        calls.put("fused forwardInference " + shape, () -> relu.forwardInference(x, r, gamma, beta, mean, var, y));
        calls.put("fused forwardInference over the residual " + shape,
                () -> relu.forwardInference(x, work, gamma, beta, mean, var, work));
        calls.put("fused backward " + shape, () -> relu.backward(x, dy, y, gamma, mean, var, dx, dres, dgamma, dbeta));
        calls.put("fused frozen backward " + shape,
                () -> relu.backwardWithFrozenStatistics(x, dy, y, gamma, mean, var, dx, dres, dgamma, dbeta));
        // The mask workspace: the forward that writes it (with and without the residual), the
        // backward that reads it (with and without dresidual).
        MemorySegment ws = arena.allocate(relu.workspaceBytes(), 8);
        calls.put("workspace forwardTraining " + shape, () -> relu.forwardTraining(x, r, gamma, beta, y, mean, var, ws));
        calls.put("workspace forwardTraining, no residual " + shape,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, ws));
        calls.put("workspace backward " + shape,
                () -> relu.backwardWithWorkspace(x, dy, ws, gamma, mean, var, dx, dres, dgamma, dbeta));
        calls.put("workspace backward, no dresidual " + shape,
                () -> relu.backwardWithWorkspace(x, dy, ws, gamma, mean, var, dx, null, dgamma, dbeta));
        return calls;
    }

    private static Map<String, Runnable> rows(Arena arena) {
        // Rows with heads and a stride, Gemma's offset (its 1 + w goes through scratch).
        LayerNorm ln = LayerNorm.builder(5, 40).heads(2).rowStride(90).build();
        RMSNorm rms = RMSNorm.builder(5, 40).heads(2).rowStride(90).unitOffset(true).build();
        long e = ln.tensorFloats();
        MemorySegment x = Segments.of(arena, TestData.gaussian((int) e, 1, 3));
        MemorySegment dy = Segments.of(arena, TestData.gaussian((int) e, 2, 1));
        MemorySegment w = Segments.of(arena, TestData.gaussian(40, 3, 1)), b = Segments.of(arena, TestData.gaussian(40, 4, 1));
        MemorySegment y = arena.allocate(4 * e), dx = arena.allocate(4 * e), h = arena.allocate(4 * e);
        MemorySegment mean = arena.allocate(40), rstd = arena.allocate(40), rrms = arena.allocate(40);
        MemorySegment dw = arena.allocate(160), db = arena.allocate(160);
        ln.forward(x, w, b, y, mean, rstd);
        rms.forward(x, w, y, rrms);
        Map<String, Runnable> calls = new LinkedHashMap<>();
        calls.put("LayerNorm forward", () -> ln.forward(x, w, b, y, mean, rstd));
        calls.put("LayerNorm backward", () -> ln.backward(x, dy, w, mean, rstd, dx, dw, db));
        calls.put("RMSNorm forward", () -> rms.forward(x, w, y, rrms));
        calls.put("RMSNorm backward", () -> rms.backward(x, dy, w, rrms, dx, dw));
        // Last: h grows by x on every call, and its rrms must not reach the backward above.
        MemorySegment hr = arena.allocate(40);
        calls.put("RMSNorm with residual", () -> rms.forwardWithResidual(x, h, w, y, hr));
        return calls;
    }

    private static Map<String, Runnable> groups(Arena arena, TensorShape shape) {
        int n = (int) shape.elements();
        MemorySegment gx = Segments.of(arena, TestData.gaussian(n, 5, 2)), gdy = Segments.of(arena, TestData.gaussian(n, 6, 1));
        MemorySegment gy = arena.allocate(4L * n), gdx = arena.allocate(4L * n);
        MemorySegment gw = Segments.of(arena, TestData.gaussian(8, 7, 1)), gb = arena.allocate(32);
        MemorySegment gm = arena.allocate(32), gr = arena.allocate(32), rm = arena.allocate(32);
        MemorySegment rv = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});
        MemorySegment gdw = arena.allocate(32);
        GroupNorm gn = GroupNorm.builder(shape, 4).build();
        InstanceNorm in = InstanceNorm.builder(shape).build();
        gn.forward(gx, gw, gb, gy, gm, gr);
        Map<String, Runnable> calls = new LinkedHashMap<>();
        calls.put("GroupNorm forward " + shape, () -> gn.forward(gx, gw, gb, gy, gm, gr));
        calls.put("GroupNorm backward " + shape, () -> gn.backward(gx, gdy, gw, gm, gr, gdx, gdw, null));
        calls.put("InstanceNorm forward " + shape, () -> in.forward(gx, gw, gb, gy, null, null, rm, rv));
        calls.put("InstanceNorm eval " + shape, () -> in.forwardInference(gx, gw, gb, rm, rv, gy));
        return calls;
    }

    /** The fewest bytes this thread allocated in one window of calls, stopping at 0. */
    static long leastBytesPerWindow(Runnable call) {
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
