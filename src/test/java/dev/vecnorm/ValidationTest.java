package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * Every rejected argument: the exception's type, that its message names the argument, what was
 * expected and what was given, and that no output byte was written before it was thrown.
 */
class ValidationTest {

    static final TensorShape SHAPE = TensorShape.nchw(2, 3, 4, 5);
    static final int E = (int) SHAPE.elements();
    static final float SENTINEL = Rejections.SENTINEL;

    Arena arena;
    BatchNorm bn;
    MemorySegment x, y, gamma, beta, mean, var, dy, dx, dgamma, dbeta;

    @BeforeEach
    void setUp() {
        arena = Arena.ofConfined();
        bn = BatchNorm.builder(SHAPE).build();
        x = Segments.of(arena, TestData.gaussian(E, 1, 1));
        dy = Segments.of(arena, TestData.gaussian(E, 2, 1));
        gamma = Segments.of(arena, new float[] {1, 2, 3});
        beta = Segments.of(arena, new float[] {0, 1, 2});
        mean = sentinel(3);
        var = sentinel(3);
        y = sentinel(E);
        dx = sentinel(E);
        dgamma = sentinel(3);
        dbeta = sentinel(3);
    }

    @AfterEach
    void tearDown() {
        arena.close();
    }

    private MemorySegment sentinel(int floats) {
        return Rejections.sentinel(arena, floats);
    }

    private void rejects(Class<? extends RuntimeException> type, Executable call, String... words) {
        Rejections.rejects(type, call, words);
        Rejections.assertUntouched(y, mean, var, dx, dgamma, dbeta);
    }

    @Test
    void wrongSizesAreRejectedWithBothSizes() {
        MemorySegment shortX = x.asSlice(0, 4L * (E - 1));
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(shortX, gamma, beta, y, mean, var),
                "x:", "expected " + 4 * E + " bytes", "got " + 4 * (E - 1));
        rejects(IllegalArgumentException.class,
                () -> bn.forwardTraining(x, gamma.asSlice(0, 8), beta, y, mean, var), "gamma:", "12 bytes", "got 8");
        rejects(IllegalArgumentException.class,
                () -> bn.forwardTraining(x, gamma, beta, y, mean.asSlice(4), var), "mean:", "got 8");
        rejects(IllegalArgumentException.class,
                () -> bn.forwardInference(x, gamma, beta, mean, var.asSlice(4), y), "variance:");
        rejects(IllegalArgumentException.class,
                () -> bn.backward(x, dy.asSlice(4), gamma, mean, var, dx, dgamma, dbeta), "dy:");
        rejects(IllegalArgumentException.class,
                () -> bn.backward(x, dy, gamma, mean, var, dx, dgamma.asSlice(4), dbeta), "dgamma:");
        rejects(IllegalArgumentException.class,
                () -> bn.updateRunningStatistics(gamma, beta, mean.asSlice(4), var), "runningMean:");
    }

    @Test
    void missingRequiredSegmentsAreRejected() {
        rejects(NullPointerException.class, () -> bn.forwardTraining(null, gamma, beta, y, mean, var), "x:", "got null");
        rejects(NullPointerException.class, () -> bn.forwardTraining(x, gamma, beta, null, mean, var), "y:");
        rejects(NullPointerException.class, () -> bn.forwardTraining(x, gamma, beta, y, null, var), "mean:");
        rejects(NullPointerException.class, () -> bn.forwardInference(x, gamma, beta, mean, null, y), "variance:");
        rejects(NullPointerException.class, () -> bn.backward(x, null, gamma, mean, var, dx, null, null), "dy:");
        rejects(NullPointerException.class, () -> bn.backward(x, dy, gamma, mean, var, null, null, null), "dx:");
        rejects(NullPointerException.class, () -> bn.updateRunningStatistics(mean, var, null, gamma), "runningMean:");
    }

    @Test
    void readOnlyOutputsAreRejected() {
        rejects(IllegalArgumentException.class,
                () -> bn.forwardTraining(x, gamma, beta, y.asReadOnly(), mean, var), "y:", "read-only");
        rejects(IllegalArgumentException.class,
                () -> bn.forwardTraining(x, gamma, beta, y, mean, var.asReadOnly()), "variance:", "read-only");
        rejects(IllegalArgumentException.class,
                () -> bn.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta.asReadOnly()), "dbeta:", "read-only");
    }

    @Test
    void overlapsOtherThanTheDocumentedInPlacePairsAreRejected() {
        MemorySegment big = sentinel(E + 8);
        MemorySegment a = big.asSlice(0, 4L * E), b = big.asSlice(16, 4L * E);
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(a, gamma, beta, b, mean, var),
                "y:", "disjoint from input x", "overlapping bytes");
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(x, gamma, beta, y, mean, mean),
                "mean:", "disjoint from output variance");
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(x, gamma, beta, y, mean, gamma),
                "variance:", "disjoint from input gamma");
        // dx may be dy, but not x.
        MemorySegment xCopy = Segments.of(arena, Segments.toArray(x));
        rejects(IllegalArgumentException.class, () -> bn.backward(xCopy, dy, gamma, mean, var, xCopy, null, null),
                "dx:", "disjoint from input x", "the same segment");
        // A channel-vector output inside a tensor output.
        rejects(IllegalArgumentException.class,
                () -> bn.forwardTraining(x, gamma, beta, y, y.asSlice(0, 12), var), "y:", "output mean");
    }

    @Test
    void overlapsOfHeapSegmentsAreRejectedWithTheirSize() {
        // Heap segments take the JDK's overlap test, native ones an address comparison: the
        // same rule and the same message for both.
        float[] backing = new float[E + 4];
        MemorySegment heap = MemorySegment.ofArray(backing);
        MemorySegment a = heap.asSlice(0, 4L * E), b = heap.asSlice(16, 4L * E);
        rejects(IllegalArgumentException.class, () -> bn.forwardInference(a, gamma, beta, mean, var, b),
                "y:", "disjoint from input x", "got " + (4 * E - 16) + " overlapping bytes");
        MemorySegment big = sentinel(E + 4);
        MemorySegment c = big.asSlice(0, 4L * E), d = big.asSlice(16, 4L * E);
        rejects(IllegalArgumentException.class, () -> bn.forwardInference(c, gamma, beta, mean, var, d),
                "y:", "disjoint from input x", "got " + (4 * E - 16) + " overlapping bytes");
        // In place is exactly the same region, on the heap too: accepted, and the same bits.
        MemorySegment m = Segments.of(arena, new float[] {0.5f, -1, 2});
        MemorySegment v = Segments.of(arena, new float[] {1, 0.25f, 4});
        float[] h = Segments.toArray(x);
        bn.forwardInference(MemorySegment.ofArray(h), gamma, beta, m, v, MemorySegment.ofArray(h));
        bn.forwardInference(x, gamma, beta, m, v, y);
        assertTrue(Arrays.equals(Segments.toArray(y), h), "in place on the heap differs from out of place");
    }

    @Test
    void rejectedCallsLeaveNothingBehindForTheNextCall() {
        // Each thread reuses one set of argument slots; a call that fails half-way through its
        // checks must not disturb the calls after it (stale segments, or no free slot left).
        MemorySegment shortVar = var.asSlice(0, 8);
        for (int i = 0; i < 20; i++) {
            rejects(IllegalArgumentException.class,
                    () -> bn.backward(x, dy, gamma, mean, var, dx, dgamma, shortVar), "dbeta:");
            rejects(IllegalArgumentException.class,
                    () -> bn.forwardTraining(x, gamma, beta, y, mean, mean), "mean:");
        }
        bn.forwardTraining(x, gamma, beta, y, mean, var);
        float[] out = Segments.toArray(y);
        for (int i = 0; i < E; i++) {
            assertTrue(out[i] != SENTINEL && Float.isFinite(out[i]), "y[" + i + "] = " + out[i]);
        }
    }

    @Test
    void aCallKeepsNoReferenceToTheCallersMemory() throws InterruptedException {
        // The per-thread argument slots and scratch hold a call's segments only during the call,
        // also when its checks fail. A heap tensor that only vecnorm could still reach would
        // never be collected.
        var collected = new java.lang.ref.WeakReference<>(callOnHeapTensors());
        for (int i = 0; i < 50 && collected.get() != null; i++) {
            System.gc();
            Thread.sleep(10);
        }
        assertEquals(null, collected.get(), "vecnorm kept the caller's heap tensor reachable");
    }

    private float[] callOnHeapTensors() {
        float[] h = Segments.toArray(x);
        MemorySegment heap = MemorySegment.ofArray(h);
        bn.forwardTraining(heap, null, null, heap, mean, var);
        bn.backward(heap, MemorySegment.ofArray(Segments.toArray(dy)), null, mean, var, dx, null, null);
        // Rejected after x and y took their slots: the last thing this thread's slots saw.
        MemorySegment shortVar = var.asSlice(0, 8);
        assertThrows(IllegalArgumentException.class,
                () -> bn.forwardTraining(heap, null, null, heap, mean, shortVar));
        return h;
    }

    @Test
    void badEpsilonMomentumAndParallelismAreRejected() {
        for (float eps : new float[] {0f, -1e-5f, Float.NaN, Float.POSITIVE_INFINITY}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> BatchNorm.builder(SHAPE).epsilon(eps));
            assertTrue(e.getMessage().startsWith("epsilon: expected a positive finite number, got "), e.getMessage());
        }
        for (float m : new float[] {-0.1f, 1.5f, Float.NaN}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> BatchNorm.builder(SHAPE).momentum(m));
            assertTrue(e.getMessage().contains("momentum: expected a number in [0, 1], got"), e.getMessage());
        }
        assertThrows(IllegalArgumentException.class, () -> BatchNorm.builder(SHAPE).parallelism(0));
        assertThrows(NullPointerException.class, () -> BatchNorm.builder(SHAPE).executor(null));
        assertThrows(NullPointerException.class, () -> BatchNorm.builder(null));
        assertEquals(0f, BatchNorm.builder(SHAPE).momentum(0f).build().momentum());
        assertEquals(1f, BatchNorm.builder(SHAPE).momentum(1f).build().momentum());
    }

    @Test
    void trainingWithOneValuePerChannelIsRejected() {
        BatchNorm single = BatchNorm.builder(TensorShape.nchw(1, 3, 1, 1)).build();
        MemorySegment x3 = Segments.of(arena, new float[] {1, 2, 3});
        MemorySegment y3 = sentinel(3);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> single.forwardTraining(x3, null, null, y3, mean, var));
        assertTrue(e.getMessage().contains("at least 2 values per channel"), e.getMessage());
        assertTrue(e.getMessage().contains("got 1"), e.getMessage());
        assertThrows(IllegalArgumentException.class,
                () -> single.updateRunningStatistics(gamma, beta, mean, var));
        Rejections.assertUntouched(y3, mean, var);
        // Inference with M = 1 is fine.
        single.forwardInference(x3, null, null, Segments.of(arena, new float[] {1, 2, 3}),
                Segments.of(arena, new float[] {1, 1, 1}), y3);
        assertEquals(0f, y3.getAtIndex(ValueLayout.JAVA_FLOAT, 0));
    }

    @Test
    void shapesRejectNonPositiveDimensions() {
        assertThrows(IllegalArgumentException.class, () -> TensorShape.nchw(0, 1, 1, 1), "batch");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new TensorShape(1, 0, 1, Layout.NCHW));
        assertEquals("channels: expected >= 1, got 0", e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> TensorShape.nhwc(1, 1, 0, 3));
        assertThrows(NullPointerException.class, () -> new TensorShape(1, 1, 1, null));
        assertThrows(IllegalArgumentException.class,
                () -> new TensorShape(Integer.MAX_VALUE, Integer.MAX_VALUE, Long.MAX_VALUE / 2, Layout.NCHW));
    }

    @Test
    void shapesWithMorePlanesThanTheEngineCountsAreRejectedAtBuild() {
        TensorShape huge = new TensorShape(Integer.MAX_VALUE, 4, 600, Layout.NCHW);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> BatchNorm.builder(huge).build());
        assertTrue(e.getMessage().startsWith("shape: expected batch * channels <= "), e.getMessage());
    }

    @Test
    void closedSegmentsAreRejectedBeforeAnyWrite() {
        Arena other = Arena.ofConfined();
        MemorySegment closed = other.allocate(4L * E);
        other.close();
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(closed, gamma, beta, y, mean, var),
                "x:", "closed");
    }

    // ---- the fused calls

    @Test
    void fusedCallsCheckTheResidualAndTheMask() {
        BatchNorm relu = BatchNorm.builder(SHAPE).activation(Activation.RELU).build();
        MemorySegment r = Segments.of(arena, TestData.gaussian(E, 3, 1));
        MemorySegment dres = sentinel(E);
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, r.asSlice(0, 4L * (E - 1)), gamma, beta, y, mean, var),
                "residual:", "expected " + 4 * E + " bytes", "got " + 4 * (E - 1));
        rejects(NullPointerException.class, () -> relu.forwardInference(x, null, gamma, beta, gamma, beta, y),
                "residual:", "got null");
        // y over part of the residual, or mean over the residual: only y == residual is in place.
        MemorySegment big = arena.allocate(4L * (E + 3), 64);
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, big.asSlice(0, 4L * E), gamma, beta, big.asSlice(12, 4L * E), mean, var),
                "y:", "residual", "overlapping bytes");
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, r, gamma, beta, y, r.asSlice(0, 12), var), "mean:", "residual");
        rejects(NullPointerException.class,
                () -> relu.backward(x, dy, null, gamma, mean, var, dx, dres, dgamma, dbeta), "y:", "got null");
        rejects(IllegalArgumentException.class,
                () -> relu.backward(x, dy, y, gamma, mean, var, dx, dx, dgamma, dbeta), "dx:", "output dresidual");
        rejects(IllegalArgumentException.class,
                () -> relu.backward(x, dy, y, gamma, mean, var, dx, y, dgamma, dbeta), "dresidual:", "input y");
        rejects(IllegalArgumentException.class,
                () -> relu.backwardWithFrozenStatistics(x, dy, y, gamma, mean, var, dx, x, dgamma, dbeta),
                "dresidual:", "input x");
        Rejections.assertUntouched(dres);
    }

    /**
     * The mask workspace: 8 * (ceil(120 / 64) + 1) = 24 bytes for this shape, aligned to 8 (its
     * partial words are ORed atomically), writable for the forward, an input of the backward;
     * only an instance with activation RELU takes one. Rejected calls write neither the outputs
     * nor the workspace.
     */
    @Test
    void theWorkspaceIsCheckedBeforeAnyWrite() {
        BatchNorm relu = BatchNorm.builder(SHAPE).activation(Activation.RELU).build();
        assertEquals(24, relu.workspaceBytes());
        MemorySegment ws = arena.allocate(24, 8), dres = sentinel(E);
        ws.fill((byte) 0x5a);
        MemorySegment before = arena.allocate(24, 8).copyFrom(ws);
        rejects(IllegalStateException.class,
                () -> bn.forwardTraining(x, null, gamma, beta, y, mean, var, ws), "forwardTraining", "RELU", "NONE");
        rejects(IllegalStateException.class,
                () -> bn.backwardWithWorkspace(x, dy, ws, gamma, mean, var, dx, null, dgamma, dbeta), "RELU", "NONE");
        rejects(NullPointerException.class,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, null), "workspace:", "24 bytes", "got null");
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, ws.asSlice(0, 16)),
                "workspace:", "expected 24 bytes", "got 16 bytes");
        MemorySegment wide = arena.allocate(32, 8);
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, wide.asSlice(4, 24)),
                "workspace:", "aligned to 8", "got one aligned to 4");
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, ws.asReadOnly()),
                "workspace:", "writable");
        rejects(IllegalArgumentException.class,
                () -> relu.forwardTraining(x, null, gamma, beta, y, mean, var, y.asSlice(0, 24)),
                "overlapping bytes");
        rejects(NullPointerException.class,
                () -> relu.backwardWithWorkspace(x, dy, null, gamma, mean, var, dx, dres, dgamma, dbeta),
                "workspace:", "got null");
        rejects(IllegalArgumentException.class,
                () -> relu.backwardWithWorkspace(x, dy, dx.asSlice(0, 24), gamma, mean, var, dx, dres, dgamma, dbeta),
                "dx:", "input workspace");
        Rejections.assertUntouched(dres);
        assertEquals(-1, ws.mismatch(before), "a rejected forward wrote the workspace");
        // The backward only reads it: a read-only view is accepted.
        relu.forwardTraining(x, null, gamma, beta, y, mean, var, ws);
        relu.backwardWithWorkspace(x, dy, ws.asReadOnly(), gamma, mean, var, dx, dres, dgamma, dbeta);
    }

    @Test
    void theUnfusedBackwardOfAReluInstanceNamesTheOverloadToCall() {
        BatchNorm relu = BatchNorm.builder(SHAPE).activation(Activation.RELU).build();
        for (Executable call : new Executable[] {
            () -> relu.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta),
            () -> relu.backwardWithFrozenStatistics(x, dy, gamma, mean, var, dx, dgamma, dbeta)}) {
            rejects(IllegalStateException.class, call, "RELU", "(x, dy, y, gamma, mean, variance, dx, dresidual, dgamma, dbeta)");
        }
        NullPointerException e = assertThrows(NullPointerException.class,
                () -> BatchNorm.builder(SHAPE).activation(null));
        assertTrue(e.getMessage().startsWith("activation:"), e.getMessage());
        assertEquals(Activation.NONE, BatchNorm.builder(SHAPE).build().activation());
        assertEquals(Activation.RELU, relu.activation());
    }
}
