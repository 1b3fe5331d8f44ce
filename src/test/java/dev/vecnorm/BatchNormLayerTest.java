package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;

/**
 * The stateful layer: PyTorch's initial state and names, training and evaluation mode over
 * varying batch sizes, backward, strict state loading, the shape cache and concurrent
 * evaluation. The kernels themselves are checked against the double reference elsewhere; here
 * the layer's outputs are compared bit for bit with direct {@link BatchNorm} calls given the
 * state the layer should be using (which fails if it passes the wrong statistics, parameters or
 * rule), and once against the reference within {@link Expect}'s derived bounds.
 */
class BatchNormLayerTest {

    static final int C = 4;
    static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    static final ValueLayout.OfLong I64 = ValueLayout.JAVA_LONG_UNALIGNED;

    /** A state dict of random values (positive variances), counter {@code count}. */
    static Map<String, MemorySegment> randomState(Arena arena, int channels, long seed, long count,
                                                  boolean affine, boolean tracked) {
        Map<String, MemorySegment> state = new LinkedHashMap<>();
        if (affine) {
            state.put("weight", Segments.of(arena, TestData.gaussian(channels, seed, 1)));
            state.put("bias", Segments.of(arena, TestData.gaussian(channels, seed + 1, 1)));
        }
        if (tracked) {
            state.put("running_mean", Segments.of(arena, TestData.gaussian(channels, seed + 2, 2)));
            float[] var = TestData.gaussian(channels, seed + 3, 1);
            for (int i = 0; i < channels; i++) {
                var[i] = 0.25f + var[i] * var[i];
            }
            state.put("running_var", Segments.of(arena, var));
            MemorySegment n = arena.allocate(8);
            n.set(I64, 0, count);
            state.put("num_batches_tracked", n);
        }
        return state;
    }

    static float[] floats(Map<String, MemorySegment> state, String key) {
        return Segments.toArray(state.get(key));
    }

    @Test
    void initialStateIsPyTorchs() {
        try (BatchNormLayer layer = BatchNormLayer.builder(3).build()) {
            Map<String, MemorySegment> s = layer.stateDict();
            assertEquals(List.of("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
                    new ArrayList<>(s.keySet()));
            assertArrayEquals(new float[] {1, 1, 1}, floats(s, "weight"));
            assertArrayEquals(new float[] {0, 0, 0}, floats(s, "bias"));
            assertArrayEquals(new float[] {0, 0, 0}, floats(s, "running_mean"));
            assertArrayEquals(new float[] {1, 1, 1}, floats(s, "running_var"));
            assertEquals(8, s.get("num_batches_tracked").byteSize());
            assertEquals(0L, s.get("num_batches_tracked").get(I64, 0));
            assertEquals(0L, layer.numBatchesTracked());
            assertTrue(layer.isTraining());
            for (MemorySegment v : s.values()) {
                assertTrue(v.isReadOnly());
            }
            assertThrows(UnsupportedOperationException.class, () -> s.put("x", null));
            assertEquals(0.1f, layer.momentum());
            assertEquals(1e-5f, layer.epsilon());
            assertEquals(RunningStatistics.PYTORCH, layer.runningStatistics());
            assertFalse(layer.eval().isTraining());
            assertTrue(layer.train().isTraining());
        }
    }

    @Test
    void affineFalseAndUntrackedLayersHaveNoSuchState() {
        try (BatchNormLayer plain = BatchNormLayer.builder(2).affine(false).build();
             BatchNormLayer untracked = BatchNormLayer.builder(2).trackRunningStats(false).build();
             BatchNormLayer neither = BatchNormLayer.builder(2).affine(false).trackRunningStats(false).build()) {
            assertEquals(List.of("running_mean", "running_var", "num_batches_tracked"),
                    new ArrayList<>(plain.stateDict().keySet()));
            assertEquals(List.of("weight", "bias"), new ArrayList<>(untracked.stateDict().keySet()));
            assertTrue(neither.stateDict().isEmpty());
            IllegalStateException e = assertThrows(IllegalStateException.class, plain::weightGradient);
            assertTrue(e.getMessage().startsWith("weightGradient: the layer was built with affine(false)"), e.getMessage());
            assertThrows(IllegalStateException.class, plain::weight);
            assertThrows(IllegalStateException.class, plain::bias);
            assertThrows(IllegalStateException.class, plain::biasGradient);
            assertThrows(IllegalStateException.class, untracked::numBatchesTracked);
        }
    }

    /**
     * Training over batch sizes 2, 5, 3 and then another layout, for every rule: y, the running
     * statistics and the counter equal direct calls of forwardTraining and updateRunningStatistics
     * (the counting overload, n = step) on a copy of the state; y is also within the reference's
     * bounds.
     */
    @Test
    void trainingOverVaryingBatchesFollowsTheRule() {
        TensorShape[] shapes = {TensorShape.nchw(2, C, 3, 3), TensorShape.nchw(5, C, 3, 3),
                TensorShape.nchw(3, C, 2, 4), TensorShape.nhwc(4, C, 3, 2)};
        for (RunningStatistics rule : RunningStatistics.values()) {
            try (Arena arena = Arena.ofShared();
                 BatchNormLayer layer = BatchNormLayer.builder(C).runningStatistics(rule).epsilon(1e-3f).build()) {
                Map<String, MemorySegment> start = randomState(arena, C, 7, 10, true, true);
                layer.loadStateDict(start);
                float[] gamma = floats(start, "weight"), beta = floats(start, "bias");
                MemorySegment rm = Segments.of(arena, floats(start, "running_mean"));
                MemorySegment rv = Segments.of(arena, floats(start, "running_var"));
                for (int step = 0; step < shapes.length; step++) {
                    TensorShape shape = shapes[step];
                    float[] x = TestData.tensor(shape, 20 + step, TestData.Distribution.NORMAL,
                            TestData.Distribution.LARGE_MEAN);
                    MemorySegment y = Segments.zeros(arena, x.length);
                    layer.forward(shape, Segments.of(arena, x), y);

                    BatchNorm direct = BatchNorm.builder(shape).runningStatistics(rule).epsilon(1e-3f).build();
                    Runs.Training t = Runs.training(direct, x, gamma, beta);
                    direct.updateRunningStatistics(Segments.of(arena, t.mean()), Segments.of(arena, t.variance()),
                            rm, rv, 10 + step + 1);
                    String at = rule + ", step " + step + ", " + shape;
                    Expect.bitwiseEqual("y", t.y(), Segments.toArray(y), at);
                    Expect.trainingMatchesReference(shape, x, gamma, beta, 1e-3f,
                            new Runs.Training(Segments.toArray(y), t.mean(), t.variance()), at);
                    Map<String, MemorySegment> s = layer.stateDict();
                    Expect.bitwiseEqual("running_mean", Segments.toArray(rm), floats(s, "running_mean"), at);
                    Expect.bitwiseEqual("running_var", Segments.toArray(rv), floats(s, "running_var"), at);
                    assertEquals(10 + step + 1, layer.numBatchesTracked(), at);
                }
            }
        }
    }

    /** Evaluation mode: y from the running statistics, within the inference bound; no state changes. */
    @Test
    void evaluationUsesTheRunningStatistics() {
        TensorShape shape = TensorShape.nhwc(3, C, 2, 5);
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            Map<String, MemorySegment> state = randomState(arena, C, 30, 3, true, true);
            layer.loadStateDict(state);
            layer.eval();
            float[] x = TestData.tensor(shape, 31, TestData.Distribution.NORMAL);
            MemorySegment y = Segments.zeros(arena, x.length);
            layer.forward(shape, Segments.of(arena, x), y);
            float[] got = Segments.toArray(y);
            float[] g = floats(state, "weight"), b = floats(state, "bias");
            float[] mean = floats(state, "running_mean"), var = floats(state, "running_var");
            double[] expected = Reference.transform(shape, x, Reference.widen(g), Reference.widen(b),
                    Reference.widen(mean), Reference.widen(var), 1e-5f);
            for (int n = 0; n < shape.batch(); n++) {
                for (int c = 0; c < C; c++) {
                    double a = g[c] / Math.sqrt(var[c] + (double) 1e-5f);
                    for (long s = 0; s < shape.spatial(); s++) {
                        int i = Reference.index(shape, n, c, s);
                        Expect.within("y", got[i], expected[i], Bounds.inferenceOutput(a, x[i] - mean[c], b[c]),
                                "n " + n + ", c " + c + ", s " + s);
                    }
                }
            }
            assertEquals(3, layer.numBatchesTracked());
            Expect.bitwiseEqual("running_mean", mean, floats(layer.stateDict(), "running_mean"), "eval");
            Expect.bitwiseEqual("running_var", var, floats(layer.stateDict(), "running_var"), "eval");
        }
    }

    /** Backward in training mode is BatchNorm.backward with the saved statistics; gradients written. */
    @Test
    void trainingBackwardWritesTheGradients() {
        TensorShape shape = TensorShape.nchw(3, C, 4, 2);
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            Map<String, MemorySegment> state = randomState(arena, C, 40, 0, true, true);
            layer.loadStateDict(state);
            float[] x = TestData.tensor(shape, 41, TestData.Distribution.NORMAL);
            float[] dy = TestData.gaussian(x.length, 42, 1);
            MemorySegment xs = Segments.of(arena, x);
            layer.forward(shape, xs, Segments.zeros(arena, x.length));
            BatchNorm direct = BatchNorm.builder(shape).build();
            Runs.Training t = Runs.training(direct, x, floats(state, "weight"), floats(state, "bias"));
            Runs.Backward expected = Runs.backward(direct, false, x, dy, floats(state, "weight"), t.mean(), t.variance());
            for (int repeat = 0; repeat < 2; repeat++) {
                // Twice: the gradients are written, not accumulated.
                MemorySegment dx = Segments.zeros(arena, x.length);
                layer.backward(shape, xs, Segments.of(arena, dy), dx);
                Expect.bitwiseEqual("dx", expected.dx(), Segments.toArray(dx), "repeat " + repeat);
                Expect.bitwiseEqual("dweight", expected.dgamma(), Segments.toArray(layer.weightGradient()), "repeat " + repeat);
                Expect.bitwiseEqual("dbias", expected.dbeta(), Segments.toArray(layer.biasGradient()), "repeat " + repeat);
            }
            assertTrue(layer.weightGradient().isReadOnly());
        }
    }

    /**
     * A RELU layer's training backward reads the mask its forward kept: the bits of BatchNorm's
     * y-form fused backward given that forward's output, so it is given a zeroed y here (the
     * y form would mask every gradient to 0); after a forward of another shape, the mask of
     * the new shape, and a second backward still the same bits (the mask is not consumed).
     */
    @Test
    void reluBackwardReadsTheForwardsMask() {
        for (TensorShape shape : List.of(TensorShape.nchw(3, C, 5, 3), TensorShape.nhwc(3, C, 5, 3),
                TensorShape.nhwc(2, C, 1, 1))) {
            try (Arena arena = Arena.ofShared();
                 BatchNormLayer layer = BatchNormLayer.builder(C).activation(Activation.RELU).build()) {
                Map<String, MemorySegment> state = randomState(arena, C, 60, 0, true, true);
                layer.loadStateDict(state);
                float[] gamma = floats(state, "weight"), beta = floats(state, "bias");
                TensorShape other = TensorShape.nchw(shape.batch() + 1, C, 2, 2);
                float[] xo = TestData.tensor(other, 61, TestData.Distribution.NORMAL);
                layer.forward(other, Segments.of(arena, xo), Segments.zeros(arena, xo.length));
                float[] x = TestData.tensor(shape, 62, TestData.Distribution.NORMAL);
                float[] r = TestData.gaussian(x.length, 63, 1);
                float[] dy = TestData.gaussian(x.length, 64, 1);
                BatchNorm direct = BatchNorm.builder(shape).activation(Activation.RELU).build();
                Runs.Training t = Runs.fusedTraining(direct, x, r, gamma, beta);
                Runs.FusedBackward expected = Runs.fusedBackward(direct, false, x, dy, t.y(), gamma, t.mean(), t.variance());
                MemorySegment xs = Segments.of(arena, x), y = Segments.zeros(arena, x.length);
                layer.forward(shape, xs, Segments.of(arena, r), y);
                Expect.bitwiseEqual("y", t.y(), Segments.toArray(y), shape.toString());
                for (int repeat = 0; repeat < 2; repeat++) {
                    MemorySegment dx = Segments.zeros(arena, x.length), dres = Segments.zeros(arena, x.length);
                    layer.backward(shape, xs, Segments.of(arena, dy), Segments.zeros(arena, x.length), dx, dres);
                    String where = shape + ", repeat " + repeat;
                    Expect.bitwiseEqual("dx", expected.dx(), Segments.toArray(dx), where);
                    Expect.bitwiseEqual("dresidual", expected.dresidual(), Segments.toArray(dres), where);
                    Expect.bitwiseEqual("dweight", expected.dgamma(), Segments.toArray(layer.weightGradient()), where);
                    Expect.bitwiseEqual("dbias", expected.dbeta(), Segments.toArray(layer.biasGradient()), where);
                }
                // A y of the wrong size is still rejected.
                assertThrows(IllegalArgumentException.class, () -> layer.backward(shape, xs,
                        Segments.of(arena, dy), Segments.zeros(arena, x.length - 1),
                        Segments.zeros(arena, x.length), null));
            }
        }
    }

    /** Backward in evaluation mode is the frozen-statistics backward with the running statistics. */
    @Test
    void evaluationBackwardFreezesTheStatistics() {
        TensorShape shape = TensorShape.nhwc(2, C, 3, 3);
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            Map<String, MemorySegment> state = randomState(arena, C, 50, 0, true, true);
            layer.loadStateDict(state);
            layer.eval();
            float[] x = TestData.tensor(shape, 51, TestData.Distribution.NORMAL);
            float[] dy = TestData.gaussian(x.length, 52, 1);
            MemorySegment dx = Segments.zeros(arena, x.length);
            layer.backward(shape, Segments.of(arena, x), Segments.of(arena, dy), dx);
            Runs.Backward expected = Runs.backward(BatchNorm.builder(shape).build(), true, x, dy,
                    floats(state, "weight"), floats(state, "running_mean"), floats(state, "running_var"));
            Expect.bitwiseEqual("dx", expected.dx(), Segments.toArray(dx), "eval backward");
            Expect.bitwiseEqual("dweight", expected.dgamma(), Segments.toArray(layer.weightGradient()), "eval");
            Expect.bitwiseEqual("dbias", expected.dbeta(), Segments.toArray(layer.biasGradient()), "eval");
        }
    }

    /**
     * trackRunningStats(false): batch statistics in evaluation mode too (PyTorch), so eval forward
     * and backward are the training calls; affine(false): gamma 1, beta 0.
     */
    @Test
    void untrackedLayerUsesBatchStatisticsInEvaluation() {
        TensorShape shape = TensorShape.nchw(2, C, 3, 1);
        try (Arena arena = Arena.ofShared();
             BatchNormLayer layer = BatchNormLayer.builder(C).trackRunningStats(false).affine(false).build()) {
            layer.eval();
            float[] x = TestData.tensor(shape, 60, TestData.Distribution.NORMAL);
            float[] dy = TestData.gaussian(x.length, 61, 1);
            MemorySegment xs = Segments.of(arena, x);
            MemorySegment y = Segments.zeros(arena, x.length), dx = Segments.zeros(arena, x.length);
            layer.forward(shape, xs, y);
            layer.backward(shape, xs, Segments.of(arena, dy), dx);
            BatchNorm direct = BatchNorm.builder(shape).build();
            Runs.Training t = Runs.training(direct, x, null, null);
            Expect.bitwiseEqual("y", t.y(), Segments.toArray(y), "untracked eval");
            Runs.Backward expected = Runs.backward(direct, false, x, dy, null, t.mean(), t.variance());
            Expect.bitwiseEqual("dx", expected.dx(), Segments.toArray(dx), "untracked eval");
        }
    }

    @Test
    void backwardNeedsTheShapeOfTheLastForward() {
        TensorShape two = TensorShape.nchw(2, C, 2, 2), three = TensorShape.nchw(3, C, 2, 2);
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            MemorySegment x2 = Segments.of(arena, TestData.gaussian((int) two.elements(), 70, 1));
            MemorySegment x3 = Segments.of(arena, TestData.gaussian((int) three.elements(), 71, 1));
            MemorySegment dx3 = Segments.of(arena, new float[(int) three.elements()]);
            IllegalStateException none = assertThrows(IllegalStateException.class,
                    () -> layer.backward(three, x3, x3, dx3));
            assertTrue(none.getMessage().startsWith("backward: expected a forward with batch statistics"),
                    none.getMessage());
            layer.forward(two, x2, Segments.zeros(arena, two.elements()));
            IllegalArgumentException other = assertThrows(IllegalArgumentException.class,
                    () -> layer.backward(three, x3, x3, dx3));
            assertTrue(other.getMessage().startsWith("shape: expected " + two), other.getMessage());
            assertTrue(other.getMessage().endsWith("got " + three), other.getMessage());
            for (float f : Segments.toArray(dx3)) {
                assertEquals(0f, f);
            }
            IllegalArgumentException channels = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(TensorShape.nchw(2, C + 1, 2, 2), x2, x2));
            assertTrue(channels.getMessage().startsWith("shape: expected 4 channels (the layer's), got 5"),
                    channels.getMessage());
            IllegalArgumentException single = assertThrows(IllegalArgumentException.class,
                    () -> layer.forward(TensorShape.nc(1, C), x2.asSlice(0, 16), x2.asSlice(0, 16)));
            assertTrue(single.getMessage().contains("at least 2 values per channel"), single.getMessage());
            assertEquals(1, layer.numBatchesTracked(), "a rejected forward does not count");
        }
    }

    /** Twelve batch sizes in turn: at most eight cached instances, each shape still right. */
    @Test
    void anyBatchSizeWithABoundedCache() {
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            layer.loadStateDict(randomState(arena, C, 80, 0, true, true));
            layer.eval();
            Map<Integer, float[]> first = new HashMap<>();
            for (int round = 0; round < 2; round++) {
                for (int batch = 1; batch <= 12; batch++) {
                    TensorShape shape = TensorShape.nchw(batch, C, 2, 3);
                    MemorySegment y = Segments.zeros(arena, shape.elements());
                    layer.forward(shape, Segments.of(arena, TestData.gaussian((int) shape.elements(), batch, 1)), y);
                    float[] got = Segments.toArray(y);
                    if (round == 0) {
                        first.put(batch, got);
                    } else {
                        Expect.bitwiseEqual("y", first.get(batch), got, "batch " + batch + " again");
                    }
                    assertTrue(layer.cachedShapes() <= BatchNormLayer.CACHED_SHAPES);
                }
            }
            assertEquals(BatchNormLayer.CACHED_SHAPES, layer.cachedShapes());
        }
    }

    @Test
    void stateRoundTripsAndSelfLoadIsHarmless() {
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build()) {
            Map<String, MemorySegment> state = randomState(arena, C, 90, 123_456_789_012L, true, true);
            layer.loadStateDict(state);
            Map<String, MemorySegment> got = layer.stateDict();
            for (String key : List.of("weight", "bias", "running_mean", "running_var")) {
                Expect.bitwiseEqual(key, floats(state, key), floats(got, key), "round trip");
            }
            assertEquals(123_456_789_012L, layer.numBatchesTracked());
            layer.loadStateDict(got);
            Expect.bitwiseEqual("weight", floats(state, "weight"), floats(layer.stateDict(), "weight"), "self load");
            // Heap segments load too.
            Map<String, MemorySegment> heap = new HashMap<>(state);
            heap.put("weight", MemorySegment.ofArray(new float[] {9, 8, 7, 6}));
            layer.loadStateDict(heap);
            assertArrayEquals(new float[] {9, 8, 7, 6}, floats(layer.stateDict(), "weight"));
            // The weight is the optimizer's to update in place.
            layer.weight().setAtIndex(F32, 0, 2.5f);
            assertEquals(2.5f, floats(layer.stateDict(), "weight")[0]);
        }
    }

    /** Each bad state is rejected with the key, what was expected and what was given; nothing changes. */
    @Test
    void loadStateDictValidatesEverythingFirst() {
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(C).build();
             BatchNormLayer plain = BatchNormLayer.builder(C).affine(false).build()) {
            Map<String, MemorySegment> good = randomState(arena, C, 100, 5, true, true);
            layer.loadStateDict(good);
            // Every case below changes the weight too, so a partial load would show.
            MemorySegment otherWeight = Segments.of(arena, new float[] {-1, -2, -3, -4});

            Map<String, MemorySegment> missing = new HashMap<>(good);
            missing.put("weight", otherWeight);
            missing.remove("running_var");
            rejects(layer, missing, IllegalArgumentException.class, "running_var: missing from the state"
                    + " (expected keys [weight, bias, running_mean, running_var, num_batches_tracked], got"
                    + " [bias, num_batches_tracked, running_mean, weight])");

            Map<String, MemorySegment> unexpected = new HashMap<>(good);
            unexpected.put("weight", otherWeight);
            unexpected.put("running_varr", good.get("running_var"));
            rejects(layer, unexpected, IllegalArgumentException.class, "running_varr: unexpected key in the state");

            Map<String, MemorySegment> size = new HashMap<>(good);
            size.put("weight", otherWeight);
            size.put("running_mean", Segments.of(arena, new float[] {1, 2}));
            rejects(layer, size, IllegalArgumentException.class,
                    "running_mean: expected 16 bytes (4 floats, one per channel), got 8 bytes");

            Map<String, MemorySegment> doubles = new HashMap<>(good);
            doubles.put("weight", otherWeight);
            doubles.put("bias", MemorySegment.ofArray(new double[] {1, 2, 3, 4}));
            rejects(layer, doubles, IllegalArgumentException.class,
                    "bias: expected 16 bytes (4 floats, one per channel), got 32 bytes");

            Map<String, MemorySegment> int32 = new HashMap<>(good);
            int32.put("weight", otherWeight);
            int32.put("num_batches_tracked", MemorySegment.ofArray(new int[] {5}));
            rejects(layer, int32, IllegalArgumentException.class,
                    "num_batches_tracked: expected 8 bytes (one int64), got 4 bytes");

            Map<String, MemorySegment> negative = new HashMap<>(good);
            negative.put("weight", otherWeight);
            negative.put("num_batches_tracked", MemorySegment.ofArray(new long[] {-1}));
            rejects(layer, negative, IllegalArgumentException.class,
                    "num_batches_tracked: expected a count >= 0, got -1");

            Map<String, MemorySegment> nullValue = new HashMap<>(good);
            nullValue.put("weight", otherWeight);
            nullValue.put("running_mean", null);
            rejects(layer, nullValue, NullPointerException.class,
                    "running_mean: expected a segment of 16 bytes (4 floats, one per channel), got null");

            Arena closed = Arena.ofConfined();
            Map<String, MemorySegment> dead = new HashMap<>(good);
            dead.put("weight", otherWeight);
            dead.put("running_var", Segments.of(closed, new float[4]));
            closed.close();
            rejects(layer, dead, IllegalArgumentException.class, "running_var: expected a live segment");

            rejects(layer, null, NullPointerException.class, "state: expected a map");

            Map<String, MemorySegment> affineKeys = new HashMap<>(good);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> plain.loadStateDict(affineKeys));
            assertTrue(e.getMessage().startsWith("bias: unexpected key in the state (expected keys"
                    + " [running_mean, running_var, num_batches_tracked]; the layer was built with affine(false))"),
                    e.getMessage());
        }
    }

    private static void rejects(BatchNormLayer layer, Map<String, MemorySegment> state,
                                Class<? extends RuntimeException> type, String start) {
        Map<String, float[]> before = new HashMap<>();
        layer.stateDict().forEach((k, v) -> before.put(k, Segments.toArray(v)));
        long count = layer.numBatchesTracked();
        RuntimeException e = assertThrows(type, () -> layer.loadStateDict(state));
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
        layer.stateDict().forEach((k, v) -> Expect.bitwiseEqual(k, before.get(k), Segments.toArray(v),
                "after a rejected load (" + start + ")"));
        assertEquals(count, layer.numBatchesTracked());
    }

    /**
     * One layer in evaluation mode, 8 threads at once, each with its own data and batch size (16
     * shapes in all, so the cache evicts while the threads run): every result equals the
     * single-threaded one bit for bit.
     */
    @Test
    void sharedEvaluationLayerFromEightThreads() throws Exception {
        int threads = 8, channels = 16;
        try (Arena arena = Arena.ofShared(); BatchNormLayer layer = BatchNormLayer.builder(channels).build()) {
            layer.loadStateDict(randomState(arena, channels, 110, 0, true, true));
            layer.eval();
            TensorShape[][] shapes = new TensorShape[threads][2];
            MemorySegment[][] inputs = new MemorySegment[threads][2];
            float[][][] expected = new float[threads][2][];
            for (int t = 0; t < threads; t++) {
                for (int j = 0; j < 2; j++) {
                    int batch = 1 + t + threads * j;
                    TensorShape shape = j == 0 ? TensorShape.nchw(batch, channels, 4, 4)
                            : TensorShape.nhwc(batch, channels, 3, 3);
                    shapes[t][j] = shape;
                    inputs[t][j] = Segments.of(arena, TestData.gaussian((int) shape.elements(), 200 + t * 2 + j, 2));
                    MemorySegment y = Segments.zeros(arena, shape.elements());
                    layer.forward(shape, inputs[t][j], y);
                    expected[t][j] = Segments.toArray(y);
                }
            }
            CyclicBarrier start = new CyclicBarrier(threads);
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            try {
                List<Future<?>> results = new ArrayList<>();
                for (int t = 0; t < threads; t++) {
                    int thread = t;
                    results.add(pool.submit(() -> {
                        start.await();
                        for (int iteration = 0; iteration < 50; iteration++) {
                            int j = iteration % 2;
                            MemorySegment y = Segments.zeros(arena, shapes[thread][j].elements());
                            layer.forward(shapes[thread][j], inputs[thread][j], y);
                            Expect.bitwiseEqual("y", expected[thread][j], Segments.toArray(y),
                                    "thread " + thread + ", iteration " + iteration);
                        }
                        return null;
                    }));
                }
                for (Future<?> f : results) {
                    f.get();
                }
            } finally {
                pool.shutdownNow();
            }
        }
    }

    /** With a parallelism of 2 the layer gives the bits of parallelism 1 (its arena is shared). */
    @Test
    void parallelLayerGivesTheSameBits() {
        TensorShape shape = TensorShape.nchw(4, 8, 64, 64);
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try (Arena arena = Arena.ofShared(); BatchNormLayer serial = BatchNormLayer.builder(8).build();
             BatchNormLayer parallel = BatchNormLayer.builder(8).parallelism(2).executor(pool).build()) {
            MemorySegment x = Segments.of(arena, TestData.gaussian((int) shape.elements(), 120, 3));
            MemorySegment y1 = Segments.zeros(arena, shape.elements()), y2 = Segments.zeros(arena, shape.elements());
            serial.forward(shape, x, y1);
            parallel.forward(shape, x, y2);
            Expect.bitwiseEqual("y", Segments.toArray(y1), Segments.toArray(y2), "parallelism 2");
            Expect.bitwiseEqual("running_var", floats(serial.stateDict(), "running_var"),
                    floats(parallel.stateDict(), "running_var"), "parallelism 2");
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void closedLayerRejectsCallsAndBuilderRejectsBadOptions() {
        BatchNormLayer layer = BatchNormLayer.builder(C).build();
        Map<String, MemorySegment> views = layer.stateDict();
        layer.close();
        layer.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, layer::stateDict);
        assertEquals("BatchNormLayer: expected an open layer, got a closed one", e.getMessage());
        assertThrows(IllegalStateException.class, () -> layer.forward(TensorShape.nc(2, C),
                MemorySegment.ofArray(new float[8]), MemorySegment.ofArray(new float[8])));
        assertFalse(views.get("weight").scope().isAlive());

        assertEquals("channels: expected >= 1, got 0",
                assertThrows(IllegalArgumentException.class, () -> BatchNormLayer.builder(0)).getMessage());
        assertThrows(IllegalArgumentException.class, () -> BatchNormLayer.builder(C).epsilon(0f));
        assertThrows(IllegalArgumentException.class, () -> BatchNormLayer.builder(C).momentum(1.5f));
        assertThrows(IllegalArgumentException.class, () -> BatchNormLayer.builder(C).parallelism(0));
        assertThrows(NullPointerException.class, () -> BatchNormLayer.builder(C).executor(null));
        assertThrows(NullPointerException.class, () -> BatchNormLayer.builder(C).runningStatistics(null));
        IllegalArgumentException both = assertThrows(IllegalArgumentException.class, () -> BatchNormLayer.builder(C)
                .momentum(0.2f).runningStatistics(RunningStatistics.CUMULATIVE_AVERAGE).build());
        assertTrue(both.getMessage().startsWith("momentum: expected none with CUMULATIVE_AVERAGE"), both.getMessage());
        try (BatchNormLayer keras = BatchNormLayer.builder(C).runningStatistics(RunningStatistics.KERAS).build()) {
            assertEquals(0.99f, keras.momentum());
        }
    }
}
