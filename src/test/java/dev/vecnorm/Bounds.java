package dev.vecnorm;

/**
 * Error bounds derived from float32 and float64 rounding, for comparing the kernels with
 * {@link Reference}. Notation: u = 2^-24, the unit roundoff of float32 (round to nearest); an
 * operation returns op(a, b) * (1 + delta) with |delta| <= u. w = 2^-53 is the same for double.
 * Results below 2^-126 are subnormal and carry an absolute error of up to 2^-150 instead, so
 * each bound also has a few multiples of that. The derivations are next to each method.
 */
final class Bounds {

    static final double U = 0x1p-24;
    static final double W = 0x1p-53;
    /** Absolute error of one float rounding in the subnormal range. */
    static final double TINY = 0x1p-150;

    private Bounds() {
    }

    /**
     * Absolute error of the kernels' double statistics, as a variance. The kernels sum
     * d = x - K (K = the channel's first value) and d^2 in double in at most n + 8 steps per value
     * (16 lanes, a 4-level lane tree, chunk merges), so |error(S1)| <= (n + 8) w sum|d| and
     * |error(S2)| <= (n + 8) w sum d^2. M2 = S2 - S1^2/n then errs by at most
     * error(S2) + 2 |S1| / n * error(S1) (+ one rounding), and the Chan merges add as much again:
     * hence the factor 2(n + 8).
     */
    static double varianceError(long n, double sumAbsD, double sumD, double sumD2) {
        return 2.0 * (n + 8) * W * (sumD2 + 2 * Math.abs(sumD) * sumAbsD / n) / n;
    }

    /** Absolute error of the kernels' double mean: K + S1 / n with S1 as above. */
    static double meanError(long n, double sumAbsD) {
        return 2.0 * (n + 8) * W * sumAbsD / n;
    }

    /**
     * Training-mode y = gamma (x - mu) / sqrt(var + eps) + beta, which the kernels compute as
     * fma(fl(x - hi), fl(a), fl(beta - lo a)) with hi + lo = m, the kernel's double mean, and
     * a = gamma / sqrt(var + eps). m errs by |m - mu| <= meanErr ({@link #meanError}), so the
     * kernel transforms the deviation x - m, which is off by meanErr: |a| meanErr in y. That term
     * matters where |x - mu| is small against the channel's spread: values up to 1e18 round in
     * double to multiples of 128, so their mean errs by units while x - mu may be 1e7 and y 1e-10.
     * fl(x - hi) errs by u |x - hi| <= u (|x - mu| + u |mu| + meanErr); fl(a) by u |a| plus the
     * relative error of a from the variance error (at most varError / (2 (var + eps)) + 4w); the
     * offset by u |beta| (its lo*a part is below u |a mu| and covered by the u|mu| term); the fma
     * by u |y|, and |y| <= |a (x - m)| + |beta|. With D = |x - mu| + u |mu| + meanErr, summed:
     * |a| meanErr + 3u |a| D + |a| D relA + 2u |beta|, plus 3 subnormal roundings.
     */
    static double trainingOutput(double a, double deviation, double mu, double beta, double relA,
                                 double meanErr) {
        double ad = Math.abs(a) * (Math.abs(deviation) + U * Math.abs(mu) + meanErr);
        return Math.abs(a) * meanErr + 3 * U * ad + ad * relA + 2 * U * Math.abs(beta) + 3 * TINY;
    }

    /**
     * Inference-mode y, computed as fma(fl(x - mean), fl(gamma / sqrt(var + eps)), beta), the
     * scale computed in double (error < 4w) and rounded once: 2u |a (x - mean)| from the two
     * roundings before the fma, u |y| <= u (|a (x - mean)| + |beta|) from the fma.
     */
    static double inferenceOutput(double a, double deviation, double beta) {
        double ad = Math.abs(a * deviation);
        return (3 * U + 8 * W) * ad + U * Math.abs(beta) + 3 * TINY;
    }
}
