package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;

/**
 * The inner loops of BatchNorm, one implementation per instruction set ({@link ScalarKernels},
 * {@code VectorKernels}). Internal: callers use {@code dev.vecnorm.BatchNorm}, which validates
 * every argument before it calls in here. Offsets and strides are in BYTES, counts in floats.
 *
 * <p><b>Bitwise contract.</b> Every implementation produces the same bits for the same call:
 * <ul>
 *   <li>An NCHW reduction reduces one channel over a run of its planes (the images of a chunk):
 *       the element at index {@code s < spatial - spatial % 16} of each plane goes to virtual
 *       lane {@code s % 32} of {@link #VIRTUAL_LANES} = 32, the rest (the plane's tail, fewer
 *       than 16) to one tail accumulator; the lanes and the tail start at 0 for the run and add
 *       in plane order, then element order, in double. At the end of the run the lanes are
 *       combined by the tree in {@link LaneTree#combine}, then the tail is added. The lanes
 *       continue across planes, so a small plane pays no tree of its own; they live in an
 *       array between calls, so a run can be walked a plane at a time in memory order or all
 *       at once, with the same bits. (32 lanes give four
 *       independent chains of additions per quantity at 512 bits, which the latency of double
 *       adds needs; a half row of 16 keeps the scalar tail of a 7x7 plane at 1.)</li>
 *   <li>NHWC reductions keep one double accumulator per channel that adds rows in order.</li>
 *   <li>Element-wise transforms use the same fused multiply-adds in every implementation, and
 *       the same fused parts: the residual added to the normalised value and rounded once, then
 *       ReLU as {@code v <= 0 ? +0 : v} (NaN kept with its bits, -0 made +0); backward's mask
 *       {@code g = y <= 0 ? +0 : dy} (a NaN y passes dy, as PyTorch's threshold_backward).</li>
 * </ul>
 * Vector widths are hence free to differ: a 512-bit vector holds 8 of the 32 double lanes, a
 * 128-bit one 2.
 */
public interface BatchNormKernels {

    /** Number of virtual accumulator lanes of an NCHW reduction, whatever the hardware width. */
    int VIRTUAL_LANES = 32;

    /** NCHW reductions vectorise a plane's first {@code spatial - spatial % TAIL_GRANULE} values. */
    int TAIL_GRANULE = 16;

    /** Human-readable name, e.g. {@code "vector 512-bit, FMA"} or {@code "scalar"}. */
    String description();

    // ---- NCHW: reductions over one channel's planes; transforms over planes [p0, p1) in memory
    //      order, plane p being channel p % channels ----

    /**
     * Doubles per channel in a lanes array: the 32 lanes of each of the two quantities, then
     * their two tail accumulators.
     */
    int LANE_SLOTS = 2 * VIRTUAL_LANES + 2;

    /**
     * One channel's shifted sums over {@code planes} planes of {@code spatial} floats at byte
     * offsets {@code base + i * stride}, in the order of the contract above: {@code x - shift}
     * to the first 32 lanes and the first tail, {@code (x - shift)^2} to the other ones. With
     * {@code lanes} null the run starts from zero lanes and ends with the tree:
     * {@code s1[c] = sum(x - shift)}, {@code s2[c] = sum((x - shift)^2)}. Otherwise the run adds
     * to the lanes in {@code lanes[c * LANE_SLOTS, (c + 1) * LANE_SLOTS)}, for a walk that visits
     * a channel's planes in several calls ({@link LaneTree} finishes them), and s1, s2 are unused.
     */
    void channelMoments(MemorySegment x, long base, long stride, int planes, long spatial,
                        double shift, double[] lanes, double[] s1, double[] s2, int c);

    /**
     * {@code y = act(fma(x - mean[c], scale[c], offset[c]) + residual)} over planes [p0, p1):
     * without a residual (null) no add, act the identity or, with {@code relu},
     * {@code v <= 0 ? +0 : v}. {@code y} may be {@code x} or {@code residual}. Plane p's floats
     * are at byte {@code 4 p spatial + xShift} of x and {@code 4 p spatial + yShift} of y and the
     * residual (a view's image in place of the dense one: nonzero shifts only for planes of one
     * image; in place only with equal shifts).
     */
    default void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, boolean relu,
                                 int channels, long spatial, long xShift, long yShift, int p0, int p1,
                                 float[] mean, float[] scale, float[] offset) {
        planesNormalize(x, residual, y, null, relu, channels, spatial, xShift, yShift, p0, p1, mean,
                scale, offset);
    }

    /**
     * The shifted {@code planesNormalize} that, with {@code relu}, also writes the mask of y into
     * the workspace {@code ws} (null: none): bits [4 p0 spatial, 4 p1 spatial) / 4, one per
     * element in dense order (see {@link ReluMask}), words wholly inside the range stored and
     * the partial words at its ends ORed in atomically (the workspace is zero there before).
     */
    void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, MemorySegment ws,
                         boolean relu, int channels, long spatial, long xShift, long yShift, int p0,
                         int p1, float[] mean, float[] scale, float[] offset);

    /** {@link #planesNormalize(MemorySegment, MemorySegment, MemorySegment, boolean, int, long, long, long, int, int, float[], float[], float[])} of dense tensors. */
    default void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, boolean relu,
                                 int channels, long spatial, int p0, int p1, float[] mean,
                                 float[] scale, float[] offset) {
        planesNormalize(x, residual, y, relu, channels, spatial, 0, 0, p0, p1, mean, scale, offset);
    }

    /** {@code y = fma(x - mean[c], scale[c], offset[c])} over planes [p0, p1). */
    default void planesNormalize(MemorySegment x, MemorySegment y, int channels, long spatial,
                                 int p0, int p1, float[] mean, float[] scale, float[] offset) {
        planesNormalize(x, null, y, false, channels, spatial, p0, p1, mean, scale, offset);
    }

    /**
     * The gradient sums' counterpart of {@link #channelMoments}: {@code dy} to the first lanes
     * and tail ({@code sumDy[c]}), {@code (x - mean) * dy} to the second ({@code sumDyXmu[c]});
     * x's planes at {@code base + i * stride}, dy's at {@code dyBase + i * dyStride}.
     */
    default void channelGradientSums(MemorySegment x, MemorySegment dy, long base, long stride,
                                     long dyBase, long dyStride, int planes, long spatial,
                                     double mean, double[] lanes, double[] sumDy,
                                     double[] sumDyXmu, int c) {
        channelGradientSums(x, dy, null, base, stride, dyBase, dyStride, 0, 0, planes, spatial,
                mean, lanes, sumDy, sumDyXmu, c);
    }

    /**
     * {@code channelGradientSums} of the masked gradient {@code g = bit ? dy : +0}, the bits read
     * from the workspace {@code ws} (null: g = dy): plane i's element s is bit
     * {@code bit + i * bitStride + s}.
     */
    void channelGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, long base,
                             long stride, long dyBase, long dyStride, long bit, long bitStride,
                             int planes, long spatial, double mean, double[] lanes, double[] sumDy,
                             double[] sumDyXmu, int c);

    /** {@link #channelGradientSums(MemorySegment, MemorySegment, long, long, long, long, int, long, double, double[], double[], double[], int)} with dy laid out as x. */
    default void channelGradientSums(MemorySegment x, MemorySegment dy, long base, long stride,
                                     int planes, long spatial, double mean, double[] lanes,
                                     double[] sumDy, double[] sumDyXmu, int c) {
        channelGradientSums(x, dy, base, stride, base, stride, planes, spatial, mean, lanes, sumDy,
                sumDyXmu, c);
    }

    /**
     * {@code dx = fma(x - mean[c], b[c], fma(g, a[c], c[c]))} over planes [p0, p1), with
     * {@code g = y <= 0 ? +0 : dy} where the mask {@code y} is given, else {@code g = dy};
     * {@code dresidual = g} where given. Without {@code x} (null: the frozen form)
     * {@code dx = fma(g, a[c], c[c])}. {@code dx} and {@code dresidual} may be {@code dy}. As in
     * {@link #planesNormalize(MemorySegment, MemorySegment, MemorySegment, boolean, int, long, long, long, int, int, float[], float[], float[])},
     * x and dx are shifted by {@code xShift}, dy, y and dresidual by {@code yShift}.
     */
    default void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment dx,
                                     MemorySegment dresidual, int channels, long spatial, long xShift,
                                     long yShift, int p0, int p1, float[] mean, float[] a, float[] b,
                                     float[] c) {
        planesGradientInput(x, dy, y, null, dx, dresidual, channels, spatial, xShift, yShift, p0, p1,
                mean, a, b, c);
    }

    /**
     * The shifted {@code planesGradientInput} with the mask also taken from the workspace
     * {@code ws} (null: none), element e's bit (dense order) deciding {@code g = bit ? g : +0}.
     */
    void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment ws,
                             MemorySegment dx, MemorySegment dresidual, int channels, long spatial,
                             long xShift, long yShift, int p0, int p1, float[] mean, float[] a,
                             float[] b, float[] c);

    /** The dense form of the shifted {@code planesGradientInput}. */
    default void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                     MemorySegment dx, MemorySegment dresidual, int channels,
                                     long spatial, int p0, int p1, float[] mean, float[] a,
                                     float[] b, float[] c) {
        planesGradientInput(x, dy, y, dx, dresidual, channels, spatial, 0, 0, p0, p1, mean, a, b, c);
    }

    /** {@code dx = fma(x - mean[c], b[c], fma(dy, a[c], c[c]))} over planes [p0, p1). */
    default void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx,
                                     int channels, long spatial, int p0, int p1, float[] mean,
                                     float[] a, float[] b, float[] c) {
        planesGradientInput(x, dy, null, dx, null, channels, spatial, p0, p1, mean, a, b, c);
    }

    // ---- NHWC: rows [row0, row1) of 'channels' floats, channels [c0, c1); the strided forms
    //      take the bytes from one row to the next per tensor (a view; dense: 4 * channels) ----

    /**
     * Per-channel shifted sums over rows [row0, row1), each channel adding its rows in order:
     * {@code s1[c] = sum(x - shift[c])}, {@code s2[c] = sum((x - shift[c])^2)}; overwrites
     * entries c0..c1-1. Row r is at byte {@code r * xRow}. {@code fromMemory}: x streams from
     * memory, not from a cache, and the rows are read one at a time (one sequential stream)
     * rather than four per accumulator load (four streams a row apart, which the prefetchers
     * follow less well: PERFORMANCE.md); the same bits either way.
     */
    void rowMoments(MemorySegment x, int channels, long xRow, long row0, long row1, int c0, int c1,
                    double[] shift, double[] s1, double[] s2, boolean fromMemory);

    /** {@code rowMoments} of x from a cache. */
    default void rowMoments(MemorySegment x, int channels, long xRow, long row0, long row1, int c0,
                            int c1, double[] shift, double[] s1, double[] s2) {
        rowMoments(x, channels, xRow, row0, row1, c0, c1, shift, s1, s2, false);
    }

    /** {@link #rowMoments(MemorySegment, int, long, long, long, int, int, double[], double[], double[])} of dense rows. */
    default void rowMoments(MemorySegment x, int channels, long row0, long row1, int c0, int c1,
                            double[] shift, double[] s1, double[] s2) {
        rowMoments(x, channels, 4L * channels, row0, row1, c0, c1, shift, s1, s2);
    }

    /**
     * As {@link #planesNormalize(MemorySegment, MemorySegment, MemorySegment, boolean, int, long, int, int, float[], float[], float[])},
     * over rows [row0, row1), channels [c0, c1): x's rows {@code inRow} bytes apart, y's and the
     * residual's {@code outRow}.
     */
    default void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, boolean relu,
                              int channels, long inRow, long outRow, long row0, long row1, int c0,
                              int c1, float[] mean, float[] scale, float[] offset) {
        rowNormalize(x, residual, y, null, relu, channels, inRow, outRow, row0, row1, c0, c1, mean,
                scale, offset);
    }

    /**
     * The strided {@code rowNormalize} that also writes the mask into {@code ws} (null: none), as
     * {@link #planesNormalize(MemorySegment, MemorySegment, MemorySegment, MemorySegment, boolean, int, long, long, long, int, int, float[], float[], float[])}:
     * bits [row0 channels, row1 channels); with a workspace only whole rows (c0 = 0, c1 = channels).
     */
    void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, MemorySegment ws,
                      boolean relu, int channels, long inRow, long outRow, long row0, long row1,
                      int c0, int c1, float[] mean, float[] scale, float[] offset);

    /** The dense form of the strided {@code rowNormalize}. */
    default void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, boolean relu,
                              int channels, long row0, long row1, int c0, int c1, float[] mean,
                              float[] scale, float[] offset) {
        rowNormalize(x, residual, y, relu, channels, 4L * channels, 4L * channels, row0, row1, c0,
                c1, mean, scale, offset);
    }

    /** {@code y = fma(x - mean[c], scale[c], offset[c])} over rows [row0, row1), channels [c0, c1). */
    default void rowNormalize(MemorySegment x, MemorySegment y, int channels, long row0, long row1,
                              int c0, int c1, float[] mean, float[] scale, float[] offset) {
        rowNormalize(x, null, y, false, channels, row0, row1, c0, c1, mean, scale, offset);
    }

    /**
     * Per-channel gradient sums over rows [row0, row1): {@code sumDy[c] = sum(dy)},
     * {@code sumDyXmu[c] = sum((x - mean[c]) * dy)}; overwrites entries c0..c1-1.
     * {@code fromMemory} as for {@code rowMoments}.
     */
    default void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long xRow,
                                 long dyRow, long row0, long row1, int c0, int c1, double[] mean,
                                 double[] sumDy, double[] sumDyXmu, boolean fromMemory) {
        rowGradientSums(x, dy, null, channels, xRow, dyRow, row0, row1, c0, c1, mean, sumDy,
                sumDyXmu, fromMemory);
    }

    /**
     * {@code rowGradientSums} of the masked gradient {@code g = bit ? dy : +0}, element
     * {@code (r, c)}'s bit {@code r * channels + c} read from the workspace {@code ws} (null:
     * g = dy).
     */
    void rowGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, int channels,
                         long xRow, long dyRow, long row0, long row1, int c0, int c1, double[] mean,
                         double[] sumDy, double[] sumDyXmu, boolean fromMemory);

    /** {@code rowGradientSums} of x and dy from a cache. */
    default void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long xRow,
                                 long dyRow, long row0, long row1, int c0, int c1, double[] mean,
                                 double[] sumDy, double[] sumDyXmu) {
        rowGradientSums(x, dy, channels, xRow, dyRow, row0, row1, c0, c1, mean, sumDy, sumDyXmu, false);
    }

    /** The dense form of the strided {@code rowGradientSums}. */
    default void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long row0, long row1,
                                 int c0, int c1, double[] mean, double[] sumDy, double[] sumDyXmu) {
        rowGradientSums(x, dy, channels, 4L * channels, 4L * channels, row0, row1, c0, c1, mean,
                sumDy, sumDyXmu);
    }

    /**
     * As {@link #planesGradientInput(MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, int, long, int, int, float[], float[], float[], float[])},
     * over rows [row0, row1), channels [c0, c1): x's and dx's rows {@code inRow} bytes apart,
     * dy's, y's and dresidual's {@code outRow}.
     */
    default void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment dx,
                                  MemorySegment dresidual, int channels, long inRow, long outRow,
                                  long row0, long row1, int c0, int c1, float[] mean, float[] a,
                                  float[] b, float[] c) {
        rowGradientInput(x, dy, y, null, dx, dresidual, channels, inRow, outRow, row0, row1, c0, c1,
                mean, a, b, c);
    }

    /** The strided {@code rowGradientInput} with the mask also taken from the workspace {@code ws}. */
    void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment ws,
                          MemorySegment dx, MemorySegment dresidual, int channels, long inRow,
                          long outRow, long row0, long row1, int c0, int c1, float[] mean,
                          float[] a, float[] b, float[] c);

    /** The dense form of the strided {@code rowGradientInput}. */
    default void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment dx,
                                  MemorySegment dresidual, int channels, long row0, long row1,
                                  int c0, int c1, float[] mean, float[] a, float[] b, float[] c) {
        rowGradientInput(x, dy, y, dx, dresidual, channels, 4L * channels, 4L * channels, row0,
                row1, c0, c1, mean, a, b, c);
    }

    /** {@code dx = fma(x - mean[c], b[c], fma(dy, a[c], c[c]))} over rows [row0, row1). */
    default void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, int channels,
                                  long row0, long row1, int c0, int c1, float[] mean, float[] a,
                                  float[] b, float[] c) {
        rowGradientInput(x, dy, null, dx, null, channels, row0, row1, c0, c1, mean, a, b, c);
    }
    /**
     * {@code g = bit ? dy : +0} for {@code count} contiguous floats, dy at byte {@code dyAt}, g at
     * {@code gAt}, the bits from element {@code bit} of the workspace {@code ws} on: the values
     * of {@code y <= 0 ? +0 : dy} where the bits are y's mask. For an NCHW channel block, whose
     * g is then read back from the caches by the plain sums and dx.
     */
    void maskedGradient(MemorySegment dy, long dyAt, MemorySegment ws, long bit, long count,
                        MemorySegment g, long gAt);

    // ---- Runs: n contiguous floats at byte offset off, the same offset in every tensor of a call
    //      (the rows of LayerNorm and RMSNorm; reductions over a run use channelMoments) ----

    /**
     * {@code sum(x^2)} over the run in double: the second quantity of {@link #channelMoments}
     * with shift 0 (one plane, lanes from zero), the same bits without the first quantity. With
     * a {@code residual}, {@code residual[i] = x[i] + residual[i]} (one float addition) is
     * written first and the sum is over those values: RMSNorm's fused residual in one pass.
     */
    double runSumSquares(MemorySegment x, MemorySegment residual, long off, int n);

    /** {@code y[i] = x[i] * (rstd * weight[i])}, two float multiplications. {@code y} may be {@code x}. */
    void runScale(MemorySegment x, MemorySegment y, long off, int n, float rstd, MemorySegment weight);

    /**
     * {@code y[i] = fma(x[i] - hi, a, fma(-lo, a, bias[i]))} with {@code a = rstd * weight[i]}
     * (float multiplication), over the run; {@code weight} and {@code bias} hold n floats from
     * byte 0. {@code y} may be {@code x}.
     */
    void runNormalize(MemorySegment x, MemorySegment y, long off, int n, float hi, float lo,
                      float rstd, MemorySegment weight, MemorySegment bias);

    /**
     * Gradient sums of a run with a weight per position: {@code g = (double) dy * weight[i]},
     * {@code out[0] = sum g}, {@code out[1] = sum ((double) x - mean) * g}, in the lane order of
     * {@link #channelGradientSums} (one plane of n values, lanes starting from zero).
     */
    void runGradientSums(MemorySegment x, MemorySegment dy, long off, int n, double mean,
                         MemorySegment weight, double[] out);

    /**
     * {@code dx[i] = fma(x[i] - mean, b, fma(dy[i], a, c))} with {@code a = rstd * weight[i]}
     * (float multiplication), over the run. {@code dx} may be {@code dy}.
     */
    void runGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long off, int n,
                          float mean, float rstd, MemorySegment weight, float b, float c);

    /**
     * The parameter gradients' terms of a run, position by position in double:
     * {@code dw[i] = fma(((double) x[i] - mean) * rstd, dy[i], dw[i])} and
     * {@code db[i] += dy[i]}; either array may be null (not computed).
     */
    void runParameterGradients(MemorySegment x, MemorySegment dy, long off, int n, double mean,
                               double rstd, double[] dw, double[] db);
}
