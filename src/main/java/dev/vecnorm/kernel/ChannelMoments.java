package dev.vecnorm.kernel;

/**
 * Running per-channel count, mean and M2 (sum of squared deviations), in double, merged from
 * partial results with Chan, Golub and LeVeque's parallel formula:
 * <pre>
 *   n = na + nb,  delta = mean_b - mean_a,
 *   mean = mean_a + delta * nb / n,   M2 = M2_a + M2_b + delta^2 * na * nb / n
 * </pre>
 * The partials arrive as shifted sums {@code s1 = sum(x - K)}, {@code s2 = sum((x - K)^2)} of one
 * chunk ({@code mean_b = K + s1 / nb}, {@code M2_b = s2 - s1^2 / nb}). With {@code K} a value of
 * the channel, {@code |mean - K|} is at most a few standard deviations for ordinary data, so the
 * subtraction in {@code M2_b} cancels little; and it is done in double on sums of exact float
 * differences, which keeps the variance accurate to float precision even at |mean| / std = 1e7.
 */
public final class ChannelMoments {

    private final double[] mean;
    private final double[] m2;
    private final long[] count;

    /** Empty moments for {@code channels} channels. */
    public ChannelMoments(int channels) {
        this.mean = new double[channels];
        this.m2 = new double[channels];
        this.count = new long[channels];
    }

    /** Forgets every merge: the next merge of a channel starts it afresh. */
    public void reset() {
        java.util.Arrays.fill(count, 0L);
    }

    /**
     * Merges one chunk of {@code n} values of channel {@code c}, given as shifted sums. The result
     * depends on the order of the merges: callers merge chunks in a fixed order.
     */
    public void mergeShiftedSums(int c, long n, double shift, double s1, double s2) {
        double chunkMean = shift + s1 / n;
        double chunkM2 = Math.max(0.0, s2 - s1 * (s1 / n));
        long before = count[c];
        long total = before + n;
        count[c] = total;
        if (before == 0) {
            mean[c] = chunkMean;
            m2[c] = chunkM2;
            return;
        }
        double delta = chunkMean - mean[c];
        mean[c] += delta * ((double) n / total);
        m2[c] += chunkM2 + delta * delta * ((double) before * n / total);
    }

    /** The mean of channel {@code c}. */
    public double mean(int c) {
        return mean[c];
    }

    /** The biased (population) variance of channel {@code c}: M2 / count. */
    public double variance(int c) {
        return m2[c] / count[c];
    }
}
