package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.SplittableRandom;
import net.jqwik.api.Example;

/**
 * Channels the engine computes in double (see BatchNormEngine.FAR_MEAN): a mean of 2^103 (about
 * 1e31) or more in magnitude, where x - mean can exceed float's range, or a subnormal scale.
 * Channel 0 is ordinary data; channel 1 holds +3e38 once and -3e38 elsewhere (mean about -3e38,
 * so x - mean for the +3e38 is about 6e38, beyond Float.MAX_VALUE = 3.4e38, while y there is a
 * few units); channel 2 is 1e35 (1 + 1e-3 g), a far mean without overflow; channel 3 the
 * constant 1e36; channel 4 pairs of +-v with v up to 3e38: mean 0, but the scale
 * gamma / sqrt(var + eps) is 3.5e-39, subnormal in float. Every output must be finite and within
 * the bounds the ordinary channels get, the double path's within an ulp, and channel 0 must not
 * change by a bit. Both layouts, [N, C] with spatial 1, out of place and in place, one and two
 * threads. (StrategyEquivalenceTest checks far channels under the NCHW channel blocks and more
 * threads.)
 */
class FarChannelsTest {

    private static final float EPS = 1e-3f;
    private static final TensorShape[] SHAPES = {
        new TensorShape(3, 5, 5, Layout.NCHW), new TensorShape(3, 5, 5, Layout.NHWC),
        new TensorShape(6, 5, 1, Layout.NCHW), new TensorShape(2, 5, 300, Layout.NCHW),
        new TensorShape(2, 5, 300, Layout.NHWC),
        // 67 200 values: above the engine's threshold for splitting a call across threads.
        new TensorShape(4, 5, 4200, Layout.NCHW), new TensorShape(4, 5, 4200, Layout.NHWC)};

    /** The channels described above (with {@code far} false, every channel as channel 0). */
    static float[] data(TensorShape shape, boolean far) {
        float[] x = new float[Math.toIntExact(shape.elements())];
        SplittableRandom r = new SplittableRandom(11);
        long m = shape.perChannel();
        for (int c = 0; c < 5; c++) {
            float previous = 0;
            for (long j = 0; j < m; j++) {                   // j = n * spatial + s
                double g = r.nextDouble(-1, 1);
                float v = switch (far ? c : 0) {
                    case 0 -> (float) (1 + 2 * g);
                    case 1 -> j == 0 ? 3e38f : -3e38f;
                    case 2 -> (float) (1e35 * (1 + 1e-3 * g));
                    case 3 -> 1e36f;
                    // Pairs +-v (a lone last value is 0): the mean is exactly 0.
                    default -> j % 2 == 1 ? -previous
                            : j + 1 == m ? 0 : 3e38f * (float) (1 - 0.1 * Math.abs(g));
                };
                previous = v;
                x[Reference.index(shape, (int) (j / shape.spatial()), c, j % shape.spatial())] = v;
            }
        }
        return x;
    }

    @Example
    void trainingForwardIsFiniteAndWithinTheBounds() {
        for (TensorShape shape : SHAPES) {
            float[] x = data(shape, true);
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f, 1f}, beta = {0.5f, 1f, -1f, 3f, 0.5f};
            Reference.Moments ref = Reference.moments(shape, x);
            double[] expected = Reference.transform(shape, x, Reference.widen(gamma), Reference.widen(beta),
                    ref.mean(), ref.variance(), EPS);
            double[] bounds = Expect.trainingOutputBounds(shape, x, gamma, beta, EPS);
            float[] plain = Runs.training(BatchNorm.builder(shape).epsilon(EPS).build(),
                    data(shape, false), gamma, beta).y();
            for (int threads : new int[] {1, 2}) {
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                Runs.Training got = Runs.training(bn, x, gamma, beta);
                String at = shape + " threads " + threads;
                for (int c = 0; c < 5; c++) {
                    Expect.within("mean", got.mean()[c], ref.mean()[c],
                            Expect.meanBound(shape, x, c, ref.mean()[c]), at + ", channel " + c);
                }
                // Channels 1, 2 and 4 have variances of about 1e76, 1e63 and 8e76: beyond float.
                for (int c : new int[] {1, 2, 4}) {
                    assertTrue(ref.variance()[c] > Float.MAX_VALUE, "variance " + ref.variance()[c]);
                }
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[1], at);
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[2], at);
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[4], at);
                assertEquals(0f, got.variance()[3], at);
                for (int n = 0; n < shape.batch(); n++) {
                    for (long s = 0; s < shape.spatial(); s++) {
                        int c0 = Reference.index(shape, n, 0, s);
                        assertEquals(Float.floatToRawIntBits(plain[c0]), Float.floatToRawIntBits(got.y()[c0]),
                                "ordinary channel changed, " + at);
                        assertEquals(beta[3], got.y()[Reference.index(shape, n, 3, s)], 0f,
                                "constant far channel gives beta, " + at);
                    }
                }
                for (int i = 0; i < x.length; i++) {
                    assertTrue(Float.isFinite(got.y()[i]), "y[" + i + "] " + got.y()[i] + " " + at);
                    Expect.within("y", got.y()[i], expected[i], bounds[i], at + ", element " + i);
                }
                // Channels 1, 2 and 4 take the double path: y is one rounding of a double result
                // whose own error (the statistics', at most 1e-9 of y here) is far below an ulp,
                // so y is within half an ulp of its binade, at most one ulp of float(expected).
                // (The float path errs by up to 5 ulps on channel 4, whose scale is subnormal.)
                for (int c : new int[] {1, 2, 4}) {
                    for (int n = 0; n < shape.batch(); n++) {
                        for (long s = 0; s < shape.spatial(); s++) {
                            int i = Reference.index(shape, n, c, s);
                            Expect.within("y", got.y()[i], expected[i], Math.ulp((float) expected[i]),
                                    at + ", channel " + c);
                        }
                    }
                }
                try (Arena arena = Arena.ofShared()) {
                    MemorySegment xy = Segments.of(arena, x);
                    bn.forwardTraining(xy, Segments.of(arena, gamma), Segments.of(arena, beta), xy,
                            Segments.zeros(arena, 5), Segments.zeros(arena, 5));
                    Expect.bitwiseEqual("in-place y", got.y(), Segments.toArray(xy), at);
                }
            }
        }
    }

    @Example
    void inferenceIsFiniteAndWithinTheBounds() {
        for (TensorShape shape : SHAPES) {
            float[] x = data(shape, true);
            Reference.Moments ref = Reference.moments(shape, x);
            float[] mean = new float[5], variance = new float[5];
            for (int c = 0; c < 5; c++) {
                mean[c] = (float) ref.mean()[c];
                variance[c] = (float) Math.min(ref.variance()[c], Float.MAX_VALUE);
            }
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f, 1f}, beta = {0.5f, 1f, -1f, 3f, 0.5f};
            double[] expected = Reference.transform(shape, x, Reference.widen(gamma), Reference.widen(beta),
                    Reference.widen(mean), Reference.widen(variance), EPS);
            for (int threads : new int[] {1, 2}) {
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                float[] y = Runs.inference(bn, x, gamma, beta, mean, variance);
                for (int c = 0; c < 5; c++) {
                    double a = gamma[c] / Math.sqrt((double) variance[c] + EPS);
                    for (int n = 0; n < shape.batch(); n++) {
                        for (long s = 0; s < shape.spatial(); s++) {
                            int i = Reference.index(shape, n, c, s);
                            assertTrue(Float.isFinite(y[i]), "y " + y[i] + " " + shape);
                            Expect.within("y", y[i], expected[i],
                                    Bounds.inferenceOutput(a, (double) x[i] - mean[c], beta[c]),
                                    shape + " threads " + threads + ", channel " + c);
                        }
                    }
                }
            }
        }
    }

    /**
     * With the training statistics, channels 1 and 2 have variance +Infinity, so invstd = 0 and
     * dx = 0 exactly there (the float path made NaN of 0 * (x - mean) where x - mean overflowed).
     * With finite statistics given (backward accepts any), every channel is checked against the
     * reference with BackwardProperties' bounds.
     */
    @Example
    void backwardIsFiniteAndWithinTheBounds() {
        for (TensorShape shape : SHAPES) {
            float[] x = data(shape, true);
            float[] dy = BackwardProperties.upstream(x.length, 5);
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f, 1f};
            for (int threads : new int[] {1, 2}) {
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                Runs.Training fwd = Runs.training(bn, x, gamma, null);
                Runs.Backward got = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), fwd.variance());
                for (int n = 0; n < shape.batch(); n++) {
                    for (long s = 0; s < shape.spatial(); s++) {
                        for (int c : new int[] {1, 2, 4}) {
                            assertEquals(0f, got.dx()[Reference.index(shape, n, c, s)], 0f,
                                    "dx of an infinite-variance channel, " + shape);
                        }
                    }
                }
                for (float v : got.dx()) {
                    assertTrue(Float.isFinite(v), "dx " + v + " " + shape);
                }
                float[] variance = {fwd.variance()[0], Float.MAX_VALUE, 1e30f, 1f, Float.MAX_VALUE};
                Runs.Backward given = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), variance);
                BackwardProperties.checkBackward(shape, x, dy, gamma, fwd.mean(), variance, EPS, given,
                        shape + " threads " + threads);
            }
        }
    }

    /**
     * Coefficients that float cannot hold: channel 1 is 1e18 g with gamma 1e-30, so the training
     * scale gamma / std = 1.7e-48 rounds to 0 in float (y = beta where y is about 1e-30), and so
     * does inference's with variance 1e36; frozen, with variance 1e20, a = 1e-40 is subnormal (17
     * bits) while dx = a dy, dy about 1e10, is 1e-30. Channel 2 pairs +-1.5e19: a standard
     * deviation of 1.4e19, where backward's b = -a invstd^2 Sxdy / M is about 2e-39 / sqrt(M),
     * subnormal (13 to 17 bits here), while its term in dx is within a factor sqrt(M) of dx. The
     * engine computes these channels in double: y and frozen dx within an ulp of the exact value
     * (the statistics' double error is below 1e-9 of y here), dx within BackwardProperties' bound
     * for the double path (3u |B (x - mean)| before, several ulps off in float).
     */
    @Example
    void coefficientsBelowFloatsNormalRangeAreComputedInDouble() {
        TensorShape[] shapes = {new TensorShape(3, 3, 5, Layout.NCHW), new TensorShape(3, 3, 5, Layout.NHWC),
            new TensorShape(6, 3, 1, Layout.NCHW), new TensorShape(4, 3, 5600, Layout.NCHW),
            new TensorShape(4, 3, 5600, Layout.NHWC)};
        float[] gamma = {1.5f, 1e-30f, 0.5f}, beta = {0.5f, 0f, 1f};
        for (TensorShape shape : shapes) {
            int count = Math.toIntExact(shape.elements());
            float[] x = new float[count], dy = new float[count];
            SplittableRandom r = new SplittableRandom(17);
            long m = shape.perChannel();
            for (int c = 0; c < 3; c++) {
                float previous = 0;
                for (long j = 0; j < m; j++) {
                    int i = Reference.index(shape, (int) (j / shape.spatial()), c, j % shape.spatial());
                    double g = r.nextDouble(-1, 1);
                    float v = switch (c) {
                        case 0 -> (float) (1 + 2 * g);
                        case 1 -> (float) (1e18 * g);
                        default -> j % 2 == 1 ? -previous
                                : j + 1 == m ? 0 : 1.5e19f * (float) (1 - 0.1 * Math.abs(g));
                    };
                    previous = v;
                    x[i] = v;
                    dy[i] = (float) ((c == 1 ? 1e10 : 1) * r.nextGaussian());
                }
            }
            for (int threads : new int[] {1, 2}) {
                String at = shape + " threads " + threads;
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                Runs.Training fwd = Runs.training(bn, x, gamma, beta);
                Reference.Moments ref = Reference.moments(shape, x);
                double[] y = Reference.transform(shape, x, Reference.widen(gamma), Reference.widen(beta),
                        ref.mean(), ref.variance(), EPS);
                float[] mean = {0, 0, 0}, variance = {1, 1e36f, 1};
                float[] yi = Runs.inference(bn, x, gamma, beta, mean, variance);
                double[] yInference = Reference.transform(shape, x, Reference.widen(gamma),
                        Reference.widen(beta), Reference.widen(mean), Reference.widen(variance), EPS);
                float[] frozenVariance = {1, 1e20f, 1};
                Runs.Backward frozen = Runs.backward(bn, true, x, dy, gamma, mean, frozenVariance);
                for (int n = 0; n < shape.batch(); n++) {
                    for (long s = 0; s < shape.spatial(); s++) {
                        int i = Reference.index(shape, n, 1, s);
                        Expect.within("training y", fwd.y()[i], y[i], Math.ulp((float) y[i]), at);
                        Expect.within("inference y", yi[i], yInference[i], Math.ulp((float) yInference[i]), at);
                        double dx = gamma[1] / Math.sqrt(1e20 + EPS) * dy[i];
                        Expect.within("frozen dx", frozen.dx()[i], dx, Math.ulp((float) dx), at);
                    }
                }
                Runs.Backward got = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), fwd.variance());
                BackwardProperties.checkBackward(shape, x, dy, gamma, fwd.mean(), fwd.variance(), EPS, got,
                        at, new boolean[] {false, true, true});
            }
        }
    }
}
