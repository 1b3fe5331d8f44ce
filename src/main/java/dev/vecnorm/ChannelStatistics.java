package dev.vecnorm;

import dev.vecnorm.kernel.ChannelMoments;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import java.util.Objects;

/**
 * Mergeable per-channel batch statistics: for each channel the count of values, their mean and
 * M2 (the sum of squared deviations from the mean), in double. What a training engine needs to
 * split BatchNorm's statistics from its normalisation: accumulate them while a producer writes x
 * tile by tile, or per worker of a data-parallel step (synchronized BatchNorm), exchange them as
 * bytes, merge them, and normalise with {@link BatchNorm#forwardTraining(ChannelStatistics,
 * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment)}.
 *
 * <p><b>Parts and merges.</b> {@link #accumulate(BatchNorm, MemorySegment, long, long)} reduces
 * a range of x's images (NCHW) or rows (NHWC) as parts: the range's intersections with the
 * chunks of {@link BatchNorm#statisticsChunks()}, each reduced as {@code forwardTraining} reduces
 * a chunk, and merged after what this object holds. {@link #merge} merges another object's
 * statistics after this one's with Chan, Golub and LeVeque's formula
 * <pre>
 *   n = na + nb,  delta = mean_b - mean_a,
 *   mean = mean_a + delta * (nb / n),   M2 = M2_a + (M2_b + delta^2 * (na * nb / n))
 * </pre>
 * in double, which is the arithmetic forwardTraining merges its chunks with. Hence:
 * <ul>
 *   <li>accumulating the whole tensor, or its chunks one by one in order, in any number of
 *       objects merged in chunk order, gives forwardTraining's statistics bit for bit;</li>
 *   <li>any other split gives them within the accuracy bounds of a single call (each part is
 *       reduced in double about its own first value; the merge is exact in real arithmetic);</li>
 *   <li>the result depends on the order of the merges, never on timing: merge parts by part
 *       index, as {@link #merged(List)} does (a left fold over the list: ((p0 + p1) + p2) + ...),
 *       and every process that merges the same parts gets the same bits.</li>
 * </ul>
 *
 * <p><b>As bytes.</b> {@link #writeTo} and {@link #readFrom} move the statistics through a
 * segment of {@link #doubles(int) 1 + 2 * channels} doubles in native byte order: the count,
 * the means, the M2s. Any all-gather or broadcast that moves bytes can carry them; the copy is
 * exact.
 *
 * <p>Not thread-safe: one object per thread, or merges under the caller's lock.
 */
public final class ChannelStatistics {

    private static final ValueLayout.OfDouble F64 = ValueLayout.JAVA_DOUBLE_UNALIGNED;

    private final ChannelMoments moments;

    /** Empty statistics (count 0) for {@code channels} channels. */
    public ChannelStatistics(int channels) {
        if (channels < 1) {
            throw new IllegalArgumentException("channels: expected >= 1, got " + channels);
        }
        this.moments = new ChannelMoments(channels);
    }

    /** The doubles that {@link #writeTo} writes for {@code channels} channels: 1 + 2 * channels. */
    public static long doubles(int channels) {
        return 1 + 2L * channels;
    }

    /** The number of channels. */
    public int channels() {
        return moments.channels();
    }

    /** The values per channel merged so far (the same for every channel). */
    public long count() {
        return moments.count();
    }

    /** Channel c's mean, in double (NaN when empty). */
    public double mean(int c) {
        Objects.checkIndex(c, channels());
        return moments.count(c) == 0 ? Double.NaN : moments.mean(c);
    }

    /** Channel c's biased variance M2 / count, in double (NaN when empty). */
    public double variance(int c) {
        Objects.checkIndex(c, channels());
        return moments.variance(c);
    }

    /** Channel c's M2, the sum of squared deviations from the mean, in double. */
    public double m2(int c) {
        Objects.checkIndex(c, channels());
        return moments.m2(c);
    }

    /**
     * Merges the statistics of the whole of {@code x}, a tensor of {@code norm}'s shape, after
     * these: with empty statistics, the mean and variance {@code norm.forwardTraining} computes,
     * bit for bit. Runs on the calling thread.
     *
     * @return this
     * @throws IllegalArgumentException if x has the wrong size or the channels differ
     * @throws NullPointerException     if norm or x is null
     */
    public ChannelStatistics accumulate(BatchNorm norm, MemorySegment x) {
        Objects.requireNonNull(norm, "norm: expected a BatchNorm, got null");
        return accumulate(norm, x, 0, norm.statisticsUnits());
    }

    /**
     * Merges the statistics of images (NCHW) or rows (NHWC) [from, to) of {@code x}, a tensor of
     * {@code norm}'s shape, after these, part by part (see the class comment); only that range
     * of x is read. A producer that writes x tile by tile can call this on each tile while it is
     * in cache. Runs on the calling thread.
     *
     * @return this
     * @throws IllegalArgumentException if x has the wrong size, the channels differ, or not
     *                                  {@code 0 <= from <= to <=} the images (NCHW) or rows
     *                                  (N * H * W, NHWC)
     * @throws NullPointerException     if norm or x is null
     */
    public ChannelStatistics accumulate(BatchNorm norm, MemorySegment x, long from, long to) {
        Objects.requireNonNull(norm, "norm: expected a BatchNorm, got null");
        requireChannels(norm);
        norm.checkRange(from, to);
        Arguments.start().input("x", x, norm.inView(), "the input tensor", false)
                .finish(null, null);
        norm.statisticsEngine().accumulate(x, from, to, moments);
        return this;
    }

    /**
     * Merges {@code other}'s statistics after these (Chan's formula, see the class comment);
     * {@code other} is unchanged.
     *
     * @return this
     * @throws IllegalArgumentException if the channels differ
     */
    public ChannelStatistics merge(ChannelStatistics other) {
        Objects.requireNonNull(other, "other: expected ChannelStatistics, got null");
        if (other.channels() != channels()) {
            throw new IllegalArgumentException("other: expected statistics of " + channels()
                    + " channels, got " + other.channels());
        }
        moments.merge(other.moments);
        return this;
    }

    /**
     * New statistics: {@code parts} merged in list order, ((p0 + p1) + p2) + ..., the fixed order
     * in which to merge parts by their index (a worker's rank, a partition's index).
     *
     * @throws IllegalArgumentException if the list is empty or the channels differ
     */
    public static ChannelStatistics merged(List<ChannelStatistics> parts) {
        Objects.requireNonNull(parts, "parts: expected a list of ChannelStatistics, got null");
        if (parts.isEmpty()) {
            throw new IllegalArgumentException("parts: expected at least one ChannelStatistics, got none");
        }
        ChannelStatistics result = new ChannelStatistics(parts.getFirst().channels());
        for (int i = 0; i < parts.size(); i++) {
            ChannelStatistics p = Objects.requireNonNull(parts.get(i), "parts: element " + i + " is null");
            result.merge(p);
        }
        return result;
    }

    /** A copy of these statistics. */
    public ChannelStatistics copy() {
        ChannelStatistics c = new ChannelStatistics(channels());
        c.moments.copyFrom(moments);
        return c;
    }

    /**
     * Writes the count, the means and the M2s ({@link #doubles(int)} doubles, native byte order)
     * into {@code out}, which must hold exactly that many.
     *
     * @throws IllegalArgumentException if out has another size or is read-only
     */
    public void writeTo(MemorySegment out) {
        int channels = channels();
        requireWritableDoubles("out", out, doubles(channels));
        out.setAtIndex(F64, 0, count());
        for (int c = 0; c < channels; c++) {
            out.setAtIndex(F64, 1 + c, moments.mean(c));
            out.setAtIndex(F64, 1 + channels + c, moments.m2(c));
        }
    }

    /**
     * Statistics of {@code channels} channels read from what {@link #writeTo} wrote.
     *
     * @throws IllegalArgumentException if {@code in} does not hold exactly
     *                                  {@link #doubles(int) doubles(channels)} doubles, or its
     *                                  count is not a whole number in [0, 2^53]
     */
    public static ChannelStatistics readFrom(MemorySegment in, int channels) {
        ChannelStatistics s = new ChannelStatistics(channels);
        long count = readCount(in, doubles(channels));
        double[] mean = new double[channels], m2 = new double[channels];
        MemorySegment.copy(in, F64, 8, mean, 0, channels);
        MemorySegment.copy(in, F64, 8 * (1 + (long) channels), m2, 0, channels);
        s.moments.set(count, mean, m2);
        return s;
    }

    /**
     * Writes the statistics as {@code forwardTraining} writes its own: each channel's mean and
     * biased variance rounded once to float.
     *
     * @throws IllegalArgumentException if a segment does not hold exactly {@link #channels()}
     *                                  floats, is read-only or they overlap, or the count is 0
     * @throws NullPointerException     if either is null
     */
    public void finish(MemorySegment mean, MemorySegment variance) {
        int channels = channels();
        if (count() == 0) {
            throw new IllegalArgumentException("this: expected statistics of at least one value, got none");
        }
        Arguments.start()
                .output("mean", mean, channels, "one mean per channel", false)
                .output("variance", variance, channels, "one variance per channel", false)
                .finish(null, null);
        for (int c = 0; c < channels; c++) {
            mean.setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, c, (float) moments.mean(c));
            variance.setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, c, (float) moments.variance(c));
        }
    }

    /** The moments, for BatchNorm. */
    ChannelMoments moments() {
        return moments;
    }

    private void requireChannels(BatchNorm norm) {
        if (norm.shape().channels() != channels()) {
            throw new IllegalArgumentException("norm: expected a BatchNorm of " + channels()
                    + " channels, got " + norm.shape().channels());
        }
    }

    /**
     * The count that {@link #writeTo} (or {@link GradientStatistics#writeTo}) put first in
     * {@code in}, a segment of exactly {@code doubles} doubles.
     *
     * @throws IllegalArgumentException if the size is wrong or the count is not a whole number
     *                                  in [0, 2^53]
     */
    static long readCount(MemorySegment in, long doubles) {
        requireDoubles("in", in, doubles);
        double count = in.getAtIndex(F64, 0);
        if (!(count >= 0 && count <= 0x1p53 && count == Math.rint(count))) {
            throw new IllegalArgumentException("in: expected a count that is a whole number in"
                    + " [0, 2^53] first, got " + count);
        }
        return (long) count;
    }

    /** {@link #requireDoubles}, and writable. */
    static void requireWritableDoubles(String name, MemorySegment s, long doubles) {
        requireDoubles(name, s, doubles);
        if (s.isReadOnly()) {
            throw new IllegalArgumentException(name + ": expected a writable segment, got a read-only one");
        }
    }

    static void requireDoubles(String name, MemorySegment s, long doubles) {
        Objects.requireNonNull(s, name + ": expected a segment of " + doubles + " doubles, got null");
        if (!s.scope().isAlive()) {
            throw new IllegalArgumentException(name + ": expected a live segment, got one whose arena is closed");
        }
        if (s.byteSize() != 8 * doubles) {
            throw new IllegalArgumentException(name + ": expected " + 8 * doubles + " bytes ("
                    + doubles + " doubles), got " + s.byteSize() + " bytes");
        }
    }

    @Override
    public String toString() {
        return "ChannelStatistics[channels=" + channels() + ", count=" + count() + "]";
    }
}
