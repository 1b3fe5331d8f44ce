package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

/**
 * Small examples worked on paper. N = 2, C = 2, H = 1, W = 2; eps = 4 so that var + eps = 9.
 * <pre>
 *   channel 0: x = 1, 3 | 5, 7      mean 4,  deviations -3 -1 1 3, var (9+1+1+9)/4 = 5
 *   channel 1: x = 7, 11 | 9, 13    mean 10, deviations -3 1 -1 3,  var 5
 *   invstd = 1/sqrt(5 + 4) = 1/3;   gamma = (2, -1), beta = (1, 0.5)
 *   y0 = 2 (x - 4) / 3 + 1   = -1, 1/3, 5/3, 3
 *   y1 = -(x - 10) / 3 + 0.5 = 1.5, 1/6, 5/6, -0.5
 * </pre>
 * Expected values are compared to within the bound of {@link Bounds#trainingOutput}; 1/3 and
 * friends are not floats.
 */
class BatchNormExamplesTest {

    static final float EPS = 4f;
    // NCHW order: (n0 c0: 1 3) (n0 c1: 7 11) (n1 c0: 5 7) (n1 c1: 9 13)
    static final float[] X_NCHW = {1, 3, 7, 11, 5, 7, 9, 13};
    // NHWC order: (n0 s0: 1 7) (n0 s1: 3 11) (n1 s0: 5 9) (n1 s1: 7 13)
    static final float[] X_NHWC = {1, 7, 3, 11, 5, 9, 7, 13};
    static final float[] GAMMA = {2, -1};
    static final float[] BETA = {1, 0.5f};
    static final double[] Y_NCHW = {-1, 1.0 / 3, 1.5, 1.0 / 6, 5.0 / 3, 3, 5.0 / 6, -0.5};
    static final double[] Y_NHWC = {-1, 1.5, 1.0 / 3, 1.0 / 6, 5.0 / 3, 5.0 / 6, 3, -0.5};

    private static void assertOutput(double[] expected, float[] got, double[] deviations) {
        for (int i = 0; i < expected.length; i++) {
            // The means (4 and 10) are sums of small integers over 4: exact, so no mean error.
            double bound = Bounds.trainingOutput(2.0 / 3, deviations[i], 10, 1, 1e-15, 0);
            assertEquals(expected[i], got[i], bound, "y[" + i + "]");
        }
    }

    @Test
    void trainingNchwByHand() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 2, 1, 2)).epsilon(EPS).build();
        Runs.Training got = Runs.training(bn, X_NCHW, GAMMA, BETA);
        assertArrayEquals(new float[] {4, 10}, got.mean());
        assertArrayEquals(new float[] {5, 5}, got.variance());
        assertOutput(Y_NCHW, got.y(), new double[] {-3, -1, -3, 1, 1, 3, -1, 3});
    }

    @Test
    void trainingNhwcGivesTheSameNumbersTransposed() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nhwc(2, 2, 1, 2)).epsilon(EPS).build();
        Runs.Training got = Runs.training(bn, X_NHWC, GAMMA, BETA);
        assertArrayEquals(new float[] {4, 10}, got.mean());
        assertArrayEquals(new float[] {5, 5}, got.variance());
        assertOutput(Y_NHWC, got.y(), new double[] {-3, -3, -1, 1, 1, -1, 3, 3});
    }

    @Test
    void inferenceWithGivenStatisticsByHand() {
        // Same statistics given as running ones: the same outputs.
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 2, 1, 2)).epsilon(EPS).build();
        float[] y = Runs.inference(bn, X_NCHW, GAMMA, BETA, new float[] {4, 10}, new float[] {5, 5});
        assertOutput(Y_NCHW, y, new double[] {-3, -1, -3, 1, 1, 3, -1, 3});
    }

    /**
     * Channel 0 of the example, dy = (1, 0, 0, 0) (n0 s0 only), gamma 2, invstd 1/3, M = 4:
     * xhat = -1, -1/3, 1/3, 1; dbeta = 1; dgamma = sum dy xhat = -1;
     * dx = (2/3)(dy - 1/4 + xhat / 4) = 1/3, -2/9, -1/9, 0.
     * Channel 1: dy = 0 everywhere, so every gradient is 0.
     */
    @Test
    void backwardByHand() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 2, 1, 2)).epsilon(EPS).build();
        float[] dy = {1, 0, 0, 0, 0, 0, 0, 0};
        Runs.Backward got = Runs.backward(bn, false, X_NCHW, dy, GAMMA, new float[] {4, 10},
                new float[] {5, 5});
        assertEquals(1f, got.dbeta()[0]);
        assertEquals(-1, got.dgamma()[0], 2 * Bounds.U);
        double[] expected = {1.0 / 3, -2.0 / 9, 0, 0, -1.0 / 9, 0, 0, 0};
        for (int i = 0; i < expected.length; i++) {
            // |dx| <= 2/3 * 1.5; a handful of float roundings of values below 1: 8u.
            assertEquals(expected[i], got.dx()[i], 8 * Bounds.U, "dx[" + i + "]");
        }
        assertEquals(0f, got.dbeta()[1]);
        assertEquals(0f, got.dgamma()[1]);
    }

    /** Frozen statistics: dx = gamma * invstd * dy = (2/3) dy for channel 0. */
    @Test
    void frozenBackwardByHand() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 2, 1, 2)).epsilon(EPS).build();
        float[] dy = {3, -6, 0, 0, 1.5f, 0, 0, 3};
        Runs.Backward got = Runs.backward(bn, true, X_NCHW, dy, GAMMA, new float[] {4, 10},
                new float[] {5, 5});
        assertArrayEquals(new float[] {2, -4, 0, 0, 1, 0, 0, -1}, got.dx(), 0f);
        assertArrayEquals(new float[] {-1.5f, 3}, got.dbeta(), 0f);
    }

    /**
     * M = 4: unbiased variance 5 * 4 / 3 = 20/3; momentum 0.1:
     * running mean 0.9 * 0 + 0.1 * 4 = 0.4, running variance 0.9 * 1 + 0.1 * 20/3 = 1.5666...
     */
    @Test
    void runningStatisticsUseTheUnbiasedVariance() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 2, 1, 2)).momentum(0.1f).build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mean = Segments.of(arena, new float[] {4, 10});
            MemorySegment var = Segments.of(arena, new float[] {5, 5});
            MemorySegment rm = Segments.of(arena, new float[] {0, 10});
            MemorySegment rv = Segments.of(arena, new float[] {1, 1});
            bn.updateRunningStatistics(mean, var, rm, rv);
            assertArrayEquals(new float[] {(float) (0.1 * 4), 10}, Segments.toArray(rm));
            // momentum is the float 0.1f, not 0.1: computed in double from it, rounded once.
            double m = 0.1f;
            float expected = (float) ((1 - m) * 1 + m * (5.0 * 4 / 3));
            assertEquals(expected, Segments.toArray(rv)[0]);
            assertEquals(1.5666667f, Segments.toArray(rv)[0], 1e-6f);
        }
    }

    /**
     * In place (y == x) gives the bits of a separate y, for training and inference, on plane
     * sizes that hit every loop shape of the vector transforms at 128, 256 and 512 bits: shorter
     * than a vector, ragged (not a multiple of 4, 8 or 16 floats) below and above 4 vectors,
     * and whole vectors.
     */
    @Test
    void inPlaceForwardEqualsOutOfPlace() {
        for (int[] hw : new int[][] {{1, 3}, {3, 3}, {7, 7}, {9, 9}, {14, 14}, {16, 16}, {28, 28}, {9, 31}}) {
            TensorShape shape = TensorShape.nchw(3, 5, hw[0], hw[1]);
            float[] x = TestData.gaussian((int) shape.elements(), 7, 2);
            float[] gamma = TestData.gaussian(5, 8, 1), beta = TestData.gaussian(5, 9, 1);
            BatchNorm bn = BatchNorm.builder(shape).build();
            Runs.Training out = Runs.training(bn, x, gamma, beta);
            float[] yInference = Runs.inference(bn, x, gamma, beta, out.mean(), out.variance());
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment g = Segments.of(arena, gamma), b = Segments.of(arena, beta);
                MemorySegment xy = Segments.of(arena, x);
                MemorySegment mean = Segments.zeros(arena, 5), var = Segments.zeros(arena, 5);
                bn.forwardTraining(xy, g, b, xy, mean, var);
                Expect.bitwiseEqual("in-place training y", out.y(), Segments.toArray(xy), shape.toString());
                MemorySegment xi = Segments.of(arena, x);
                bn.forwardInference(xi, g, b, Segments.of(arena, out.mean()),
                        Segments.of(arena, out.variance()), xi);
                Expect.bitwiseEqual("in-place inference y", yInference, Segments.toArray(xi),
                        shape.toString());
            }
        }
    }

    @Test
    void heapAndUnalignedSegmentsGiveTheSameBits() {
        for (Layout layout : Layout.values()) {
            TensorShape shape = new TensorShape(2, 19, 23, layout);
            int e = (int) shape.elements();
            float[] x = TestData.gaussian(e, 11, 1.5);
            BatchNorm bn = BatchNorm.builder(shape).build();
            Runs.Training aligned = Runs.training(bn, x, null, null);
            // Heap segments over float[].
            float[] y = new float[e], mean = new float[19], var = new float[19];
            bn.forwardTraining(MemorySegment.ofArray(x.clone()), null, null, MemorySegment.ofArray(y),
                    MemorySegment.ofArray(mean), MemorySegment.ofArray(var));
            Expect.bitwiseEqual("heap y " + layout, aligned.y(), y, "");
            Expect.bitwiseEqual("heap mean " + layout, aligned.mean(), mean, "");
            // Off-heap segments at an odd byte offset (not even 4-byte aligned).
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment xs = arena.allocate(4L * e + 1).asSlice(1);
                MemorySegment.copy(x, 0, xs, ValueLayout.JAVA_FLOAT_UNALIGNED, 0, e);
                MemorySegment ys = arena.allocate(4L * e + 3).asSlice(3);
                MemorySegment ms = arena.allocate(4L * 19 + 2).asSlice(2);
                MemorySegment vs = arena.allocate(4L * 19 + 1).asSlice(1);
                bn.forwardTraining(xs, null, null, ys, ms, vs);
                Expect.bitwiseEqual("unaligned y " + layout, aligned.y(), Segments.toArray(ys), "");
                Expect.bitwiseEqual("unaligned var " + layout, aligned.variance(), Segments.toArray(vs), "");
            }
        }
    }

    @Test
    void nanPoisonsOnlyItsChannel() {
        for (Layout layout : Layout.values()) {
            TensorShape shape = new TensorShape(2, 20, 33, layout);
            float[] x = TestData.gaussian((int) shape.elements(), 3, 1);
            BatchNorm bn = BatchNorm.builder(shape).build();
            Runs.Training clean = Runs.training(bn, x, null, null);
            x[Reference.index(shape, 1, 17, 5)] = Float.NaN;
            x[Reference.index(shape, 0, 3, 30)] = Float.POSITIVE_INFINITY;
            Runs.Training dirty = Runs.training(bn, x, null, null);
            for (int c = 0; c < 20; c++) {
                boolean poisoned = c == 17 || c == 3;
                assertEquals(poisoned, Float.isNaN(dirty.mean()[c]) || Float.isNaN(dirty.variance()[c]),
                        layout + " channel " + c + " statistics");
                for (int n = 0; n < 2; n++) {
                    for (int s = 0; s < 33; s++) {
                        int i = Reference.index(shape, n, c, s);
                        if (poisoned) {
                            assertTrue(Float.isNaN(dirty.y()[i]), layout + " y at channel " + c);
                        } else {
                            assertEquals(clean.y()[i], dirty.y()[i], 0f, layout + " channel " + c);
                        }
                    }
                }
            }
        }
    }

    @Test
    void twoDimensionalInputUsesBothLayoutsAlike() {
        // [N, C] with spatial = 1: NCHW and NHWC are the same matrix and give the same bits.
        float[] x = TestData.gaussian(64 * 37, 5, 1);
        Runs.Training a = Runs.training(BatchNorm.builder(TensorShape.nc(64, 37)).build(), x, null, null);
        Runs.Training b = Runs.training(BatchNorm.builder(new TensorShape(64, 37, 1, Layout.NHWC)).build(),
                x, null, null);
        Expect.bitwiseEqual("y", a.y(), b.y(), "nc");
        Expect.trainingMatchesReference(TensorShape.nc(64, 37), x, null, null, 1e-5f, a, "nc");
    }

    @Test
    void shapeArithmetic() {
        TensorShape s = TensorShape.nchw(32, 64, 56, 56);
        assertEquals(32L * 64 * 56 * 56, s.elements());
        assertEquals(32L * 56 * 56, s.perChannel());
        assertEquals(Layout.NHWC, TensorShape.nhwc(1, 2, 3, 4).layout());
        assertEquals(12, TensorShape.nhwc(1, 2, 3, 4).spatial());
        assertEquals(1, TensorShape.nc(5, 6).spatial());
    }
}
