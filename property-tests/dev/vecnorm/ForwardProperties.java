package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.TestData.Distribution;
import net.jqwik.api.Example;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;

/** Forward kernels (whichever this JVM chose) against the double-precision reference. */
class ForwardProperties {

    /** Channel c draws from kinds[(c + first) % 6]: every tensor mixes all distributions. */
    static Distribution[] kindsFrom(Distribution first) {
        Distribution[] all = Distribution.values();
        Distribution[] kinds = new Distribution[all.length];
        for (int i = 0; i < all.length; i++) {
            kinds[i] = all[(first.ordinal() + i) % all.length];
        }
        return kinds;
    }

    @Property
    void trainingMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll(supplier = Shapes.Epsilon.class) float eps,
                                  @ForAll long seed, @ForAll Distribution first,
                                  @ForAll boolean affine) {
        float[] x = TestData.tensor(shape, seed, kindsFrom(first));
        float[] gamma = affine ? TestData.gaussian(shape.channels(), seed + 1, 1) : null;
        float[] beta = affine ? TestData.gaussian(shape.channels(), seed + 2, 1) : null;
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        Runs.Training got = Runs.training(bn, x, gamma, beta);
        Expect.trainingMatchesReference(shape, x, gamma, beta, eps, got, shape + " eps " + eps);
    }

    /**
     * A case CI's random seeds found: one channel of mixed magnitudes (values up to 1e18, mean
     * 1.87e10, standard deviation 6.6e16). Rounding to double's 128-unit steps near 1e18 leaves
     * the kernels' mean off by units, while x = 1.8657e10 lies 1.4e7 from the mean and y is
     * -2.06e-10: the mean's error, not float rounding, sets y's error there
     * ({@link Bounds#trainingOutput}'s meanErr term). Both layouts, both sum orders.
     */
    @Example
    void meanErrorOfHugeValuesBoundsOutputNearTheMean() {
        for (Layout layout : Layout.values()) {
            TensorShape shape = new TensorShape(6, 1, 196, layout);
            float[] x = TestData.tensor(shape, 1142, Distribution.MIXED_MAGNITUDES);
            Runs.Training got = Runs.training(BatchNorm.builder(shape).epsilon(1e-5f).build(), x, null, null);
            Expect.trainingMatchesReference(shape, x, null, null, 1e-5f, got, shape.toString());
        }
    }

    /** A constant channel (1e7) has variance exactly 0, mean exactly 1e7 and output exactly beta. */
    @Property
    void constantChannelGivesExactlyBeta(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                         @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed) {
        float[] x = TestData.tensor(shape, seed, Distribution.CONSTANT, Distribution.NORMAL);
        float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
        float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
        Runs.Training got = Runs.training(BatchNorm.builder(shape).epsilon(eps).build(), x, gamma, beta);
        for (int c = 0; c < shape.channels(); c += 2) {
            assertTrue(got.mean()[c] == 1e7f && got.variance()[c] == 0f,
                    "channel " + c + ": mean " + got.mean()[c] + " variance " + got.variance()[c]);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    float y = got.y()[Reference.index(shape, n, c, s)];
                    assertTrue(y == beta[c], "y " + y + " != beta " + beta[c] + " at channel " + c);
                }
            }
        }
    }

    @Property
    void inferenceMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll(supplier = Shapes.Epsilon.class) float eps,
                                   @ForAll long seed, @ForAll Distribution first,
                                   @ForAll boolean affine) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, kindsFrom(first));
        float[] gamma = affine ? TestData.gaussian(channels, seed + 1, 1) : null;
        float[] beta = affine ? TestData.gaussian(channels, seed + 2, 1) : null;
        // Running statistics: near the batch's, as in a trained network, but not equal to them.
        Reference.Moments batch = Reference.moments(shape, x);
        float[] mean = new float[channels], variance = new float[channels];
        float[] noise = TestData.gaussian(2 * channels, seed + 3, 0.1);
        for (int c = 0; c < channels; c++) {
            double std = Math.sqrt(batch.variance()[c]);
            mean[c] = (float) (batch.mean()[c] + noise[c] * std);
            variance[c] = (float) (batch.variance()[c] * (1 + Math.abs(noise[channels + c])));
        }
        float[] y = Runs.inference(BatchNorm.builder(shape).epsilon(eps).build(), x, gamma, beta,
                mean, variance);
        double[] g = gamma == null ? Reference.filled(channels, 1) : Reference.widen(gamma);
        double[] b = beta == null ? Reference.filled(channels, 0) : Reference.widen(beta);
        double[] expected = Reference.transform(shape, x, g, b, Reference.widen(mean),
                Reference.widen(variance), eps);
        for (int c = 0; c < channels; c++) {
            double a = g[c] / Math.sqrt((double) variance[c] + eps);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    Expect.within("y", y[i], expected[i],
                            Bounds.inferenceOutput(a, (double) x[i] - mean[c], b[c]),
                            shape + ", channel " + c + ", n " + n + ", s " + s);
                }
            }
        }
    }

    /**
     * The same data in NCHW and NHWC gives the same statistics and outputs, up to the sum of the
     * two layouts' error bounds (their reductions add in different orders, so bits may differ).
     * Each layout is checked against the reference, which bounds the difference by the sum.
     */
    @Property
    void layoutsAgree(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll(supplier = Shapes.Epsilon.class) float eps,
                      @ForAll long seed, @ForAll Distribution first) {
        TensorShape nchw = shape.withLayout(Layout.NCHW);
        TensorShape nhwc = shape.withLayout(Layout.NHWC);
        float[] x = TestData.tensor(nchw, seed, kindsFrom(first));
        float[] xt = TestData.relayout(nchw, x, Layout.NHWC);
        Runs.Training a = Runs.training(BatchNorm.builder(nchw).epsilon(eps).build(), x, null, null);
        Runs.Training b = Runs.training(BatchNorm.builder(nhwc).epsilon(eps).build(), xt, null, null);
        Expect.trainingMatchesReference(nchw, x, null, null, eps, a, "NCHW " + shape);
        Expect.trainingMatchesReference(nhwc, xt, null, null, eps, b, "NHWC " + shape);
        float[] back = TestData.relayout(nhwc, b.y(), Layout.NCHW);
        double[] boundNchw = Expect.trainingOutputBounds(nchw, x, null, null, eps);
        double[] boundNhwc = TestData.relayoutBounds(nhwc,
                Expect.trainingOutputBounds(nhwc, xt, null, null, eps), Layout.NCHW);
        for (int i = 0; i < x.length; i++) {
            Expect.within("NHWC vs NCHW y", back[i], a.y()[i], boundNchw[i] + boundNhwc[i],
                    shape + ", element " + i);
        }
    }

    /**
     * Adding a constant to a channel leaves its output unchanged. The data are multiples of
     * 2^-10 below 2^4 in magnitude and the constant is 2^12, so every sum is exact in float
     * (2^13 / 2^-10 = 2^23 steps fit the 24-bit significand): the exact outputs are equal, and
     * the kernels' outputs differ by at most the two error bounds.
     */
    @Property
    void shiftingAChannelLeavesItsOutputUnchanged(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                                  @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed) {
        float[] x = TestData.gaussian(Math.toIntExact(shape.elements()), seed, 3);
        float[] shifted = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            x[i] = Math.round(Math.max(-15f, Math.min(15f, x[i])) * 1024f) / 1024f;
            shifted[i] = x[i] + 4096f;
            assertTrue(shifted[i] - 4096f == x[i], "the shift must be exact");
        }
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        Runs.Training a = Runs.training(bn, x, null, null);
        Runs.Training b = Runs.training(bn, shifted, null, null);
        double[] boundA = Expect.trainingOutputBounds(shape, x, null, null, eps);
        double[] boundB = Expect.trainingOutputBounds(shape, shifted, null, null, eps);
        for (int i = 0; i < x.length; i++) {
            Expect.within("y of shifted channel", b.y()[i], a.y()[i], boundA[i] + boundB[i],
                    shape + ", element " + i);
        }
    }

    /**
     * y written over x gives the same bits as a separate y, for training and inference. (The
     * vector kernels store a plane's ragged end as one extra vector overlapping the body,
     * computed before the body's stores; this checks that order for every plane shape.)
     */
    @Property(tries = 30)
    void inPlaceForwardEqualsOutOfPlace(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                        @ForAll long seed) {
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        int channels = shape.channels();
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] beta = TestData.gaussian(channels, seed + 2, 1);
        BatchNorm bn = BatchNorm.builder(shape).build();
        Runs.Training out = Runs.training(bn, x, gamma, beta);
        float[] yInference = Runs.inference(bn, x, gamma, beta, out.mean(), out.variance());
        try (var arena = java.lang.foreign.Arena.ofConfined()) {
            var g = Segments.of(arena, gamma);
            var b = Segments.of(arena, beta);
            var xy = Segments.of(arena, x);
            bn.forwardTraining(xy, g, b, xy, Segments.zeros(arena, channels),
                    Segments.zeros(arena, channels));
            Expect.bitwiseEqual("in-place training y", out.y(), Segments.toArray(xy), shape.toString());
            var xi = Segments.of(arena, x);
            bn.forwardInference(xi, g, b, Segments.of(arena, out.mean()),
                    Segments.of(arena, out.variance()), xi);
            Expect.bitwiseEqual("in-place inference y", yInference, Segments.toArray(xi),
                    shape.toString());
        }
    }
}
