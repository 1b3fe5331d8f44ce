package dev.vecnorm;

import static dev.vecnorm.Bounds.TINY;
import static dev.vecnorm.Bounds.U;
import static dev.vecnorm.Bounds.W;

/**
 * Error bounds of the norm family's kernels against {@link NormReference}, derived from float32
 * and float64 rounding as {@link Bounds} derives BatchNorm's (u = 2^-24, w = 2^-53).
 *
 * <p><b>Statistics.</b> A unit's m values are summed in segments, each about its first value K
 * (a LayerNorm or RMSNorm unit and an NCHW group are one segment; an NHWC group has one per
 * channel), as d = x - K and d^2 in double. {@link Bounds#varianceError} bounds one segment's
 * M2 with 2(n + 8) w per value; an NHWC group also merges up to 16 pixel chunks per channel and
 * then S channels with Chan's formula, each merge rounding its mean by w |mean| and its M2 by at
 * most 4 w M2 (two products and two sums). With S' = segments + 16 merges, the variance errs by
 * 2(m + 8 + 2S') w sum_seg(sum d^2 + 2 |sum d| sum|d| / n_seg) / m + 4 S' w var, the mean by
 * 2(m + 8 + 2S') w sum|d| / m + 2 S' w |mean|.
 */
final class NormBounds {

    private NormBounds() {
    }

    /** A unit's statistics error: the mean's and the variance's (see the class comment). */
    record StatisticsError(double mean, double variance) {
    }

    static StatisticsError statistics(float[] x, int[] idx, int segment, double mean, double var) {
        int m = idx.length, segments = m / segment;
        double sumAbs = 0, spread = 0;
        for (int s = 0; s < segments; s++) {
            double k = x[idx[s * segment]], sd = 0, sa = 0, s2 = 0;
            for (int j = s * segment; j < (s + 1) * segment; j++) {
                double d = x[idx[j]] - k;
                sd += d;
                sa += Math.abs(d);
                s2 += d * d;
            }
            sumAbs += sa;
            spread += s2 + 2 * Math.abs(sd) * sa / segment;
        }
        int merges = segments + 16;
        double factor = 2.0 * (m + 8 + 2 * merges) * W;
        return new StatisticsError(factor * sumAbs / m + 2 * merges * W * Math.abs(mean),
                factor * spread / m + 4 * merges * W * var);
    }

    /**
     * LayerNorm's and GroupNorm's y: {@link Bounds#trainingOutput} for a = w / sqrt(var + eps)
     * with relA = varErr / (2 (var + eps)) + 4w (the double rstd), plus u where the kernel rounds
     * rstd to float before multiplying by the weight (LayerNorm: {@code roundedRstd}).
     */
    static double output(double a, double deviation, double mean, double beta, double var, double eps,
                         StatisticsError e, boolean roundedRstd) {
        double relA = e.variance() / (2 * (var + eps)) + 4 * W + (roundedRstd ? U : 0);
        return Bounds.trainingOutput(a, deviation, mean, beta, relA, e.mean());
    }

    /** The written rstd: one float rounding, and the variance's error through the square root. */
    static double rstd(double exact, double var, double eps, StatisticsError e) {
        return exact * (U + e.variance() / (2 * (var + eps)) + 4 * W) + TINY;
    }

    /**
     * RMSNorm's y = fl(x fl(fl(rrms) w')): the mean square from m exact squares summed in
     * double ((m + 8) w relative), rrms in double (3w more, then halved through the square root)
     * and three float roundings (rrms, its product with w', y), four with the unit offset's
     * fl(1 + w); the product of the (1 + delta) factors stays below their sum times 1 + 8u.
     */
    static double rmsOutput(double exact, int m, boolean unitOffset) {
        return Math.abs(exact) * ((unitOffset ? 4 : 3) * U + (m + 12) * W) * (1 + 8 * U) + 2 * TINY;
    }

    /**
     * dx of LayerNorm and GroupNorm, given the float mean and rstd: the kernel's
     * fma(fl(x - mean), B, fma(dy, A, C)) with A = fl(rstd w), B = fl(-rstd^3 Sgx / m),
     * C = fl(-rstd Sg / m), Sg = sum(g), Sgx = sum(g (x - mean)), g = dy w, the sums in double with
     * errors E1 = 2(m + 8 + 2S) w sum|g| and E2 = the same times |x - mean| inside. As for BatchNorm
     * ({@code BackwardProperties}): 3u (|A dy| + |C| + |B (x - mean)|) + u |dx| +
     * rstd (E1 + rstd^2 |x - mean| E2) / m + 3 subnormal roundings; and the reference's dL/dmean
     * keeps the term dvar sum(-2 (x - mean)) / m that the collapsed form drops (it vanishes for
     * the exact mean, not quite for the float one): |dvar| 2 |sum(x - mean)| / m^2 more.
     */
    static double gradient(double a, double dy, double b, double c, double deviation, double dx,
                           double rstd, double e1, double e2, int m, double dvar, double sumDev) {
        return 3 * U * (Math.abs(a * dy) + Math.abs(c) + Math.abs(b * deviation)) + U * Math.abs(dx)
                + rstd * (e1 + rstd * rstd * Math.abs(deviation) * e2) / m
                + Math.abs(dvar) * 2 * Math.abs(sumDev) / ((double) m * m) + 3 * TINY;
    }

    /**
     * RMSNorm's dx = fma(x, B, fl(dy A)) with A = fl(rrms w'), B = fl(-rrms^3 Sgx / m): as
     * {@link #gradient} without C and the mean; with the unit offset w' = fl(1 + w) adds u to the
     * relative error of A and of every g.
     */
    static double rmsGradient(double a, double dy, double b, double x, double dx, double rrms,
                              double e2, double sumAbsGx, int m, boolean unitOffset) {
        double offset = unitOffset ? U * (Math.abs(a * dy) + rrms * rrms * rrms * Math.abs(x) * sumAbsGx / m) : 0;
        return 3 * U * (Math.abs(a * dy) + Math.abs(b * x)) + U * Math.abs(dx)
                + rrms * rrms * rrms * Math.abs(x) * e2 / m + offset + 3 * TINY;
    }

    /**
     * A parameter gradient: a sum over t terms (each a product of up to three doubles, 3w) whose
     * own parts are sums of up to m values in double, rounded once to float:
     * u |exact| + 2(m + t + 24) w sum|terms| + one subnormal rounding.
     */
    static double parameter(double exact, double sumAbs, int m, int t) {
        return U * Math.abs(exact) + 2.0 * (m + t + 24) * W * sumAbs + TINY;
    }
}
