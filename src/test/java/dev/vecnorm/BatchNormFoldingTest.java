package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.BatchNormFolding.WeightLayout;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * A convolution (or linear layer) followed by inference BatchNorm, against the same layer with
 * the BatchNorm folded into its weights and bias.
 *
 * <p>Error bound, per output element of channel o. Exact: y* = a (z* - mean) + beta with
 * z* = b + sum_j w_j x_j over K products and a = gamma / sqrt(var + eps), all from the float
 * inputs. Let S = |b| + sum_j |w_j x_j|. The test's layers add in double and round the output to
 * float once (an engine's float accumulation would add its own, identical-in-kind error to both
 * paths; double keeps the comparison about folding): a double sum of K + 1 terms errs by at most
 * (K + 2) w S, w = 2^-53, and the final rounding by u |result|, u = 2^-24.
 * <ul>
 *   <li>Unfolded: z = fl32(z*) errs by u |z*| + (K + 2) w S; BatchNorm inference of z errs by
 *       {@link Bounds#inferenceOutput} against a (z - mean) + beta; so
 *       |y_A - y*| <= |a| (u |z*| + (K + 2) w S) + inferenceOutput(a, z - mean, beta).</li>
 *   <li>Folded: w'_j = fl32(w_j a~) with a~ the double a (relative error <= 4w), so
 *       |w'_j - w_j a| <= (u + 6w) |w_j a|; b' = fl32((b - mean) a~ + beta) errs by
 *       u |b'| + 6w (|a| |b - mean| + |beta|); the folded layer's double sum by
 *       (K + 2) w (|a| S (1 + u) + |b'|) and its rounding by u |y_B|. Summed over the products:
 *       |y_B - y*| <= (u + 6w) |a| S + u |b'| + 6w (|a| |b - mean| + |beta|)
 *       + (K + 2) w (2 |a| S + |b'|) + u |y_B|.</li>
 * </ul>
 * The dominant terms are u |a| S (each folded weight rounds once) and the two output roundings.
 * The test's own double evaluation of y* errs by (K + 2) w |a| S + 6w (|a (z* - mean)| + |beta|),
 * added to both bounds, and 3 x 2^-150 for subnormal results. Then |y_A - y_B| is at most the sum
 * of the two bounds. A fold that forgot eps (1e-3 here, against variances of 0.3 to 2) or the
 * layer's bias would be off by 1e-4 of |y| or more, hundreds of times the bound.
 */
class BatchNormFoldingTest {

    static final float EPS = 1e-3f;

    /** BatchNorm parameters and running statistics of one layer. */
    record Statistics(float[] gamma, float[] beta, float[] mean, float[] variance) {
        static Statistics random(int channels, long seed) {
            SplittableRandom r = new SplittableRandom(seed);
            float[] g = new float[channels], b = new float[channels], m = new float[channels], v = new float[channels];
            for (int c = 0; c < channels; c++) {
                g[c] = (float) ((r.nextBoolean() ? 1 : -1) * r.nextDouble(0.3, 2));
                b[c] = (float) r.nextDouble(-1, 1);
                m[c] = (float) r.nextDouble(-2, 2);
                v[c] = (float) r.nextDouble(0.3, 2);
            }
            return new Statistics(g, b, m, v);
        }

        double scale(int c, float eps) {
            return gamma[c] / Math.sqrt((double) variance[c] + eps);
        }
    }

    /** Folded weights and bias. */
    record Folded(float[] weights, float[] bias) {
    }

    static Folded fold(WeightLayout layout, float[] w, float[] b, Statistics s, float eps) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment fw = Segments.zeros(arena, w.length);
            MemorySegment fb = Segments.zeros(arena, s.mean().length);
            BatchNormFolding.fold(layout, Segments.of(arena, w), b == null ? null : Segments.of(arena, b),
                    Segments.of(arena, s.gamma()), Segments.of(arena, s.beta()), Segments.of(arena, s.mean()),
                    Segments.of(arena, s.variance()), eps, fw, fb);
            return new Folded(Segments.toArray(fw), Segments.toArray(fb));
        }
    }

    @Test
    void convolutionOihwOnNchw() {
        convolutionCase(TensorShape.nchw(2, 3, 5, 4), 5, 4, WeightLayout.OUTPUT_CHANNELS_FIRST, 6, true, 1);
    }

    @Test
    void convolutionOihwWithoutBias() {
        convolutionCase(TensorShape.nchw(1, 4, 3, 6), 3, 6, WeightLayout.OUTPUT_CHANNELS_FIRST, 5, false, 2);
    }

    @Test
    void convolutionHwioOnNhwc() {
        convolutionCase(TensorShape.nhwc(2, 3, 4, 5), 4, 5, WeightLayout.OUTPUT_CHANNELS_LAST, 7, true, 3);
    }

    @Test
    void convolutionHwioWithoutBias() {
        convolutionCase(TensorShape.nhwc(3, 2, 3, 3), 3, 3, WeightLayout.OUTPUT_CHANNELS_LAST, 4, false, 4);
    }

    @Test
    void linearOutIn() {
        linearCase(WeightLayout.OUTPUT_CHANNELS_FIRST, 5);
    }

    @Test
    void linearInOut() {
        linearCase(WeightLayout.OUTPUT_CHANNELS_LAST, 6);
    }

    private static void convolutionCase(TensorShape in, int h, int w, WeightLayout layout, int out,
                                        boolean withBias, long seed) {
        int k = in.channels() * 9;
        float[] x = TestData.gaussian((int) in.elements(), seed, 1.5);
        float[] weights = TestData.gaussian(out * k, seed + 10, 1 / Math.sqrt(k));
        float[] bias = withBias ? TestData.gaussian(out, seed + 20, 0.5) : null;
        Statistics s = Statistics.random(out, seed + 30);
        Folded f = fold(layout, weights, bias, s, EPS);
        TensorShape outShape = new TensorShape(in.batch(), out, in.spatial(), in.layout());

        double[] exact = Convolution.conv3x3(in, h, w, Reference.widen(x), out, layout,
                Reference.widen(weights), bias == null ? null : Reference.widen(bias));
        double[] sizes = Convolution.conv3x3(in, h, w, Convolution.abs(x), out, layout,
                Convolution.abs(weights), bias == null ? null : Convolution.abs(bias));
        float[] unfolded = Runs.inference(BatchNorm.builder(outShape).epsilon(EPS).build(),
                Convolution.round(exact), s.gamma(), s.beta(), s.mean(), s.variance());
        float[] folded = Convolution.round(Convolution.conv3x3(in, h, w, Reference.widen(x), out,
                layout, Reference.widen(f.weights()), Reference.widen(f.bias())));
        checkWithinBounds(outShape, k, exact, sizes, bias, s, f, unfolded, folded, layout + " " + in);
    }

    private static void linearCase(WeightLayout layout, long seed) {
        int batch = 4, in = 9, out = 6;
        float[] x = TestData.gaussian(batch * in, seed, 2);
        float[] weights = TestData.gaussian(out * in, seed + 10, 1 / 3.0);
        float[] bias = TestData.gaussian(out, seed + 20, 1);
        Statistics s = Statistics.random(out, seed + 30);
        Folded f = fold(layout, weights, bias, s, EPS);
        TensorShape outShape = TensorShape.nc(batch, out);
        double[] exact = Convolution.linear(batch, in, Reference.widen(x), out, layout,
                Reference.widen(weights), Reference.widen(bias));
        double[] sizes = Convolution.linear(batch, in, Convolution.abs(x), out, layout,
                Convolution.abs(weights), Convolution.abs(bias));
        float[] unfolded = Runs.inference(BatchNorm.builder(outShape).epsilon(EPS).build(),
                Convolution.round(exact), s.gamma(), s.beta(), s.mean(), s.variance());
        float[] folded = Convolution.round(Convolution.linear(batch, in, Reference.widen(x), out,
                layout, Reference.widen(f.weights()), Reference.widen(f.bias())));
        checkWithinBounds(outShape, in, exact, sizes, bias, s, f, unfolded, folded, "linear " + layout);
    }

    /** The bounds of the class comment, element by element. */
    private static void checkWithinBounds(TensorShape out, int k, double[] exact, double[] sizes,
                                          float[] bias, Statistics s, Folded f, float[] unfolded,
                                          float[] folded, String context) {
        double u = Bounds.U, w = Bounds.W;
        for (int n = 0; n < out.batch(); n++) {
            for (int o = 0; o < out.channels(); o++) {
                double a = s.scale(o, EPS), absA = Math.abs(a);
                double b = bias == null ? 0 : bias[o];
                double beta = s.beta()[o], mean = s.mean()[o];
                for (long p = 0; p < out.spatial(); p++) {
                    int i = Reference.index(out, n, o, p);
                    double yStar = a * (exact[i] - mean) + beta;
                    double reference = (k + 2) * w * absA * sizes[i]
                            + 6 * w * (Math.abs(a * (exact[i] - mean)) + Math.abs(beta)) + 3 * Bounds.TINY;
                    float z = (float) exact[i];
                    double boundA = absA * (u * Math.abs(exact[i]) + (k + 2) * w * sizes[i])
                            + Bounds.inferenceOutput(a, z - mean, beta) + reference;
                    double boundB = (u + 6 * w) * absA * sizes[i] + u * Math.abs(f.bias()[o])
                            + 6 * w * (absA * Math.abs(b - mean) + Math.abs(beta))
                            + (k + 2) * w * (2 * absA * sizes[i] + Math.abs(f.bias()[o]))
                            + u * Math.abs(folded[i]) + reference;
                    String at = context + ", n " + n + ", channel " + o + ", position " + p;
                    Expect.within("unfolded", unfolded[i], yStar, boundA, at);
                    Expect.within("folded", folded[i], yStar, boundB, at);
                    Expect.within("folded against unfolded", folded[i], unfolded[i], boundA + boundB, at);
                }
            }
        }
    }

    /** HWIO weights fold to the HWIO transpose of the folded OIHW weights, bit for bit. */
    @Test
    void bothLayoutsFoldTheSameWeights() {
        int out = 5, in = 3;
        float[] oihw = TestData.gaussian(out * in * 9, 40, 1);
        float[] hwio = new float[oihw.length];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                for (int kh = 0; kh < 3; kh++) {
                    for (int kw = 0; kw < 3; kw++) {
                        hwio[Convolution.weightIndex(WeightLayout.OUTPUT_CHANNELS_LAST, out, in, o, i, kh, kw)] =
                                oihw[Convolution.weightIndex(WeightLayout.OUTPUT_CHANNELS_FIRST, out, in, o, i, kh, kw)];
                    }
                }
            }
        }
        float[] bias = TestData.gaussian(out, 41, 1);
        Statistics s = Statistics.random(out, 42);
        Folded first = fold(WeightLayout.OUTPUT_CHANNELS_FIRST, oihw, bias, s, EPS);
        Folded last = fold(WeightLayout.OUTPUT_CHANNELS_LAST, hwio, bias, s, EPS);
        Expect.bitwiseEqual("bias", first.bias(), last.bias(), "OIHW vs HWIO");
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                for (int kh = 0; kh < 3; kh++) {
                    for (int kw = 0; kw < 3; kw++) {
                        assertEquals(first.weights()[Convolution.weightIndex(WeightLayout.OUTPUT_CHANNELS_FIRST, out, in, o, i, kh, kw)],
                                last.weights()[Convolution.weightIndex(WeightLayout.OUTPUT_CHANNELS_LAST, out, in, o, i, kh, kw)]);
                    }
                }
            }
            // Each folded value is the double result rounded once.
            double a = s.scale(o, EPS);
            assertEquals((float) ((bias[o] - (double) s.mean()[o]) * a + s.beta()[o]), first.bias()[o]);
            assertEquals((float) (oihw[o * in * 9] * a), first.weights()[o * in * 9]);
        }
    }

    @Test
    void inPlaceGivesTheSameBits() {
        float[] weights = TestData.gaussian(4 * 18, 50, 1);
        float[] bias = TestData.gaussian(4, 51, 1);
        Statistics s = Statistics.random(4, 52);
        Folded expected = fold(WeightLayout.OUTPUT_CHANNELS_FIRST, weights, bias, s, EPS);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment w = Segments.of(arena, weights), b = Segments.of(arena, bias);
            BatchNormFolding.fold(WeightLayout.OUTPUT_CHANNELS_FIRST, w, b, Segments.of(arena, s.gamma()),
                    Segments.of(arena, s.beta()), Segments.of(arena, s.mean()), Segments.of(arena, s.variance()),
                    EPS, w, b);
            Expect.bitwiseEqual("weights", expected.weights(), Segments.toArray(w), "in place");
            Expect.bitwiseEqual("bias", expected.bias(), Segments.toArray(b), "in place");
        }
    }

    /** gamma / beta null mean 1 / 0; the layer's fold is the static fold with its own state. */
    @Test
    void layerFoldUsesItsOwnState() {
        int c = 4;
        float[] weights = TestData.gaussian(c * 27, 60, 1);
        float[] bias = TestData.gaussian(c, 61, 1);
        Statistics s = Statistics.random(c, 62);
        try (Arena arena = Arena.ofConfined();
             BatchNormLayer layer = BatchNormLayer.builder(c).epsilon(EPS).build();
             BatchNormLayer plain = BatchNormLayer.builder(c).epsilon(EPS).affine(false).build();
             BatchNormLayer untracked = BatchNormLayer.builder(c).trackRunningStats(false).build()) {
            MemorySegment count = arena.allocate(8);
            layer.loadStateDict(Map.of("weight", Segments.of(arena, s.gamma()), "bias", Segments.of(arena, s.beta()),
                    "running_mean", Segments.of(arena, s.mean()), "running_var", Segments.of(arena, s.variance()),
                    "num_batches_tracked", count));
            plain.loadStateDict(Map.of("running_mean", Segments.of(arena, s.mean()),
                    "running_var", Segments.of(arena, s.variance()), "num_batches_tracked", count));
            MemorySegment fw = Segments.zeros(arena, weights.length), fb = Segments.zeros(arena, c);
            layer.fold(WeightLayout.OUTPUT_CHANNELS_LAST, Segments.of(arena, weights), Segments.of(arena, bias), fw, fb);
            Folded expected = fold(WeightLayout.OUTPUT_CHANNELS_LAST, weights, bias, s, EPS);
            Expect.bitwiseEqual("weights", expected.weights(), Segments.toArray(fw), "layer fold");
            Expect.bitwiseEqual("bias", expected.bias(), Segments.toArray(fb), "layer fold");

            plain.fold(WeightLayout.OUTPUT_CHANNELS_FIRST, Segments.of(arena, weights), null, fw, fb);
            Statistics unit = new Statistics(filled(c, 1), filled(c, 0), s.mean(), s.variance());
            Folded expectedPlain = fold(WeightLayout.OUTPUT_CHANNELS_FIRST, weights, null, unit, EPS);
            Expect.bitwiseEqual("weights", expectedPlain.weights(), Segments.toArray(fw), "affine=false fold");
            Expect.bitwiseEqual("bias", expectedPlain.bias(), Segments.toArray(fb), "affine=false fold");

            IllegalStateException e = assertThrows(IllegalStateException.class, () -> untracked.fold(
                    WeightLayout.OUTPUT_CHANNELS_FIRST, Segments.of(arena, weights), null, fw, fb));
            assertTrue(e.getMessage().startsWith("fold: the layer was built with trackRunningStats(false)"),
                    e.getMessage());
        }
    }

    @Test
    void badArgumentsAreRejectedBeforeAnythingIsWritten() {
        try (Arena arena = Arena.ofConfined()) {
            Statistics s = Statistics.random(3, 70);
            MemorySegment g = Segments.of(arena, s.gamma()), b = Segments.of(arena, s.beta());
            MemorySegment m = Segments.of(arena, s.mean()), v = Segments.of(arena, s.variance());
            MemorySegment w = Segments.of(arena, TestData.gaussian(12, 71, 1));
            MemorySegment bias = Segments.of(arena, TestData.gaussian(3, 72, 1));
            float[] sentinel = new float[12];
            Arrays.fill(sentinel, -9f);
            MemorySegment fw = Segments.of(arena, sentinel);
            MemorySegment fb = Segments.of(arena, Arrays.copyOf(sentinel, 3));
            WeightLayout first = WeightLayout.OUTPUT_CHANNELS_FIRST;

            expect(IllegalArgumentException.class, "weights: expected a positive multiple of 3 floats"
                    + " (3 output channels x the fan-in), got 40 bytes",
                    () -> BatchNormFolding.fold(first, w.asSlice(0, 40), bias, g, b, m, v, EPS, fw.asSlice(0, 40), fb));
            expect(IllegalArgumentException.class, "mean: expected a positive whole number of floats",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m.asSlice(0, 6), v, EPS, fw, fb));
            expect(IllegalArgumentException.class, "bias: expected 12 bytes (3 floats, 3 output channels), got 8",
                    () -> BatchNormFolding.fold(first, w, bias.asSlice(0, 8), g, b, m, v, EPS, fw, fb));
            expect(IllegalArgumentException.class, "variance: expected 12 bytes",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v.asSlice(4), EPS, fw, fb));
            expect(IllegalArgumentException.class, "foldedWeights: expected 48 bytes",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v, EPS, fw.asSlice(4), fb));
            expect(IllegalArgumentException.class, "foldedBias: expected a writable segment",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v, EPS, fw, fb.asReadOnly()));
            expect(IllegalArgumentException.class, "foldedBias: expected memory disjoint from input weights",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v, EPS, fw, w.asSlice(0, 12)));
            MemorySegment both = Segments.zeros(arena, 15);
            MemorySegment gammaInside = both.asSlice(40, 12);
            expect(IllegalArgumentException.class, "foldedWeights: expected memory disjoint from input"
                    + " gamma, got 8 overlapping bytes",
                    () -> BatchNormFolding.fold(first, w, bias, gammaInside, b, m, v, EPS, both.asSlice(0, 48), fb));
            expect(IllegalArgumentException.class, "epsilon: expected a positive finite number, got 0.0",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v, 0f, fw, fb));
            expect(NullPointerException.class, "weights: expected",
                    () -> BatchNormFolding.fold(first, null, bias, g, b, m, v, EPS, fw, fb));
            expect(NullPointerException.class, "foldedBias: expected",
                    () -> BatchNormFolding.fold(first, w, bias, g, b, m, v, EPS, fw, null));
            expect(NullPointerException.class, "layout: expected",
                    () -> BatchNormFolding.fold(null, w, bias, g, b, m, v, EPS, fw, fb));
            for (float f : Segments.toArray(fw)) {
                assertEquals(-9f, f, "foldedWeights was written before an exception");
            }
            for (float f : Segments.toArray(fb)) {
                assertEquals(-9f, f, "foldedBias was written before an exception");
            }
        }
    }

    private static float[] filled(int n, float value) {
        float[] f = new float[n];
        Arrays.fill(f, value);
        return f;
    }

    private static void expect(Class<? extends RuntimeException> type, String start, Runnable call) {
        RuntimeException e = assertThrows(type, call::run);
        assertTrue(e.getMessage().startsWith(start), e.getMessage());
    }
}
