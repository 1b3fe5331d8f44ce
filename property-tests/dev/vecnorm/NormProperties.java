package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.TestData.Distribution;
import java.util.SplittableRandom;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/**
 * The norm family (whichever kernels this JVM chose) against {@link NormReference}, within the
 * bounds of {@link NormBounds}, and its invariances. Units draw their values from the hostile
 * distributions of {@link TestData} (a mean 1e4 times the standard deviation, constants, values
 * near 1e-20 and 1e18, magnitudes from 1e-20 to 1e18 of both signs); not from its EXTREME one
 * (magnitudes up to 3.2e38), which the norm family's Javadoc leaves out of its rounding model.
 */
class NormProperties {

    /** LayerNorm's and RMSNorm's geometry. */
    record Rows(long rows, int heads, int features, long rowStride) {
        long units() {
            return rows * heads;
        }

        long floats() {
            return (rows - 1) * rowStride + (long) heads * features;
        }
    }

    /** A GroupNorm problem. */
    record Groups(TensorShape shape, int groups) {
    }

    static final Distribution[] HOSTILE = {Distribution.NORMAL, Distribution.LARGE_MEAN,
        Distribution.CONSTANT, Distribution.TINY, Distribution.HUGE, Distribution.MIXED_MAGNITUDES};

    static Distribution[] from(Distribution first) {
        int at = first == Distribution.EXTREME ? 0 : first.ordinal();
        Distribution[] out = new Distribution[HOSTILE.length];
        for (int i = 0; i < HOSTILE.length; i++) {
            out[i] = HOSTILE[(at + i) % HOSTILE.length];
        }
        return out;
    }

    /** A gap value whose bits the kernels would not write: a NaN with a payload. */
    static final float GAP = Float.intBitsToFloat(0x7fc0_1234);

    @Provide
    Arbitrary<Rows> rows() {
        Arbitrary<Integer> features = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(3, Arbitraries.of(1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 128, 255, 256, 300)),
                net.jqwik.api.Tuple.of(1, Arbitraries.of(768, 1000, 1024, 2048, 4096)),
                net.jqwik.api.Tuple.of(2, Arbitraries.integers().between(1, 700)));
        return Combinators.combine(Arbitraries.longs().between(1, 40), Arbitraries.of(1, 1, 1, 2, 3, 4),
                features, Arbitraries.frequency(net.jqwik.api.Tuple.of(2, 0), net.jqwik.api.Tuple.of(1, 1),
                        net.jqwik.api.Tuple.of(1, 7))).as((r, h, f, gap) -> {
                            long rows = Math.max(1, Math.min(r, Shapes.MAX_ELEMENTS / ((long) h * f + gap)));
                            return new Rows(rows, h, f, (long) h * f + gap);
                        });
    }

    @Provide
    Arbitrary<Groups> groups() {
        return Combinators.combine(Shapes.shapes(), Arbitraries.integers().between(0, 1000))
                .as((shape, pick) -> {
                    int c = shape.channels();
                    int[] divisors = java.util.stream.IntStream.rangeClosed(1, c).filter(d -> c % d == 0).toArray();
                    return new Groups(shape, divisors[pick % divisors.length]);
                });
    }

    @Provide
    Arbitrary<Float> epsilons() {
        return Shapes.epsilons();
    }

    /** Dense values of every unit, unit u drawn from kinds[(u + first) % 6]. */
    static float[] rowValues(Rows g, long seed, Distribution first) {
        TensorShape asChannels = new TensorShape(1, Math.toIntExact(g.units()), g.features(), Layout.NCHW);
        return TestData.tensor(asChannels, seed, from(first));
    }

    // ------------------------------------------------------------------------------ LayerNorm

    @Property
    void layerNormMatchesReference(@ForAll("rows") Rows g, @ForAll("epsilons") float eps,
                                   @ForAll long seed, @ForAll Distribution first, @ForAll boolean affine) {
        float[] x = NormRuns.strided(rowValues(g, seed, first), g.rows(), g.heads(), g.features(), g.rowStride(), GAP);
        float[] w = affine ? TestData.gaussian(g.features(), seed + 1, 1) : null;
        float[] b = affine ? TestData.gaussian(g.features(), seed + 2, 1) : null;
        LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride())
                .epsilon(eps).build();
        NormRuns.Forward got = NormRuns.layerNorm(ln, x, w, b, false, GAP);
        NormReference.Units units = NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride());
        String context = g + " eps " + eps;
        checkForward(units, x, w, b, eps, got, g.features(), true, context);
        checkGaps(units, got.y(), context);

        float[] dy = NormRuns.strided(BackwardProperties.upstream(Math.toIntExact(g.units() * g.features()), seed + 5),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        NormRuns.Backward grad = NormRuns.layerNormBackward(ln, x, dy, w, got.mean(), got.rstd(), false);
        checkBackward(units, x, dy, w, got.mean(), got.rstd(), grad, g.features(), g.features(), context);
    }

    /** y, mean and rstd of LayerNorm or GroupNorm within their bounds, unit by unit. */
    static void checkForward(NormReference.Units units, float[] x, float[] w, float[] b, float eps,
                             NormRuns.Forward got, int segment, boolean roundedRstd, String context) {
        NormReference.Statistics st = NormReference.statistics(units, x, false);
        double[] ref = NormReference.forward(units, x, w, b, st, eps, false, x.length);
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            double mu = st.mean()[u], var = st.variance()[u], r = 1 / Math.sqrt(var + eps);
            NormBounds.StatisticsError e = NormBounds.statistics(x, idx, segment, mu, var);
            Expect.within("mean", got.mean()[u], mu, Bounds.U * Math.abs(mu) + e.mean() * (1 + Bounds.U) + Bounds.TINY,
                    context + " unit " + u);
            Expect.within("rstd", got.rstd()[u], r, NormBounds.rstd(r, var, eps, e), context + " unit " + u);
            for (int j = 0; j < idx.length; j++) {
                double a = (w == null ? 1 : w[par[j]]) * r, beta = b == null ? 0 : b[par[j]];
                Expect.within("y", got.y()[idx[j]], ref[idx[j]],
                        NormBounds.output(a, x[idx[j]] - mu, mu, beta, var, eps, e, roundedRstd),
                        context + " unit " + u + " value " + j);
            }
        }
    }

    /** Every float outside the units still holds the gap's bits. */
    static void checkGaps(NormReference.Units units, float[] y, String context) {
        boolean[] inUnit = new boolean[y.length];
        for (int[] idx : units.index()) {
            for (int i : idx) {
                inUnit[i] = true;
            }
        }
        for (int i = 0; i < y.length; i++) {
            if (!inUnit[i]) {
                assertEquals(Float.floatToRawIntBits(GAP), Float.floatToRawIntBits(y[i]), context + ": gap at " + i + " written");
            }
        }
    }

    /** dx, dw and db of LayerNorm or GroupNorm within their bounds, for the forward's mean and rstd. */
    static void checkBackward(NormReference.Units units, float[] x, float[] dy, float[] w, float[] mean,
                              float[] rstd, NormRuns.Backward got, int segment, int params, String context) {
        double[] mu = new double[mean.length], r = new double[rstd.length];
        for (int u = 0; u < mean.length; u++) {
            mu[u] = mean[u];
            r[u] = rstd[u];
        }
        NormReference.Gradients ref = NormReference.backward(units, x, dy, w, mu, r, x.length, params);
        double[] dvar = NormReference.dVariance(units, x, dy, w, mu, r);
        double[] absW = new double[params], absB = new double[params];
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            int m = idx.length, merges = m / segment + 16;
            double sg = 0, sgx = 0, absG = 0, absGx = 0, sumDev = 0;
            for (int j = 0; j < m; j++) {
                double g = dy[idx[j]] * NormReference.weightOf(w, par[j], false), d = x[idx[j]] - mu[u];
                sg += g;
                sgx += g * d;
                absG += Math.abs(g);
                absGx += Math.abs(g * d);
                sumDev += d;
                absW[par[j]] += Math.abs(dy[idx[j]] * d * r[u]);
                absB[par[j]] += Math.abs(dy[idx[j]]);
            }
            double factor = 2.0 * (m + 8 + 2 * merges) * Bounds.W;
            double b = -r[u] * r[u] * r[u] * sgx / m, c = -r[u] * sg / m;
            for (int j = 0; j < m; j++) {
                double a = r[u] * NormReference.weightOf(w, par[j], false);
                int i = idx[j];
                Expect.within("dx", got.dx()[i], ref.dx()[i], NormBounds.gradient(a, dy[i], b, c, x[i] - mu[u],
                        ref.dx()[i], r[u], factor * absG, factor * absGx, m, dvar[u], sumDev), context + " unit " + u + " value " + j);
            }
        }
        int m = units.index()[0].length, t = units.count();
        for (int p = 0; p < params; p++) {
            Expect.within("dweight", got.dw()[p], ref.dw()[p], NormBounds.parameter(ref.dw()[p], absW[p], m, t), context + " param " + p);
            Expect.within("dbias", got.db()[p], ref.db()[p], NormBounds.parameter(ref.db()[p], absB[p], m, t), context + " param " + p);
        }
    }

    // -------------------------------------------------------------------------------- RMSNorm

    @Property
    void rmsNormMatchesReference(@ForAll("rows") Rows g, @ForAll("epsilons") float eps, @ForAll long seed,
                                 @ForAll Distribution first, @ForAll boolean weighted, @ForAll boolean unitOffset) {
        float[] x = NormRuns.strided(rowValues(g, seed, first), g.rows(), g.heads(), g.features(), g.rowStride(), GAP);
        float[] w = weighted ? TestData.gaussian(g.features(), seed + 1, unitOffset ? 0.1 : 1) : null;
        RMSNorm rms = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride())
                .epsilon(eps).unitOffset(unitOffset).build();
        NormRuns.Forward got = NormRuns.rmsNorm(rms, x, w, false, GAP);
        NormReference.Units units = NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride());
        String context = g + " eps " + eps + " unitOffset " + unitOffset;
        NormReference.Statistics st = NormReference.statistics(units, x, true);
        double[] ref = NormReference.forward(units, x, w, null, st, eps, unitOffset, x.length);
        boolean offset = unitOffset && w != null;
        for (int u = 0; u < units.count(); u++) {
            double r = 1 / Math.sqrt(st.variance()[u] + eps);
            Expect.within("rrms", got.rstd()[u], r, r * (Bounds.U + (g.features() + 12) * Bounds.W) + Bounds.TINY, context + " unit " + u);
            for (int i : units.index()[u]) {
                Expect.within("y", got.y()[i], ref[i], NormBounds.rmsOutput(ref[i], g.features(), offset), context + " unit " + u);
            }
        }
        checkGaps(units, got.y(), context);

        float[] dy = NormRuns.strided(BackwardProperties.upstream(Math.toIntExact(g.units() * g.features()), seed + 5),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        NormRuns.Backward grad = NormRuns.rmsNormBackward(rms, x, dy, w, got.rstd(), false);
        double[] r = new double[got.rstd().length];
        for (int u = 0; u < r.length; u++) {
            r[u] = got.rstd()[u];
        }
        NormReference.Gradients refGrad = NormReference.rmsBackward(units, x, dy, w, unitOffset, r, x.length, g.features());
        double[] absW = new double[g.features()];
        int m = g.features();
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            double sgx = 0, absGx = 0;
            for (int j = 0; j < m; j++) {
                double gx = dy[idx[j]] * NormReference.weightOf(w, par[j], unitOffset) * x[idx[j]];
                sgx += gx;
                absGx += Math.abs(gx);
                absW[par[j]] += Math.abs((double) dy[idx[j]] * x[idx[j]] * r[u]);
            }
            double e2 = 2.0 * (m + 8) * Bounds.W * absGx, b = -r[u] * r[u] * r[u] * sgx / m;
            for (int j = 0; j < m; j++) {
                int i = idx[j];
                double a = r[u] * NormReference.weightOf(w, par[j], unitOffset);
                Expect.within("dx", grad.dx()[i], refGrad.dx()[i], NormBounds.rmsGradient(a, dy[i], b, x[i],
                        refGrad.dx()[i], r[u], e2, absGx, m, offset), context + " unit " + u + " value " + j);
            }
        }
        for (int p = 0; p < m; p++) {
            Expect.within("dweight", grad.dw()[p], refGrad.dw()[p],
                    NormBounds.parameter(refGrad.dw()[p], absW[p], m, units.count()), context + " param " + p);
        }
    }

    // ------------------------------------------------------------------------------ GroupNorm

    @Property
    void groupNormMatchesReference(@ForAll("groups") Groups g, @ForAll("epsilons") float eps, @ForAll long seed,
                                   @ForAll Distribution first, @ForAll boolean affine) {
        TensorShape shape = g.shape();
        int c = shape.channels();
        float[] x = TestData.tensor(shape, seed, from(first));
        float[] w = affine ? TestData.gaussian(c, seed + 1, 1) : null;
        float[] b = affine ? TestData.gaussian(c, seed + 2, 1) : null;
        GroupNorm gn = GroupNorm.builder(shape, g.groups()).epsilon(eps).build();
        NormRuns.Forward got = NormRuns.groupNorm(gn, x, w, b, false, false);
        NormReference.Units units = NormReference.Units.groups(shape, g.groups());
        // NCHW (and spatial 1) sums a group as one run; NHWC per channel, about each channel's first value.
        boolean rows = shape.layout() == Layout.NHWC && shape.spatial() > 1;
        int segment = rows ? (int) shape.spatial() : units.index()[0].length;
        String context = shape + " groups " + g.groups() + " eps " + eps;
        checkForward(units, x, w, b, eps, got, segment, false, context);

        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        NormRuns.Backward grad = NormRuns.groupNormBackward(gn, x, dy, w, got.mean(), got.rstd(), false);
        checkBackward(units, x, dy, w, got.mean(), got.rstd(), grad, (int) shape.spatial(), c, context);
    }

    // ---------------------------------------------------------------------------- invariances

    /**
     * LayerNorm of x + c against LayerNorm of x, c a multiple of 2^12 and x on a grid of 2^-10
     * below 2^10 in magnitude, so that x + c is exact in float (fewer than 24 significant bits):
     * both outputs approximate the same exact y, so they differ by at most the sum of their
     * bounds.
     */
    @Property(tries = 200)
    void layerNormIgnoresAConstantAddedToARow(@ForAll("rows") Rows g, @ForAll long seed,
                                             @ForAll("shifts") int k) {
        SplittableRandom random = new SplittableRandom(seed);
        int n = Math.toIntExact(g.units() * g.features());
        float[] dense = new float[n], moved = new float[n];
        for (int i = 0; i < n; i++) {
            dense[i] = (float) Math.scalb(Math.rint(random.nextDouble(-1, 1) * (1 << 19)), -10);
            moved[i] = dense[i] + k * 4096f;
            assertEquals((double) dense[i] + k * 4096.0, moved[i], "exact shift");
        }
        float[] x = NormRuns.strided(dense, g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] xc = NormRuns.strided(moved, g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        float[] y = NormRuns.layerNorm(ln, x, null, null, false, 0f).y();
        float[] yc = NormRuns.layerNorm(ln, xc, null, null, false, 0f).y();
        NormReference.Units units = NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride());
        NormReference.Statistics st = NormReference.statistics(units, x, false), sc = NormReference.statistics(units, xc, false);
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u];
            double r = 1 / Math.sqrt(st.variance()[u] + 1e-5f);
            NormBounds.StatisticsError e = NormBounds.statistics(x, idx, g.features(), st.mean()[u], st.variance()[u]);
            NormBounds.StatisticsError ec = NormBounds.statistics(xc, idx, g.features(), sc.mean()[u], sc.variance()[u]);
            for (int i : idx) {
                double bound = NormBounds.output(r, x[i] - st.mean()[u], st.mean()[u], 0, st.variance()[u], 1e-5f, e, true)
                        + NormBounds.output(r, xc[i] - sc.mean()[u], sc.mean()[u], 0, sc.variance()[u], 1e-5f, ec, true);
                Expect.within("y(x + c)", yc[i], y[i], bound, g + " shift " + k * 4096 + " unit " + u);
            }
        }
    }

    @Provide
    Arbitrary<Integer> shifts() {
        return Arbitraries.integers().between(-2, 2);
    }

    /**
     * RMSNorm of x 2^k has the bits of RMSNorm of x when eps is negligible: each square is exact
     * in double (48 significant bits), so every partial sum of the scaled squares is the scaled
     * partial sum (no overflow or underflow for |k| <= 20 and |x| in [1, 40]), eps = 1e-30 is below
     * half an ulp of a mean square of at least 4^-20, and the square root, the reciprocal and the
     * float roundings of a power-of-two multiple are that multiple of the unscaled results; then
     * y = fl(x 2^k fl(rrms 2^-k w)) = fl(x fl(rrms w)).
     */
    @Property(tries = 200)
    void rmsNormIgnoresAPowerOfTwoScale(@ForAll("rows") Rows g, @ForAll long seed, @ForAll("powers") int k,
                                        @ForAll boolean weighted) {
        SplittableRandom random = new SplittableRandom(seed);
        int n = Math.toIntExact(g.units() * g.features());
        float[] dense = new float[n], scaled = new float[n];
        for (int i = 0; i < n; i++) {
            dense[i] = (float) ((random.nextBoolean() ? 1 : -1) * random.nextDouble(1, 40));
            scaled[i] = Math.scalb(dense[i], k);
        }
        float[] w = weighted ? TestData.gaussian(g.features(), seed + 1, 1) : null;
        RMSNorm rms = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride())
                .epsilon(1e-30f).build();
        float[] y = NormRuns.rmsNorm(rms, NormRuns.strided(dense, g.rows(), g.heads(), g.features(), g.rowStride(), 0f), w, false, 0f).y();
        float[] ys = NormRuns.rmsNorm(rms, NormRuns.strided(scaled, g.rows(), g.heads(), g.features(), g.rowStride(), 0f), w, false, 0f).y();
        Expect.bitwiseEqual("y", y, ys, g + " scale 2^" + k);
    }

    @Provide
    Arbitrary<Integer> powers() {
        return Arbitraries.integers().between(-20, 20);
    }

    /** A constant unit (1e7 everywhere) has variance 0, mean exactly 1e7 and y exactly the bias. */
    @Property(tries = 200)
    void constantUnitsGiveExactlyTheBias(@ForAll("rows") Rows g, @ForAll("groups") Groups gg, @ForAll long seed) {
        float[] x = new float[Math.toIntExact(g.floats())];
        java.util.Arrays.fill(x, 1e7f);
        float[] w = TestData.gaussian(g.features(), seed + 1, 1), b = TestData.gaussian(g.features(), seed + 2, 1);
        LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        NormRuns.Forward got = NormRuns.layerNorm(ln, x, w, b, false, 0f);
        NormReference.Units units = NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride());
        for (int u = 0; u < units.count(); u++) {
            assertEquals(1e7f, got.mean()[u], "mean");
            for (int j = 0; j < g.features(); j++) {
                assertEquals(b[j], got.y()[units.index()[u][j]], g + " unit " + u);
            }
        }
        TensorShape shape = gg.shape();
        float[] gx = new float[Math.toIntExact(shape.elements())];
        java.util.Arrays.fill(gx, 1e7f);
        float[] gw = TestData.gaussian(shape.channels(), seed + 3, 1), gb = TestData.gaussian(shape.channels(), seed + 4, 1);
        NormRuns.Forward gy = NormRuns.groupNorm(GroupNorm.builder(shape, gg.groups()).build(), gx, gw, gb, false, false);
        for (int n = 0; n < shape.batch(); n++) {
            for (int c = 0; c < shape.channels(); c++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    assertEquals(gb[c], gy.y()[Reference.index(shape, n, c, s)], gg + " channel " + c);
                }
            }
        }
    }

    /**
     * NaN in one unit poisons that unit only: every other unit's outputs (y, its statistics, dx)
     * have the bits of a run without the NaN.
     */
    @Property(tries = 200)
    void nanStaysInItsUnit(@ForAll("rows") Rows g, @ForAll("groups") Groups gg, @ForAll long seed) {
        float[] dense = TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed, 2);
        float[] clean = NormRuns.strided(dense, g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] dirty = clean.clone();
        NormReference.Units units = NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride());
        int bad = (int) Math.floorMod(seed, (long) units.count());
        dirty[units.index()[bad][(int) Math.floorMod(seed >> 8, (long) g.features())]] = Float.NaN;
        float[] w = TestData.gaussian(g.features(), seed + 1, 1);
        LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        RMSNorm rms = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        NormRuns.Forward a = NormRuns.layerNorm(ln, clean, w, null, false, 0f), z = NormRuns.layerNorm(ln, dirty, w, null, false, 0f);
        NormRuns.Forward ra = NormRuns.rmsNorm(rms, clean, w, false, 0f), rz = NormRuns.rmsNorm(rms, dirty, w, false, 0f);
        float[] dy = NormRuns.strided(TestData.gaussian(dense.length, seed + 2, 1), g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] dxa = NormRuns.layerNormBackward(ln, clean, dy, w, a.mean(), a.rstd(), false).dx();
        float[] dxz = NormRuns.layerNormBackward(ln, dirty, dy, w, z.mean(), z.rstd(), false).dx();
        for (int u = 0; u < units.count(); u++) {
            if (u == bad) {
                assertTrue(Float.isNaN(z.mean()[u]) && Float.isNaN(rz.rstd()[u]), "the poisoned unit");
                continue;
            }
            assertEquals(Float.floatToRawIntBits(a.rstd()[u]), Float.floatToRawIntBits(z.rstd()[u]), "rstd " + u);
            for (int i : units.index()[u]) {
                assertEquals(Float.floatToRawIntBits(a.y()[i]), Float.floatToRawIntBits(z.y()[i]), g + " LayerNorm unit " + u);
                assertEquals(Float.floatToRawIntBits(ra.y()[i]), Float.floatToRawIntBits(rz.y()[i]), g + " RMSNorm unit " + u);
                assertEquals(Float.floatToRawIntBits(dxa[i]), Float.floatToRawIntBits(dxz[i]), g + " dx unit " + u);
            }
        }
        TensorShape shape = gg.shape();
        float[] gx = TestData.gaussian(Math.toIntExact(shape.elements()), seed + 3, 1), gdirty = gx.clone();
        NormReference.Units groups = NormReference.Units.groups(shape, gg.groups());
        int badGroup = (int) Math.floorMod(seed, (long) groups.count());
        gdirty[groups.index()[badGroup][0]] = Float.NaN;
        GroupNorm gn = GroupNorm.builder(shape, gg.groups()).build();
        float[] gya = NormRuns.groupNorm(gn, gx, null, null, false, false).y(), gyz = NormRuns.groupNorm(gn, gdirty, null, null, false, false).y();
        for (int u = 0; u < groups.count(); u++) {
            for (int i : groups.index()[u]) {
                if (u != badGroup) {
                    assertEquals(Float.floatToRawIntBits(gya[i]), Float.floatToRawIntBits(gyz[i]), gg + " group " + u);
                } else {
                    assertTrue(Float.isNaN(gyz[i]), gg + " the poisoned group");
                }
            }
        }
    }

    /**
     * Same bits: y over x and dx over dy as out of place; heap segments as native ones; the unit
     * offset as the explicit weight fl(1 + w); forwardWithResidual as the add and then forward;
     * InstanceNorm as GroupNorm with a group per channel, and its eval mode as BatchNorm's
     * inference.
     */
    @Property(tries = 300)
    void variantsGiveTheSameBits(@ForAll("rows") Rows g, @ForAll("groups") Groups gg, @ForAll long seed) {
        float[] x = NormRuns.strided(TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed, 2),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] w = TestData.gaussian(g.features(), seed + 1, 0.2), b = TestData.gaussian(g.features(), seed + 2, 1);
        LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        NormRuns.Forward plain = NormRuns.layerNorm(ln, x, w, b, false, 0f);
        Expect.bitwiseEqual("heap y", plain.y(), NormRuns.layerNorm(ln, x, w, b, true, 0f).y(), g.toString());
        float[] dy = NormRuns.strided(TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed + 3, 1),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        Expect.bitwiseEqual("dx in place", NormRuns.layerNormBackward(ln, x, dy, w, plain.mean(), plain.rstd(), false).dx(),
                NormRuns.layerNormBackward(ln, x, dy, w, plain.mean(), plain.rstd(), true).dx(), g.toString());

        RMSNorm gemma = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).unitOffset(true).build();
        RMSNorm rms = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
        float[] onePlus = new float[w.length];
        for (int i = 0; i < w.length; i++) {
            onePlus[i] = 1f + w[i];
        }
        Expect.bitwiseEqual("unit offset", NormRuns.rmsNorm(gemma, x, w, false, 0f).y(), NormRuns.rmsNorm(rms, x, onePlus, false, 0f).y(), g.toString());
        float[] residual = NormRuns.strided(TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed + 4, 1),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] h = residual.clone();
        NormRuns.Forward fused = NormRuns.rmsNormWithResidual(rms, x, h, w);
        float[] added = residual.clone();
        for (int[] idx : NormReference.Units.rows(g.rows(), g.heads(), g.features(), g.rowStride()).index()) {
            for (int i : idx) {
                added[i] = x[i] + residual[i];
            }
        }
        Expect.bitwiseEqual("h = x + residual", added, h, g.toString());
        Expect.bitwiseEqual("fused y", NormRuns.rmsNorm(rms, added, w, false, 0f).y(), fused.y(), g.toString());

        TensorShape shape = gg.shape();
        float[] gx = TestData.gaussian(Math.toIntExact(shape.elements()), seed + 5, 2);
        float[] gw = TestData.gaussian(shape.channels(), seed + 6, 1), gb = TestData.gaussian(shape.channels(), seed + 7, 1);
        GroupNorm gn = GroupNorm.builder(shape, gg.groups()).build();
        NormRuns.Forward gplain = NormRuns.groupNorm(gn, gx, gw, gb, false, false);
        Expect.bitwiseEqual("GroupNorm in place", gplain.y(), NormRuns.groupNorm(gn, gx, gw, gb, false, true).y(), gg.toString());
        Expect.bitwiseEqual("GroupNorm heap", gplain.y(), NormRuns.groupNorm(gn, gx, gw, gb, true, false).y(), gg.toString());
        float[] gdy = TestData.gaussian(gx.length, seed + 8, 1);
        Expect.bitwiseEqual("GroupNorm dx in place",
                NormRuns.groupNormBackward(gn, gx, gdy, gw, gplain.mean(), gplain.rstd(), false).dx(),
                NormRuns.groupNormBackward(gn, gx, gdy, gw, gplain.mean(), gplain.rstd(), true).dx(), gg.toString());
        GroupNorm perChannel = GroupNorm.builder(shape, shape.channels()).build();
        InstanceNorm in = InstanceNorm.builder(shape).build();
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.MemorySegment y = arena.allocate(4 * shape.elements());
            in.forward(Segments.of(arena, gx), Segments.of(arena, gw), Segments.of(arena, gb), y, null, null);
            Expect.bitwiseEqual("InstanceNorm", NormRuns.groupNorm(perChannel, gx, gw, gb, false, false).y(), Segments.toArray(y), gg.toString());
            float[] rm = TestData.gaussian(shape.channels(), seed + 9, 1), rv = new float[shape.channels()];
            for (int c = 0; c < rv.length; c++) {
                rv[c] = 0.5f + c % 3;
            }
            in.forwardInference(Segments.of(arena, gx), Segments.of(arena, gw), Segments.of(arena, gb),
                    Segments.of(arena, rm), Segments.of(arena, rv), y);
            float[] bn = Runs.inference(BatchNorm.builder(shape).build(), gx, gw, gb, rm, rv);
            Expect.bitwiseEqual("InstanceNorm eval", bn, Segments.toArray(y), gg.toString());
        }
    }

    /**
     * InstanceNorm's running statistics follow PyTorch's track_running_stats over several steps:
     * running = (1 - m) running + m avg_n(stat), the unbiased instance variance, computed here in
     * double from the reference's statistics. The kernel's mean and variance err by their
     * statistics bounds and the update adds four roundings in double and one to float:
     * u |running| + m (mean or variance bound) + the carried error of the step before, times
     * (1 - m).
     */
    @Property(tries = 100)
    void instanceNormRunningStatistics(@ForAll("groups") Groups gg, @ForAll long seed) {
        TensorShape shape = gg.shape();
        if (shape.spatial() < 2) {
            return;
        }
        int channels = shape.channels();
        float momentum = 0.3f;
        InstanceNorm in = InstanceNorm.builder(shape).momentum(momentum).build();
        NormReference.Units units = NormReference.Units.groups(shape, channels);
        double[] refMean = new double[channels], refVar = new double[channels];
        java.util.Arrays.fill(refVar, 1);
        double[] errMean = new double[channels], errVar = new double[channels];
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.MemorySegment rm = arena.allocate(4L * channels), rv = Segments.of(arena, filled(channels, 1f));
            java.lang.foreign.MemorySegment y = arena.allocate(4 * shape.elements());
            for (int step = 0; step < 3; step++) {
                float[] x = TestData.tensor(shape, seed + step, from(Distribution.NORMAL));
                in.forward(Segments.of(arena, x), null, null, y, null, null, rm, rv);
                NormReference.Statistics st = NormReference.statistics(units, x, false);
                double hw = shape.spatial();
                for (int c = 0; c < channels; c++) {
                    double m = 0, v = 0, em = 0, ev = 0;
                    for (int n = 0; n < shape.batch(); n++) {
                        int u = n * channels + c;
                        m += st.mean()[u];
                        v += st.variance()[u] * hw / (hw - 1);
                        NormBounds.StatisticsError e = NormBounds.statistics(x, units.index()[u], (int) hw, st.mean()[u], st.variance()[u]);
                        em += e.mean();
                        ev += e.variance() * hw / (hw - 1);
                    }
                    refMean[c] = (1 - (double) momentum) * refMean[c] + momentum * m / shape.batch();
                    refVar[c] = (1 - (double) momentum) * refVar[c] + momentum * v / shape.batch();
                    errMean[c] = (1 - (double) momentum) * (errMean[c] + Bounds.U * Math.abs(refMean[c])) + momentum * em / shape.batch()
                            + Bounds.U * Math.abs(refMean[c]) + 8 * Bounds.W * Math.abs(refMean[c]) + Bounds.TINY;
                    errVar[c] = (1 - (double) momentum) * (errVar[c] + Bounds.U * refVar[c]) + momentum * ev / shape.batch()
                            + Bounds.U * refVar[c] + 8 * Bounds.W * refVar[c] + Bounds.TINY;
                }
                float[] gotMean = Segments.toArray(rm), gotVar = Segments.toArray(rv);
                for (int c = 0; c < channels; c++) {
                    Expect.within("running_mean", gotMean[c], refMean[c], errMean[c], gg + " step " + step + " channel " + c);
                    Expect.within("running_var", gotVar[c], refVar[c], errVar[c], gg + " step " + step + " channel " + c);
                }
            }
        }
    }

    static float[] filled(int n, float v) {
        float[] out = new float[n];
        java.util.Arrays.fill(out, v);
        return out;
    }
}
