package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.SplittableRandom;
import net.jqwik.api.Example;

/**
 * Channels whose mean is 2^103 (about 1e31) or more in magnitude, where x - mean can exceed
 * float's range: the engine computes their outputs in double (see BatchNormEngine.FAR_MEAN).
 * Channel 0 is ordinary data; channel 1 holds +3e38 once and -3e38 elsewhere (mean about -3e38,
 * so x - mean for the +3e38 is about 6e38, beyond Float.MAX_VALUE = 3.4e38, while y there is a
 * few units); channel 2 is 1e35 (1 + 1e-3 g), a far mean without overflow; channel 3 the
 * constant 1e36. Every output must be finite and within the bounds the ordinary channels get
 * (the double path is more accurate than the float one, so those bounds hold), and channel 0
 * must not change by a bit. Both layouts, [N, C] with spatial 1, out of place and in place,
 * one and two threads. (StrategyEquivalenceTest checks far channels under the NCHW channel
 * blocks and more threads.)
 */
class FarChannelsTest {

    private static final float EPS = 1e-3f;
    private static final TensorShape[] SHAPES = {
        new TensorShape(3, 4, 5, Layout.NCHW), new TensorShape(3, 4, 5, Layout.NHWC),
        new TensorShape(6, 4, 1, Layout.NCHW), new TensorShape(2, 4, 300, Layout.NCHW),
        new TensorShape(2, 4, 300, Layout.NHWC),
        // 67 200 values: above the engine's threshold for splitting a call across threads.
        new TensorShape(4, 4, 4200, Layout.NCHW), new TensorShape(4, 4, 4200, Layout.NHWC)};

    static float[] data(TensorShape shape, boolean far) {
        float[] x = new float[Math.toIntExact(shape.elements())];
        SplittableRandom r = new SplittableRandom(11);
        for (int c = 0; c < 4; c++) {
            boolean first = true;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    double g = r.nextDouble(-1, 1);
                    float v;
                    if (c == 0 || !far) {
                        v = (float) (1 + 2 * g);
                    } else if (c == 1) {
                        v = first ? 3e38f : -3e38f;
                    } else if (c == 2) {
                        v = (float) (1e35 * (1 + 1e-3 * g));
                    } else {
                        v = 1e36f;
                    }
                    first = false;
                    x[Reference.index(shape, n, c, s)] = v;
                }
            }
        }
        return x;
    }

    @Example
    void trainingForwardIsFiniteAndWithinTheBounds() {
        for (TensorShape shape : SHAPES) {
            float[] x = data(shape, true);
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f}, beta = {0.5f, 1f, -1f, 3f};
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
                for (int c = 0; c < 4; c++) {
                    assertEquals((float) ref.mean()[c], got.mean()[c], Math.ulp((float) ref.mean()[c]),
                            "mean " + c + " " + at);
                }
                // Channels 1 and 2 have variances of 4e76 and 3e63: beyond float, so +Infinity.
                assertTrue(ref.variance()[1] > Float.MAX_VALUE && ref.variance()[2] > Float.MAX_VALUE);
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[1], at);
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[2], at);
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
                try (Arena arena = Arena.ofShared()) {
                    MemorySegment xy = Segments.of(arena, x);
                    bn.forwardTraining(xy, Segments.of(arena, gamma), Segments.of(arena, beta), xy,
                            Segments.zeros(arena, 4), Segments.zeros(arena, 4));
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
            float[] mean = new float[4], variance = new float[4];
            for (int c = 0; c < 4; c++) {
                mean[c] = (float) ref.mean()[c];
                variance[c] = (float) Math.min(ref.variance()[c], Float.MAX_VALUE);
            }
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f}, beta = {0.5f, 1f, -1f, 3f};
            double[] expected = Reference.transform(shape, x, Reference.widen(gamma), Reference.widen(beta),
                    Reference.widen(mean), Reference.widen(variance), EPS);
            for (int threads : new int[] {1, 2}) {
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                float[] y = Runs.inference(bn, x, gamma, beta, mean, variance);
                for (int c = 0; c < 4; c++) {
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
            float[] gamma = {1.5f, -0.5f, 2f, 0.25f};
            for (int threads : new int[] {1, 2}) {
                BatchNorm bn = BatchNorm.builder(shape).epsilon(EPS).parallelism(threads).build();
                Runs.Training fwd = Runs.training(bn, x, gamma, null);
                Runs.Backward got = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), fwd.variance());
                for (int n = 0; n < shape.batch(); n++) {
                    for (long s = 0; s < shape.spatial(); s++) {
                        for (int c = 1; c <= 2; c++) {
                            assertEquals(0f, got.dx()[Reference.index(shape, n, c, s)], 0f,
                                    "dx of an infinite-variance channel, " + shape);
                        }
                    }
                }
                for (float v : got.dx()) {
                    assertTrue(Float.isFinite(v), "dx " + v + " " + shape);
                }
                float[] variance = {fwd.variance()[0], Float.MAX_VALUE, 1e30f, 1f};
                Runs.Backward given = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), variance);
                BackwardProperties.checkBackward(shape, x, dy, gamma, fwd.mean(), variance, EPS, given,
                        shape + " threads " + threads);
            }
        }
    }
}
