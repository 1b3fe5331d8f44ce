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
     * d = x - K (K = the first value of a part, see {@link #partsError}) and d^2 in double in at most n + 8 steps per value
     * (16 lanes, a 4-level lane tree, chunk merges), so |error(S1)| <= (n + 8) w sum|d| and
     * |error(S2)| <= (n + 8) w sum d^2. M2 = S2 - S1^2/n then errs by at most
     * error(S2) + 2 |S1| / n * error(S1) (+ one rounding), and the Chan merges add as much again:
     * hence the factor 2(n + 8).
     */
    static double varianceError(long n, double sumAbsD, double sumD, double sumD2) {
        return 2.0 * (n + 8) * W * (sumD2 + 2 * Math.abs(sumD) * sumAbsD / n) / n;
    }

    /** Error bounds of a double mean and biased variance (see {@link #partsError}). */
    record StatisticsError(double mean, double variance) {
    }

    /**
     * Absolute errors of the kernels' double mean and variance when a channel's values are
     * reduced in parts (chunks, or a caller's split), each about its own first value K_p, and
     * the parts merged in order with Chan's formula; {@code v} holds the channel's values in
     * reduction order and part p is [bounds[p], bounds[p + 1]).
     * <ul>
     *   <li>A part of n values: S1 = sum(x - K) and S2 = sum((x - K)^2) err as in
     *       {@link #varianceError} (n + 8 roundings per value), so its
     *       mean K + S1 / n errs by E = (n + 8) w A / n + 2w |m| (A = sum |x - K|, two more
     *       roundings), its M2 = S2 - S1^2 / n by H = 2 (n + 8) w (Q + 2 |S| A / n).</li>
     *   <li>A merge of (na, ma, M2a) with errors (ea, ha) and a part (nb, mb, M2b) with (E, H):
     *       delta = mb - ma errs by e = (ea + E)(1 + w) + w |delta|; the term
     *       delta^2 na nb / n by (2 |delta| + e) e na nb / n and 4 roundings; the two additions
     *       of M2 by 2w of the (nonnegative) total: h' = ha + H + term error + 2w total. The
     *       mean ma + delta nb / n errs by ea + (e + 2w (|delta| + e)) nb / n + 2w (|ma| + |delta|).</li>
     *   <li>The variance M2 / n: h / n and one rounding.</li>
     * </ul>
     * The exact part means and M2s are taken two-pass in double (their own error, a few w of
     * the values, is far below the bound's terms).
     */
    static StatisticsError partsError(double[] v, long[] bounds) {
        double n = 0, mean = 0, m2 = 0, ea = 0, ha = 0;
        for (int p = 0; p + 1 < bounds.length; p++) {
            int from = (int) bounds[p], to = (int) bounds[p + 1];
            if (from == to) {
                continue;
            }
            double k = v[from], a = 0, sd = 0, q = 0, sum = 0;
            for (int i = from; i < to; i++) {
                double d = v[i] - k;
                a += Math.abs(d);
                sd += d;
                q += d * d;
                sum += v[i];
            }
            double np = to - from, mp = sum / np, m2p = 0;
            for (int i = from; i < to; i++) {
                m2p += (v[i] - mp) * (v[i] - mp);
            }
            double e = (np + 8) * W * a / np + 2 * W * Math.abs(mp);
            double h = np * varianceError((long) np, a, sd, q);
            if (n == 0) {
                n = np;
                mean = mp;
                m2 = m2p;
                ea = e;
                ha = h;
                continue;
            }
            double total = n + np, delta = mp - mean, t = n * np / total;
            double ed = (ea + e) * (1 + W) + W * Math.abs(delta);
            double term = delta * delta * t;
            double termError = (2 * Math.abs(delta) + ed) * ed * t + 4 * W * (Math.abs(delta) + ed) * (Math.abs(delta) + ed) * t;
            double newM2 = m2 + m2p + term;
            ha = ha + h + termError + 2 * W * (newM2 + ha + h + termError);
            ea = ea + (ed + 2 * W * (Math.abs(delta) + ed)) * np / total + 2 * W * (Math.abs(mean) + Math.abs(delta));
            mean += delta * np / total;
            m2 = newM2;
            n = total;
        }
        return new StatisticsError(ea, ha / n + W * m2 / n);
    }

    /**
     * Training-mode y = gamma (x - mu) / sqrt(var + eps) + beta, which the kernels compute as
     * fma(fl(x - hi), fl(a), fl(beta - lo a)) with hi + lo = m, the kernel's double mean, and
     * a = gamma / sqrt(var + eps). m errs by |m - mu| <= meanErr ({@link #partsError}), so the
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
