package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Portable kernels: plain Java, no {@code jdk.incubator.vector}. They are the fallback when the
 * Vector API is not available, and they reproduce the vector kernels bit for bit (same virtual
 * lanes, same combination tree, same fused multiply-adds; see {@link BatchNormKernels}).
 */
public final class ScalarKernels implements BatchNormKernels {

    /** Native byte order, any alignment: heap and sliced segments need not be 4-byte aligned. */
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final int LANES = VIRTUAL_LANES;
    /**
     * Each thread's lanes for a run that a call finishes itself, so that a call allocates
     * nothing (these loops call nothing that takes it again).
     */
    private static final ThreadLocal<double[]> RUN = ThreadLocal.withInitial(() -> new double[LANE_SLOTS]);

    @Override
    public String description() {
        return "scalar";
    }

    @Override
    public void channelMoments(MemorySegment x, long base, long stride, int planes, long spatial,
                               double shift, double[] lanes, double[] s1, double[] s2, int c) {
        boolean finish = lanes == null;
        int at = finish ? 0 : c * LANE_SLOTS;
        if (finish) {
            lanes = RUN.get();
            java.util.Arrays.fill(lanes, 0.0);
        }
        long body = spatial - spatial % TAIL_GRANULE;
        int tail = at + 2 * LANES;
        for (int p = 0; p < planes; p++, base += stride) {
            for (long s = 0; s < body; s++) {
                double d = (double) x.get(F32, base + 4 * s) - shift;
                int lane = at + (int) (s % LANES);
                lanes[lane] += d;
                lanes[LANES + lane] = Math.fma(d, d, lanes[LANES + lane]);
            }
            for (long s = body; s < spatial; s++) {
                double d = (double) x.get(F32, base + 4 * s) - shift;
                lanes[tail] += d;
                lanes[tail + 1] = Math.fma(d, d, lanes[tail + 1]);
            }
        }
        if (finish) {
            s1[c] = LaneTree.combine(lanes, 0, lanes[tail]);
            s2[c] = LaneTree.combine(lanes, LANES, lanes[tail + 1]);
        }
    }

    private static void planeNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                       boolean relu, long base, long xShift, long yShift,
                                       long spatial, float mean, float scale, float offset) {
        for (long s = 0; s < spatial; s++) {
            long at = base + 4 * s, out = at + yShift;
            y.set(F32, out, activate(Math.fma(x.get(F32, at + xShift) - mean, scale, offset), residual, out, relu));
        }
    }

    /**
     * The forward's fused part on one value: {@code v + residual} rounded once (when there is a
     * residual), then with {@code relu} {@code v <= 0 ? +0 : v}, which keeps a NaN with its bits
     * and turns -0 into +0 (the vector kernels' compare and blend do the same).
     */
    static float activate(float v, MemorySegment residual, long at, boolean relu) {
        if (residual != null) {
            v += residual.get(F32, at);
        }
        return relu && v <= 0f ? 0f : v;
    }

    /**
     * dx at byte offset {@code at}: g = dy, or 0 where the mask y is {@code <= 0}; dresidual = g;
     * dx = fma(x - mean, b, fma(g, a, c)), or fma(g, a, c) without x.
     */
    static void gradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment dx,
                              MemorySegment dresidual, long at, float mean, float a, float b,
                              float c) {
        gradientInput(x, dy, y, dx, dresidual, at, at, mean, a, b, c);
    }

    /** {@link #gradientInput} with x and dx at byte offset {@code xAt}, dy, y and dresidual at {@code yAt}. */
    static void gradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment dx,
                              MemorySegment dresidual, long xAt, long yAt, float mean, float a,
                              float b, float c) {
        gradientInput(x, dy, y, null, 0, dx, dresidual, xAt, yAt, mean, a, b, c);
    }

    /** The same, also masked by element e's bit of the workspace {@code ws} (null: none). */
    static void gradientInput(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment ws,
                              long e, MemorySegment dx, MemorySegment dresidual, long xAt, long yAt,
                              float mean, float a, float b, float c) {
        float g = dy.get(F32, yAt);
        if (y != null && y.get(F32, yAt) <= 0f || ws != null && !ReluMask.passes(ws, e)) {
            g = 0f;
        }
        if (dresidual != null) {
            dresidual.set(F32, yAt, g);
        }
        float inner = Math.fma(g, a, c);
        dx.set(F32, xAt, x == null ? inner : Math.fma(x.get(F32, xAt) - mean, b, inner));
    }

    @Override
    public void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                MemorySegment ws, boolean relu, int channels, long spatial,
                                long xShift, long yShift, int p0, int p1, float[] mean,
                                float[] scale, float[] offset) {
        for (int p = p0, c = p0 % channels; p < p1; p++) {
            planeNormalize(x, residual, y, relu, 4L * p * spatial, xShift, yShift, spatial, mean[c], scale[c], offset[c]);
            if (++c == channels) {
                c = 0;
            }
        }
        if (ws != null) {
            ReluMask.maskScalar(y, 4L * p0 * spatial + yShift, ws, p0 * spatial, p0 * spatial, p1 * spatial);
        }
    }

    /** dy, or +0 where the workspace's bit e is 0 (no workspace: dy). */
    private static double masked(float dy, MemorySegment ws, long e) {
        return ws == null || ReluMask.passes(ws, e) ? dy : 0.0;
    }

    @Override
    public void channelGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, long base,
                                    long stride, long dyBase, long dyStride, long bit,
                                    long bitStride, int planes, long spatial, double mean,
                                    double[] lanes, double[] sumDy, double[] sumDyXmu, int c) {
        boolean finish = lanes == null;
        int at = finish ? 0 : c * LANE_SLOTS;
        if (finish) {
            lanes = RUN.get();
            java.util.Arrays.fill(lanes, 0.0);
        }
        long body = spatial - spatial % TAIL_GRANULE;
        int tail = at + 2 * LANES;
        for (int p = 0; p < planes; p++, base += stride, dyBase += dyStride, bit += bitStride) {
            for (long s = 0; s < body; s++) {
                double g = masked(dy.get(F32, dyBase + 4 * s), ws, bit + s);
                double d = (double) x.get(F32, base + 4 * s) - mean;
                int lane = at + (int) (s % LANES);
                lanes[lane] += g;
                lanes[LANES + lane] = Math.fma(d, g, lanes[LANES + lane]);
            }
            for (long s = body; s < spatial; s++) {
                double g = masked(dy.get(F32, dyBase + 4 * s), ws, bit + s);
                double d = (double) x.get(F32, base + 4 * s) - mean;
                lanes[tail] += g;
                lanes[tail + 1] = Math.fma(d, g, lanes[tail + 1]);
            }
        }
        if (finish) {
            sumDy[c] = LaneTree.combine(lanes, 0, lanes[tail]);
            sumDyXmu[c] = LaneTree.combine(lanes, LANES, lanes[tail + 1]);
        }
    }

    @Override
    public void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                    MemorySegment ws, MemorySegment dx, MemorySegment dresidual,
                                    int channels, long spatial, long xShift, long yShift, int p0,
                                    int p1, float[] mean, float[] a, float[] b, float[] c) {
        for (int p = p0, ch = p0 % channels; p < p1; p++) {
            for (long at = 4L * p * spatial, end = at + 4 * spatial; at < end; at += 4) {
                gradientInput(x, dy, y, ws, at >>> 2, dx, dresidual, at + xShift, at + yShift, mean[ch], a[ch], b[ch], c[ch]);
            }
            if (++ch == channels) {
                ch = 0;
            }
        }
    }

    @Override
    public void rowMoments(MemorySegment x, int channels, long xRow, long row0, long row1, int c0,
                           int c1, double[] shift, double[] s1, double[] s2, boolean fromMemory) {
        for (int c = c0; c < c1; c++) {
            s1[c] = 0;
            s2[c] = 0;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * xRow;
            for (int c = c0; c < c1; c++) {
                double d = (double) x.get(F32, base + 4L * c) - shift[c];
                s1[c] += d;
                s2[c] = Math.fma(d, d, s2[c]);
            }
        }
    }

    @Override
    public void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                             MemorySegment ws, boolean relu, int channels, long inRow, long outRow,
                             long row0, long row1, int c0, int c1, float[] mean, float[] scale,
                             float[] offset) {
        for (long r = row0; r < row1; r++) {
            long base = r * inRow, outBase = r * outRow;
            for (int c = c0; c < c1; c++) {
                long out = outBase + 4L * c;
                y.set(F32, out, activate(Math.fma(x.get(F32, base + 4L * c) - mean[c], scale[c], offset[c]), residual, out, relu));
            }
            if (ws != null) {
                ReluMask.maskScalar(y, outBase, ws, r * channels, r * channels, (r + 1) * channels);
            }
        }
    }

    @Override
    public void rowGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, int channels,
                                long xRow, long dyRow, long row0, long row1, int c0, int c1,
                                double[] mean, double[] sumDy, double[] sumDyXmu,
                                boolean fromMemory) {
        for (int c = c0; c < c1; c++) {
            sumDy[c] = 0;
            sumDyXmu[c] = 0;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * xRow, dyBase = r * dyRow;
            for (int c = c0; c < c1; c++) {
                double g = masked(dy.get(F32, dyBase + 4L * c), ws, r * channels + c);
                double d = (double) x.get(F32, base + 4L * c) - mean[c];
                sumDy[c] += g;
                sumDyXmu[c] = Math.fma(d, g, sumDyXmu[c]);
            }
        }
    }

    @Override
    public void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                 MemorySegment ws, MemorySegment dx, MemorySegment dresidual,
                                 int channels, long inRow, long outRow, long row0, long row1,
                                 int c0, int c1, float[] mean, float[] a, float[] b, float[] c) {
        for (long r = row0; r < row1; r++) {
            long base = r * inRow, outBase = r * outRow;
            for (int ch = c0; ch < c1; ch++) {
                gradientInput(x, dy, y, ws, r * channels + ch, dx, dresidual, base + 4L * ch, outBase + 4L * ch, mean[ch], a[ch], b[ch], c[ch]);
            }
        }
    }

    @Override
    public void maskedGradient(MemorySegment dy, long dyAt, MemorySegment ws, long bit, long count,
                               MemorySegment g, long gAt) {
        ReluMask.gradientScalar(dy, dyAt, ws, bit, g, gAt, bit, bit + count);
    }

    // ------------------------------------------------------------------------------------ runs

    @Override
    public double runSumSquares(MemorySegment x, MemorySegment residual, long off, int n) {
        double[] lanes = RUN.get();
        java.util.Arrays.fill(lanes, 0.0);
        int body = n - n % TAIL_GRANULE;
        double tail = 0;
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            float v = x.get(F32, o);
            if (residual != null) {
                v += residual.get(F32, o);
                residual.set(F32, o, v);
            }
            double d = v;
            if (i < body) {
                lanes[i % LANES] = Math.fma(d, d, lanes[i % LANES]);
            } else {
                tail = Math.fma(d, d, tail);
            }
        }
        return LaneTree.combine(lanes, 0, tail);
    }

    @Override
    public void runScale(MemorySegment x, MemorySegment y, long off, int n, float rstd,
                         MemorySegment weight) {
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            y.set(F32, o, x.get(F32, o) * (rstd * weight.getAtIndex(F32, i)));
        }
    }

    @Override
    public void runNormalize(MemorySegment x, MemorySegment y, long off, int n, float hi, float lo,
                             float rstd, MemorySegment weight, MemorySegment bias) {
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            float a = rstd * weight.getAtIndex(F32, i);
            y.set(F32, o, Math.fma(x.get(F32, o) - hi, a, Math.fma(-lo, a, bias.getAtIndex(F32, i))));
        }
    }

    @Override
    public void runGradientSums(MemorySegment x, MemorySegment dy, long off, int n, double mean,
                                MemorySegment weight, double[] out) {
        double[] lanes = RUN.get();
        java.util.Arrays.fill(lanes, 0.0);
        int body = n - n % TAIL_GRANULE, tail = 2 * LANES;
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            double g = (double) dy.get(F32, o) * weight.getAtIndex(F32, i);
            double d = (double) x.get(F32, o) - mean;
            int lane = i < body ? i % LANES : tail;
            int second = i < body ? LANES + lane : tail + 1;
            lanes[lane] += g;
            lanes[second] = Math.fma(d, g, lanes[second]);
        }
        out[0] = LaneTree.combine(lanes, 0, lanes[tail]);
        out[1] = LaneTree.combine(lanes, LANES, lanes[tail + 1]);
    }

    @Override
    public void runGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long off,
                                 int n, float mean, float rstd, MemorySegment weight, float b,
                                 float c) {
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            float a = rstd * weight.getAtIndex(F32, i);
            dx.set(F32, o, Math.fma(x.get(F32, o) - mean, b, Math.fma(dy.get(F32, o), a, c)));
        }
    }

    @Override
    public void runParameterGradients(MemorySegment x, MemorySegment dy, long off, int n,
                                      double mean, double rstd, double[] dw, double[] db) {
        for (int i = 0; i < n; i++) {
            long o = off + 4L * i;
            double g = dy.get(F32, o);
            if (dw != null) {
                dw[i] = Math.fma(((double) x.get(F32, o) - mean) * rstd, g, dw[i]);
            }
            if (db != null) {
                db[i] += g;
            }
        }
    }
}
