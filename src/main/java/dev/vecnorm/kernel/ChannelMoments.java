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
     * merges: callers merge chunks in a fixed order, and always the same channel range together,
     * so the channels of a range have merged the same counts. The weights n / total and
     * before * n / total then depend on the range only and are divided once; the loops have no
     * branch, so that C2 vectorises their divisions (a division per channel was most of a batch-1
     * call's time).
     *
     * @throws IllegalStateException if the channels of the range have merged different counts
     */
    public void mergeShiftedSums(int c0, int c1, long n, double[] shift, double[] s1, double[] s2) {
        if (c0 >= c1) {
            return;
        }
        long before = count[c0];
        for (int c = c0 + 1; c < c1; c++) {
            if (count[c] != before) {
                throw new IllegalStateException("channels " + c0 + " and " + c
                        + " have merged different counts: " + before + " and " + count[c]);
            }
        }
        long total = before + n;
        double values = n;
        if (before == 0) {
            for (int c = c0; c < c1; c++) {
                double perValue = s1[c] / values;
                mean[c] = shift[c] + perValue;
                m2[c] = Math.max(0.0, s2[c] - s1[c] * perValue);
            }
        } else {
            double w1 = values / total, w2 = (double) before * n / total;
            for (int c = c0; c < c1; c++) {
                double perValue = s1[c] / values;
                double chunkM2 = Math.max(0.0, s2[c] - s1[c] * perValue);
                double delta = shift[c] + perValue - mean[c];
                mean[c] += delta * w1;
                m2[c] += chunkM2 + delta * delta * w2;
            }
        }
        java.util.Arrays.fill(count, c0, c1, total);
    }

    /**
     * Merges {@code b} after this one, channel by channel, with Chan's formula and the same
     * arithmetic as {@link #mergeShiftedSums} (a chunk's mean is {@code shift + s1 / n} and its
     * M2 {@code max(0, s2 - s1^2 / n)} there): merging the moments of chunks, each made by one
     * {@code mergeShiftedSums} from empty, in chunk order gives the bits of merging their shifted
     * sums in that order. Merging into empty moments copies {@code b}; an empty {@code b} changes
     * nothing.
     *
     * @throws IllegalStateException if this one's or b's channels have merged different counts
     */
    public void merge(ChannelMoments b) {
        int channels = mean.length;
        long before = count(), n = b.count();
        if (n == 0) {
            return;
        }
        if (before == 0) {
            System.arraycopy(b.mean, 0, mean, 0, channels);
            System.arraycopy(b.m2, 0, m2, 0, channels);
        } else {
            long total = before + n;
            double values = n;
            double w1 = values / total, w2 = (double) before * n / total;
            for (int c = 0; c < channels; c++) {
                double delta = b.mean[c] - mean[c];
                mean[c] += delta * w1;
                m2[c] += b.m2[c] + delta * delta * w2;
            }
        }
        java.util.Arrays.fill(count, before + n);
    }

    /** Makes these moments a copy of {@code b}'s. */
    public void copyFrom(ChannelMoments b) {
        System.arraycopy(b.mean, 0, mean, 0, mean.length);
        System.arraycopy(b.m2, 0, m2, 0, m2.length);
        System.arraycopy(b.count, 0, count, 0, count.length);
    }

    /** Sets every channel's count, mean and M2 (a deserialised partial). */
    public void set(long n, double[] means, double[] m2s) {
        System.arraycopy(means, 0, mean, 0, mean.length);
        System.arraycopy(m2s, 0, m2, 0, m2.length);
        java.util.Arrays.fill(count, n);
    }

    /**
     * The values merged into every channel.
     *
     * @throws IllegalStateException if the channels have merged different counts
     */
    public long count() {
        long n = count.length == 0 ? 0 : count[0];
        for (long k : count) {
            if (k != n) {
                throw new IllegalStateException("channels have merged different counts: " + n + " and " + k);
            }
        }
        return n;
    }

    /** The values merged into channel c. */
    public long count(int c) {
        return count[c];
    }

    /** The number of channels. */
    public int channels() {
        return mean.length;
    }

    /**
     * Channels [c0, c1)'s mean and biased variance, into {@code meanOut} and {@code varianceOut}
     * (the values of {@link #mean} and {@link #variance}, in a loop C2 vectorises).
     */
    public void finish(int c0, int c1, double[] meanOut, double[] varianceOut) {
        for (int c = c0; c < c1; c++) {
            meanOut[c] = mean[c];
            varianceOut[c] = m2[c] / count[c];
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

    /** The sum of squared deviations from the mean of channel {@code c} (M2). */
    public double m2(int c) {
        return m2[c];
    }
}
