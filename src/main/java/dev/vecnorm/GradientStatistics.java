package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import java.util.Objects;

/**
 * Mergeable per-channel gradient sums of BatchNorm's backward, the counterpart of
 * {@link ChannelStatistics}: for each channel {@code sumDy = sum(dy)} and
 * {@code sumDyXmu = sum((x - mean) * dy)}, in double, and the count of values they are over.
 * Synchronized BatchNorm all-reduces exactly these before it computes dx
 * ({@link BatchNorm#backward(GradientStatistics, MemorySegment, MemorySegment,
 * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment)}).
 *
 * <p>{@link #accumulate(BatchNorm, MemorySegment, MemorySegment, MemorySegment, long, long)}
 * reduces a range as parts (its intersections with {@link BatchNorm#statisticsChunks()}, each
 * summed as {@code backward} sums a chunk) and adds them in order; {@link #merge} adds another
 * object's sums after these. Accumulating the whole tensor, or its chunks in order, gives
 * backward's sums bit for bit; other splits agree to the rounding of a double sum. The order of
 * the additions is the caller's: merge by part index ({@link #merged(List)}, a left fold), and
 * every process gets the same bits.
 *
 * <p>As bytes ({@link #writeTo}, {@link #readFrom}): {@link #doubles(int) 1 + 2 * channels}
 * doubles in native byte order, the count, the sums of dy, the sums of (x - mean) dy.
 *
 * <p>Not thread-safe.
 */
public final class GradientStatistics {

    private static final ValueLayout.OfDouble F64 = ValueLayout.JAVA_DOUBLE_UNALIGNED;

    private final double[] sumDy;
    private final double[] sumDyXmu;
    private long count;

    /** Empty sums (zeros, count 0) for {@code channels} channels. */
    public GradientStatistics(int channels) {
        if (channels < 1) {
            throw new IllegalArgumentException("channels: expected >= 1, got " + channels);
        }
        this.sumDy = new double[channels];
        this.sumDyXmu = new double[channels];
    }

    /** The doubles that {@link #writeTo} writes for {@code channels} channels: 1 + 2 * channels. */
    public static long doubles(int channels) {
        return 1 + 2L * channels;
    }

    /** The number of channels. */
    public int channels() {
        return sumDy.length;
    }

    /** The values per channel the sums are over. */
    public long count() {
        return count;
    }

    /** Channel c's sum of dy. */
    public double sumDy(int c) {
        return sumDy[Objects.checkIndex(c, channels())];
    }

    /** Channel c's sum of (x - mean) * dy. */
    public double sumDyXmu(int c) {
        return sumDyXmu[Objects.checkIndex(c, channels())];
    }

    /**
     * Adds the sums of the whole of x and dy, tensors of {@code norm}'s shape, {@code mean} the
     * forward's mean per channel (the floats forwardTraining wrote): with empty sums, those
     * {@code norm.backward} computes, bit for bit. dy is the gradient at BatchNorm's output (for
     * a fused ReLU, already masked). Runs on the calling thread.
     *
     * @return this
     * @throws IllegalArgumentException if a size is wrong or the channels differ
     * @throws NullPointerException     if an argument is null
     */
    public GradientStatistics accumulate(BatchNorm norm, MemorySegment x, MemorySegment dy,
                                         MemorySegment mean) {
        Objects.requireNonNull(norm, "norm: expected a BatchNorm, got null");
        return accumulate(norm, x, dy, mean, 0, norm.statisticsUnits());
    }

    /**
     * Adds the sums of images (NCHW) or rows (NHWC) [from, to) of x and dy, part by part (see
     * the class comment); only that range is read. Runs on the calling thread.
     *
     * @return this
     * @throws IllegalArgumentException if a size is wrong, the channels differ, or the range is
     *                                  not within the images (NCHW) or rows (NHWC)
     * @throws NullPointerException     if an argument is null
     */
    public GradientStatistics accumulate(BatchNorm norm, MemorySegment x, MemorySegment dy,
                                         MemorySegment mean, long from, long to) {
        Objects.requireNonNull(norm, "norm: expected a BatchNorm, got null");
        if (norm.shape().channels() != channels()) {
            throw new IllegalArgumentException("norm: expected a BatchNorm of " + channels()
                    + " channels, got " + norm.shape().channels());
        }
        norm.checkRange(from, to);
        Arguments.start()
                .input("x", x, norm.inView(), "the forward input tensor", false)
                .input("dy", dy, norm.outView(), "the gradient of the output", false)
                .input("mean", mean, channels(), "the forward mean per channel", false)
                .finish(null, null);
        norm.statisticsEngine().accumulateGradient(x, dy, mean, from, to, sumDy, sumDyXmu);
        count += (to - from) * norm.valuesPerUnit();
        return this;
    }

    /**
     * Adds {@code other}'s sums and count after these; {@code other} is unchanged.
     *
     * @return this
     * @throws IllegalArgumentException if the channels differ
     */
    public GradientStatistics merge(GradientStatistics other) {
        Objects.requireNonNull(other, "other: expected GradientStatistics, got null");
        if (other.channels() != channels()) {
            throw new IllegalArgumentException("other: expected sums of " + channels()
                    + " channels, got " + other.channels());
        }
        for (int c = 0; c < sumDy.length; c++) {
            sumDy[c] += other.sumDy[c];
            sumDyXmu[c] += other.sumDyXmu[c];
        }
        count += other.count;
        return this;
    }

    /**
     * New sums: {@code parts} added in list order, ((p0 + p1) + p2) + ....
     *
     * @throws IllegalArgumentException if the list is empty or the channels differ
     */
    public static GradientStatistics merged(List<GradientStatistics> parts) {
        Objects.requireNonNull(parts, "parts: expected a list of GradientStatistics, got null");
        if (parts.isEmpty()) {
            throw new IllegalArgumentException("parts: expected at least one GradientStatistics, got none");
        }
        GradientStatistics result = new GradientStatistics(parts.getFirst().channels());
        for (int i = 0; i < parts.size(); i++) {
            result.merge(Objects.requireNonNull(parts.get(i), "parts: element " + i + " is null"));
        }
        return result;
    }

    /**
     * Writes the count and the sums ({@link #doubles(int)} doubles, native byte order) into
     * {@code out}, which must hold exactly that many.
     *
     * @throws IllegalArgumentException if out has another size or is read-only
     */
    public void writeTo(MemorySegment out) {
        int channels = channels();
        ChannelStatistics.requireWritableDoubles("out", out, doubles(channels));
        out.setAtIndex(F64, 0, count);
        MemorySegment.copy(sumDy, 0, out, F64, 8, channels);
        MemorySegment.copy(sumDyXmu, 0, out, F64, 8 * (1 + (long) channels), channels);
    }

    /**
     * Sums of {@code channels} channels read from what {@link #writeTo} wrote.
     *
     * @throws IllegalArgumentException if {@code in} does not hold exactly
     *                                  {@link #doubles(int) doubles(channels)} doubles, or its
     *                                  count is not a whole number in [0, 2^53]
     */
    public static GradientStatistics readFrom(MemorySegment in, int channels) {
        GradientStatistics s = new GradientStatistics(channels);
        s.count = ChannelStatistics.readCount(in, doubles(channels));
        MemorySegment.copy(in, F64, 8, s.sumDy, 0, channels);
        MemorySegment.copy(in, F64, 8 * (1 + (long) channels), s.sumDyXmu, 0, channels);
        return s;
    }

    double[] sumDyArray() {
        return sumDy;
    }

    double[] sumDyXmuArray() {
        return sumDyXmu;
    }

    @Override
    public String toString() {
        return "GradientStatistics[channels=" + channels() + ", count=" + count + "]";
    }
}
