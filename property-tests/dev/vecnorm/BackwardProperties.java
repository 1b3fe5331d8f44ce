package dev.vecnorm;

import dev.vecnorm.TestData.Distribution;
import java.util.SplittableRandom;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;

/**
 * Backward kernels against the reference's step-by-step backward, for the mean and variance that
 * forwardTraining wrote (so, as in real training, rounded to float).
 *
 * <p>Bounds (u = 2^-24, w = 2^-53; see {@link Bounds}). The kernels form, in double,
 * Sdy = sum(dy) and Sxdy = sum((x - mean) dy), each with an absolute error of at most
 * E1 = 2(M + 8) w sum|dy| and E2 = 2(M + 8) w sum|x - mean||dy| (M + 8 additions per value, as
 * for the forward sums, doubled for the chunk merges). Then with invstd = 1/sqrt(var + eps) and
 * A = gamma invstd, B = -A invstd^2 Sxdy / M, C = -A Sdy / M, each rounded to float (u each),
 * dx = fma(fl(x - mean), B, fma(dy, A, C)) errs by at most
 * 3u (|A dy| + |C| + |B (x - mean)|) (two roundings of each term plus the inner fma) + u |dx|
 * (the outer fma) + |A| (E1 + invstd^2 |x - mean| E2) / M (the sums' errors) + 3 2^-150 (the
 * roundings whose results can be subnormal: C, the inner fma, dx). A, B and C themselves are
 * normal floats or exact zeros: where one would be subnormal (B, for a standard deviation above
 * about 1e18) the engine computes the channel in double, where the coefficients carry at most
 * 8w relative error and the two fmas w each: 10w (|A dy| + |C| + |B (x - mean)|) replaces the 3u
 * term, and the final rounding to float stays u |dx|.
 * dbeta = fl(Sdy) errs by u |dbeta| + E1; dgamma = fl(invstd Sxdy) by u |dgamma| + invstd E2.
 *
 * <p>The reference follows the paper, whose dL/dmean has a term dL/dvar * sum(-2 (x - mean)) / M
 * that the collapsed form drops because it vanishes for the exact mean. For the float-rounded
 * mean it is not quite zero, so each dx may also differ by |dL/dvar| 2 |sum(x - mean)| / M^2.
 */
class BackwardProperties {

    /** dy of mixed magnitudes: standard normal times 10^k, k uniform in [-3, 3] per value. */
    static float[] upstream(int count, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] g = TestData.gaussian(count, seed, 1);
        for (int i = 0; i < count; i++) {
            g[i] *= (float) Math.pow(10, r.nextDouble(-3, 3));
        }
        return g;
    }

    @Property
    void backwardMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll(supplier = Shapes.Epsilon.class) float eps,
                                  @ForAll long seed, @ForAll Distribution first,
                                  @ForAll boolean affine) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] dy = upstream(x.length, seed + 5);
        float[] gamma = affine ? TestData.gaussian(channels, seed + 1, 1) : null;
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        Runs.Training fwd = Runs.training(bn, x, gamma, null);
        Runs.Backward got = Runs.backward(bn, false, x, dy, gamma, fwd.mean(), fwd.variance());
        checkBackward(shape, x, dy, gamma, fwd.mean(), fwd.variance(), eps, got, shape + " eps " + eps);
    }

    static void checkBackward(TensorShape shape, float[] x, float[] dy, float[] gamma, float[] mean,
                              float[] variance, float eps, Runs.Backward got, String context) {
        checkBackward(shape, x, dy, gamma, mean, variance, eps, got, context, new boolean[shape.channels()]);
    }

    /** As above; the channels marked in {@code inDouble} must meet the double path's bound. */
    static void checkBackward(TensorShape shape, float[] x, float[] dy, float[] gamma, float[] mean,
                              float[] variance, float eps, Runs.Backward got, String context,
                              boolean[] inDouble) {
        int channels = shape.channels();
        long m = shape.perChannel();
        double[] g = gamma == null ? Reference.filled(channels, 1) : Reference.widen(gamma);
        double[] mu = Reference.widen(mean), var = Reference.widen(variance);
        Reference.Gradients ref = Reference.backward(shape, x, dy, g, mu, var, eps);
        double[] dVar = Reference.dVariance(shape, x, dy, g, mu, var, eps);
        for (int c = 0; c < channels; c++) {
            double sdy = 0, sxdy = 0, absDy = 0, absXDy = 0, sx = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double d = x[i] - mu[c];
                    sdy += dy[i];
                    sxdy += d * dy[i];
                    absDy += Math.abs(dy[i]);
                    absXDy += Math.abs(d * dy[i]);
                    sx += d;
                }
            }
            double e1 = 2.0 * (m + 8) * Bounds.W * absDy;
            double e2 = 2.0 * (m + 8) * Bounds.W * absXDy;
            double invstd = 1 / Math.sqrt(var[c] + eps);
            double a = g[c] * invstd, b = -a * invstd * invstd * sxdy / m, cc = -a * sdy / m;
            double discrepancy = Math.abs(dVar[c]) * 2 * Math.abs(sx) / ((double) m * m);
            String at = context + ", channel " + c;
            Expect.within("dbeta", got.dbeta()[c], ref.dbeta()[c],
                    Bounds.U * Math.abs(ref.dbeta()[c]) + e1 + Bounds.TINY, at);
            Expect.within("dgamma", got.dgamma()[c], ref.dgamma()[c],
                    (Bounds.U + 4 * Bounds.W) * Math.abs(ref.dgamma()[c]) + invstd * e2 + Bounds.TINY, at);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double d = Math.abs(x[i] - mu[c]);
                    double terms = Math.abs(a * dy[i]) + Math.abs(cc) + Math.abs(b * d);
                    double bound = (inDouble[c] ? 10 * Bounds.W : 3 * Bounds.U) * terms
                            + Bounds.U * Math.abs(ref.dx()[i])
                            + Math.abs(a) * (e1 + invstd * invstd * d * e2) / m
                            + discrepancy + 3 * Bounds.TINY;
                    Expect.within("dx", got.dx()[i], ref.dx()[i], bound, at + ", n " + n + ", s " + s);
                }
            }
        }
    }

    /**
     * BatchNorm's two constraints on dx: per channel, with the collapsed form
     * dx = A dy + C + B (x - mean) and Sx = sum(x - mean), Sxx = sum((x - mean)^2),
     * <pre>
     *   sum(dx)            = B Sx                                                 (0 for the exact mean)
     *   sum(dx (x - mean)) = A Sxdy (1 - Sxx / (M (var + eps))) - A Sdy Sx / M     (0 for the exact mean, eps = 0)
     * </pre>
     * The kernels' sums must equal these exact values to within the sum of the per-element dx
     * bounds (weighted by |x - mean| for the second), plus the double rounding of the test's own
     * sums (M w times the sum of magnitudes).
     */
    @Property
    void dxSatisfiesTheTwoConstraints(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                      @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                      @ForAll Distribution first) {
        int channels = shape.channels();
        long m = shape.perChannel();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] dy = upstream(x.length, seed + 5);
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        Runs.Training fwd = Runs.training(bn, x, null, null);
        Runs.Backward got = Runs.backward(bn, false, x, dy, null, fwd.mean(), fwd.variance());
        for (int c = 0; c < channels; c++) {
            double mu = fwd.mean()[c], var = fwd.variance()[c];
            double sdy = 0, sxdy = 0, sx = 0, sxx = 0, absDy = 0, absXDy = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double d = x[i] - mu;
                    sdy += dy[i];
                    sxdy += d * dy[i];
                    sx += d;
                    sxx += d * d;
                    absDy += Math.abs(dy[i]);
                    absXDy += Math.abs(d * dy[i]);
                }
            }
            double invstd = 1 / Math.sqrt(var + eps);
            double a = invstd, b = -a * invstd * invstd * sxdy / m, cc = -a * sdy / m;
            double e1 = 2.0 * (m + 8) * Bounds.W * absDy, e2 = 2.0 * (m + 8) * Bounds.W * absXDy;
            double expectSum = b * sx;
            double expectMoment = a * sxdy * (1 - sxx / (m * (var + eps))) - a * sdy * sx / m;
            double sum = 0, moment = 0, bound = 0, momentBound = 0, magnitude = 0, momentMagnitude = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double d = x[i] - mu;
                    double dx = got.dx()[i];
                    double exact = a * dy[i] + cc + b * d;
                    double bi = 3 * Bounds.U * (Math.abs(a * dy[i]) + Math.abs(cc) + Math.abs(b * d))
                            + Bounds.U * Math.abs(exact) + Math.abs(a) * (e1 + invstd * invstd * Math.abs(d) * e2) / m
                            + 3 * Bounds.TINY;
                    sum += dx;
                    moment += dx * d;
                    bound += bi;
                    momentBound += bi * Math.abs(d);
                    magnitude += Math.abs(a * dy[i]) + Math.abs(cc) + Math.abs(b * d);
                    momentMagnitude += (Math.abs(a * dy[i]) + Math.abs(cc) + Math.abs(b * d)) * Math.abs(d);
                }
            }
            String at = shape + ", channel " + c;
            Expect.within("sum(dx)", sum, expectSum, bound + 2 * m * Bounds.W * magnitude, at);
            Expect.within("sum(dx (x - mean))", moment, expectMoment,
                    momentBound + 2 * m * Bounds.W * momentMagnitude, at);
        }
    }

    /** Frozen statistics: dx = gamma invstd dy, fl(fl(A) dy): 2u |A dy| (+ double error of A). */
    @Property
    void frozenBackwardMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                        @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                        @ForAll Distribution first) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] dy = upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] mean = TestData.gaussian(channels, seed + 2, 1);
        float[] var = TestData.gaussian(channels, seed + 3, 1);
        for (int c = 0; c < channels; c++) {
            var[c] = Math.abs(var[c]);
        }
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        Runs.Backward got = Runs.backward(bn, true, x, dy, gamma, mean, var);
        Reference.Gradients ref = Reference.backward(shape, x, dy, Reference.widen(gamma),
                Reference.widen(mean), Reference.widen(var), eps);
        for (int c = 0; c < channels; c++) {
            double a = gamma[c] / Math.sqrt((double) var[c] + eps);
            Expect.within("dbeta", got.dbeta()[c], ref.dbeta()[c], Bounds.U * Math.abs(ref.dbeta()[c])
                    + 2.0 * (shape.perChannel() + 8) * Bounds.W * absSum(shape, dy, c) + Bounds.TINY, "frozen");
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double expected = a * dy[i];
                    Expect.within("frozen dx", got.dx()[i], expected,
                            (2 * Bounds.U + 8 * Bounds.W) * Math.abs(expected) + 2 * Bounds.TINY,
                            shape + ", channel " + c);
                }
            }
        }
    }

    private static double absSum(TensorShape shape, float[] v, int c) {
        double sum = 0;
        for (int n = 0; n < shape.batch(); n++) {
            for (long s = 0; s < shape.spatial(); s++) {
                sum += Math.abs(v[Reference.index(shape, n, c, s)]);
            }
        }
        return sum;
    }

    /** dx written over dy gives the same bits as a separate dx. */
    @Property(tries = 30)
    void inPlaceBackwardEqualsOutOfPlace(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll long seed) {
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        float[] dy = upstream(x.length, seed + 5);
        BatchNorm bn = BatchNorm.builder(shape).build();
        Runs.Training fwd = Runs.training(bn, x, null, null);
        Runs.Backward out = Runs.backward(bn, false, x, dy, null, fwd.mean(), fwd.variance());
        try (var arena = java.lang.foreign.Arena.ofConfined()) {
            var dxy = Segments.of(arena, dy);
            bn.backward(Segments.of(arena, x), dxy, null, Segments.of(arena, fwd.mean()),
                    Segments.of(arena, fwd.variance()), dxy, null, null);
            Expect.bitwiseEqual("in-place dx", out.dx(), Segments.toArray(dxy), shape.toString());
        }
    }
}
