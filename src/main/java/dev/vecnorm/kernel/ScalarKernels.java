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

    @Override
    public String description() {
        return "scalar";
    }

    @Override
    public void planeMoments(MemorySegment x, long first, long stride, int planes, long spatial,
                             float shift, double[] out) {
        double[] lanes = new double[2 * LANES];          // [0, 32): sum d, [32, 64): sum d^2
        double k = shift;
        long body = spatial - spatial % TAIL_GRANULE;
        double t1 = 0, t2 = 0;
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long s = 0; s < body; s++) {
                double d = (double) x.get(F32, base + 4 * s) - k;
                int lane = (int) (s % LANES);
                lanes[lane] += d;
                lanes[LANES + lane] = Math.fma(d, d, lanes[LANES + lane]);
            }
            for (long s = body; s < spatial; s++) {
                double d = (double) x.get(F32, base + 4 * s) - k;
                t1 += d;
                t2 = Math.fma(d, d, t2);
            }
        }
        out[0] = LaneTree.combine(lanes, 0, t1);
        out[1] = LaneTree.combine(lanes, LANES, t2);
    }

    @Override
    public void planeNormalize(MemorySegment x, MemorySegment y, long first, long stride,
                               int planes, long spatial, float mean, float scale, float offset) {
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long s = 0; s < spatial; s++) {
                long at = base + 4 * s;
                y.set(F32, at, Math.fma(x.get(F32, at) - mean, scale, offset));
            }
        }
    }

    @Override
    public void planeGradientSums(MemorySegment x, MemorySegment dy, long first, long stride,
                                  int planes, long spatial, float mean, double[] out) {
        double[] lanes = new double[2 * LANES];          // [0, 32): sum dy, [32, 64): sum (x-mean) dy
        double m = mean;
        long body = spatial - spatial % TAIL_GRANULE;
        double t1 = 0, t2 = 0;
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long s = 0; s < body; s++) {
                long at = base + 4 * s;
                double g = dy.get(F32, at);
                double d = (double) x.get(F32, at) - m;
                int lane = (int) (s % LANES);
                lanes[lane] += g;
                lanes[LANES + lane] = Math.fma(d, g, lanes[LANES + lane]);
            }
            for (long s = body; s < spatial; s++) {
                long at = base + 4 * s;
                double g = dy.get(F32, at);
                double d = (double) x.get(F32, at) - m;
                t1 += g;
                t2 = Math.fma(d, g, t2);
            }
        }
        out[0] = LaneTree.combine(lanes, 0, t1);
        out[1] = LaneTree.combine(lanes, LANES, t2);
    }

    @Override
    public void planeGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long first,
                                   long stride, int planes, long spatial, float mean, float a,
                                   float b, float c) {
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long s = 0; s < spatial; s++) {
                long at = base + 4 * s;
                float g = dy.get(F32, at);
                dx.set(F32, at, Math.fma(x.get(F32, at) - mean, b, Math.fma(g, a, c)));
            }
        }
    }

    @Override
    public void rowMoments(MemorySegment x, int channels, long row0, long row1, int c0, int c1,
                           double[] shift, double[] s1, double[] s2) {
        for (int c = c0; c < c1; c++) {
            s1[c] = 0;
            s2[c] = 0;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * channels * 4L;
            for (int c = c0; c < c1; c++) {
                double d = (double) x.get(F32, base + 4L * c) - shift[c];
                s1[c] += d;
                s2[c] = Math.fma(d, d, s2[c]);
            }
        }
    }

    @Override
    public void rowNormalize(MemorySegment x, MemorySegment y, int channels, long row0, long row1,
                             int c0, int c1, float[] mean, float[] scale, float[] offset) {
        for (long r = row0; r < row1; r++) {
            long base = r * channels * 4L;
            for (int c = c0; c < c1; c++) {
                long at = base + 4L * c;
                y.set(F32, at, Math.fma(x.get(F32, at) - mean[c], scale[c], offset[c]));
            }
        }
    }

    @Override
    public void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long row0,
                                long row1, int c0, int c1, double[] mean, double[] sumDy,
                                double[] sumDyXmu) {
        for (int c = c0; c < c1; c++) {
            sumDy[c] = 0;
            sumDyXmu[c] = 0;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * channels * 4L;
            for (int c = c0; c < c1; c++) {
                long at = base + 4L * c;
                double g = dy.get(F32, at);
                double d = (double) x.get(F32, at) - mean[c];
                sumDy[c] += g;
                sumDyXmu[c] = Math.fma(d, g, sumDyXmu[c]);
            }
        }
    }

    @Override
    public void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, int channels,
                                 long row0, long row1, int c0, int c1, float[] mean, float[] a,
                                 float[] b, float[] c) {
        for (long r = row0; r < row1; r++) {
            long base = r * channels * 4L;
            for (int ch = c0; ch < c1; ch++) {
                long at = base + 4L * ch;
                float g = dy.get(F32, at);
                dx.set(F32, at, Math.fma(x.get(F32, at) - mean[ch], b[ch], Math.fma(g, a[ch], c[ch])));
            }
        }
    }
}
