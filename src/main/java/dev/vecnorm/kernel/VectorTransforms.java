package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The element-wise passes of {@link VectorKernels}: y of the forward calls and dx of backward,
 * with their fused parts (see {@link BatchNormKernels#planesNormalize} and
 * {@link BatchNormKernels#planesGradientInput}). Each loop computes the same fused multiply-adds,
 * the same residual add and the same ReLU as {@link ScalarKernels}, lane by lane, so every loop
 * shape gives the scalar bits and the choice between them is a matter of speed alone.
 *
 * <p>The fused parts are tests of loop-invariant arguments (a residual or not, ReLU or not, a
 * mask or not) written inline in each loop body, so that C2 unswitches them out of the loop
 * and the plain call runs the loop it ran before the fusion; no helper takes a vector (a helper
 * that C2 does not inline boxes its vector arguments, see {@link VectorKernels}). ReLU is a
 * compare and a blend, {@code v <= 0 ? +0 : v}, not {@code max}: NaN stays NaN with its bits
 * and -0 becomes +0, as {@link ScalarKernels#activate} does.
 */
final class VectorTransforms {

    private static final VectorSpecies<Float> FLOATS = VectorKernels.FLOATS;
    private static final int FL = FLOATS.length();
    private static final VectorSpecies<Float> HALF = VectorKernels.HALF;
    private static final int HL = HALF.length();
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final VectorOperators.Comparison LE = VectorOperators.LE;
    /** NHWC transforms over many channels: rows per block of the grouped walk. */
    private static final int GROUP_ROWS = 8;
    /** ... and the most bytes of x a call may span to take that walk (see {@link #grouped}). */
    private static final long GROUPED_MAX_BYTES = 24L * 1024 * 1024;
    private static final int WIDE_ROW_CHANNELS = VectorKernels.WIDE_ROW_CHANNELS;
    /** Planes shorter than one vector: the scalar loops (element-wise, so the same bits). */
    private static final ScalarKernels SCALAR = new ScalarKernels();

    private VectorTransforms() {
    }

    // ------------------------------------------------------------------------------------ NCHW

    /**
     * Planes in memory order, as one flat stream of vectors: a vector that straddles two planes
     * takes the second plane's parameters in its upper lanes (a blend under a mask), so there is
     * no per-plane remainder or scalar tail (a 7x7 plane is 49 floats). Needs planes of at least
     * one vector. Out of place the blend for every vector ({@link #normalizeStream}) is faster;
     * in place, where no store fetches its line first, plain runs with a blend only at plane
     * boundaries ({@link #normalizeRuns}) win from 14x14 planes on (PERFORMANCE.md, transforms).
     * Both give the same bits; y over the residual counts as in place.
     */
    static void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                boolean relu, int channels, long spatial, int p0, int p1,
                                float[] mean, float[] scale, float[] offset) {
        if (spatial < FL) {
            SCALAR.planesNormalize(x, residual, y, relu, channels, spatial, p0, p1, mean, scale, offset);
        } else if (spatial >= 4 * FL && spatial <= Integer.MAX_VALUE && (x.equals(y) || y.equals(residual))) {
            normalizeRuns(x, residual, y, relu, channels, spatial, p0, p1, mean, scale, offset);
        } else {
            normalizeStream(x, residual, y, relu, channels, spatial, p0, p1, mean, scale, offset);
        }
    }

    /**
     * The stream with the parameters blended for every vector. The range ends on a plane
     * boundary, so what is left after the last full vector (fewer than FL floats) belongs to the
     * last plane.
     */
    private static void normalizeStream(MemorySegment x, MemorySegment res, MemorySegment y,
                                        boolean relu, int channels, long spatial, int p0, int p1,
                                        float[] mean, float[] scale, float[] offset) {
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int c = p0 % channels;
        long left = spatial;                       // floats of plane c from o on
        for (; o <= end - 4L * FL; o += 4L * FL) {
            int next = c + 1 == channels ? 0 : c + 1;
            VectorMask<Float> upper = VectorMask.fromLong(FLOATS, -1L << Math.min(left, FL));
            FloatVector m = FloatVector.broadcast(FLOATS, mean[c]).blend(FloatVector.broadcast(FLOATS, mean[next]), upper);
            FloatVector a = FloatVector.broadcast(FLOATS, scale[c]).blend(FloatVector.broadcast(FLOATS, scale[next]), upper);
            FloatVector b = FloatVector.broadcast(FLOATS, offset[c]).blend(FloatVector.broadcast(FLOATS, offset[next]), upper);
            FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(a, b);
            if (res != null) {
                v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
            }
            if (relu) {
                v = v.blend(0f, v.compare(LE, 0f));
            }
            v.intoMemorySegment(y, o, NATIVE);
            boolean crossed = left <= FL;
            left = crossed ? left + spatial - FL : left - FL;
            c = crossed ? next : c;
        }
        for (; o < end; o += 4) {
            y.set(F32, o, ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), res, o, relu));
        }
    }

    /** The stream as runs of whole vectors per plane, a blended vector only where planes meet. */
    private static void normalizeRuns(MemorySegment x, MemorySegment res, MemorySegment y,
                                      boolean relu, int channels, long spatial, int p0, int p1,
                                      float[] mean, float[] scale, float[] offset) {
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int c = p0 % channels;
        long left = spatial;                       // floats of plane c from o on
        FloatVector m = FloatVector.broadcast(FLOATS, mean[c]);
        FloatVector a = FloatVector.broadcast(FLOATS, scale[c]);
        FloatVector b = FloatVector.broadcast(FLOATS, offset[c]);
        while (true) {
            int whole = (int) (left / FL);
            for (int i = 0; i < whole; i++) {
                long at = o + (long) i * (4 * FL);
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, at, NATIVE).sub(m).fma(a, b);
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(FLOATS, res, at, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, at, NATIVE);
            }
            o += (long) whole * (4 * FL);
            left -= (long) whole * FL;
            if (o == end) {
                return;
            }
            if (o + 4 * left == end) {             // the last plane's end: no next plane to blend
                for (; o < end; o += 4) {
                    y.set(F32, o, ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), res, o, relu));
                }
                return;
            }
            int next = c + 1 == channels ? 0 : c + 1;
            FloatVector mn = FloatVector.broadcast(FLOATS, mean[next]);
            FloatVector an = FloatVector.broadcast(FLOATS, scale[next]);
            FloatVector bn = FloatVector.broadcast(FLOATS, offset[next]);
            if (left > 0) {
                VectorMask<Float> upper = VectorMask.fromLong(FLOATS, -1L << left);
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m.blend(mn, upper)).fma(a.blend(an, upper), b.blend(bn, upper));
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, o, NATIVE);
                o += 4L * FL;
                left += spatial - FL;
            } else {
                left = spatial;
            }
            c = next;
            m = mn;
            a = an;
            b = bn;
        }
    }

    /** Planes in memory order, one flat stream as in {@link #planesNormalize}. */
    static void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                    MemorySegment dx, MemorySegment dres, int channels,
                                    long spatial, int p0, int p1, float[] mean, float[] a,
                                    float[] b, float[] c) {
        if (spatial < FL) {
            SCALAR.planesGradientInput(x, dy, y, dx, dres, channels, spatial, p0, p1, mean, a, b, c);
            return;
        }
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int ch = p0 % channels;
        long left = spatial;                       // floats of plane ch from o on
        for (; o <= end - 4L * FL; o += 4L * FL) {
            int next = ch + 1 == channels ? 0 : ch + 1;
            VectorMask<Float> upper = VectorMask.fromLong(FLOATS, -1L << Math.min(left, FL));
            FloatVector m = FloatVector.broadcast(FLOATS, mean[ch]).blend(FloatVector.broadcast(FLOATS, mean[next]), upper);
            FloatVector av = FloatVector.broadcast(FLOATS, a[ch]).blend(FloatVector.broadcast(FLOATS, a[next]), upper);
            FloatVector bv = FloatVector.broadcast(FLOATS, b[ch]).blend(FloatVector.broadcast(FLOATS, b[next]), upper);
            FloatVector cv = FloatVector.broadcast(FLOATS, c[ch]).blend(FloatVector.broadcast(FLOATS, c[next]), upper);
            FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, o, NATIVE);
            if (y != null) {
                g = g.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o, NATIVE).compare(LE, 0f));
            }
            if (dres != null) {
                g.intoMemorySegment(dres, o, NATIVE);
            }
            FloatVector v = g.fma(av, cv);
            if (x != null) {
                v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(bv, v);
            }
            v.intoMemorySegment(dx, o, NATIVE);
            boolean crossed = left <= FL;
            left = crossed ? left + spatial - FL : left - FL;
            ch = crossed ? next : ch;
        }
        for (; o < end; o += 4) {
            ScalarKernels.gradientInput(x, dy, y, dx, dres, o, mean[ch], a[ch], b[ch], c[ch]);
        }
    }

    // ------------------------------------------------------------------------------------ NHWC

    static void rowNormalize(MemorySegment x, MemorySegment res, MemorySegment y, boolean relu,
                             int channels, long row0, long row1, int c0, int c1, float[] mean,
                             float[] scale, float[] offset) {
        boolean whole = c0 == 0 && c1 == channels;
        if (FL == 16 && channels == 64 && whole) {
            // One group over every row: the walk of grouped(), for which a row is one group.
            normalizeGroups(x, res, y, relu, 256, row0, row1, 64, row1 - row0, mean, scale, offset);
            return;
        }
        if (FL == 16 && channels == 128 && whole) {
            normalize128(x, res, y, relu, row0, row1, mean, scale, offset);
            return;
        }
        long rowBytes = 4L * channels;
        if (grouped(channels, c0, c1, row0, row1, x.equals(y) || y.equals(res))) {
            long blocked = row0 + (row1 - row0) / GROUP_ROWS * GROUP_ROWS;
            normalizeGroups(x, res, y, relu, rowBytes, row0, blocked, channels, GROUP_ROWS, mean, scale, offset);
            row0 = blocked;
        } else if (channels >= WIDE_ROW_CHANNELS) {
            long blocked = row0 + (row1 - row0) / 4 * 4;
            normalizeRows4(x, res, y, relu, rowBytes, row0, blocked, c0, c1, mean, scale, offset);
            row0 = blocked;
        }
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        for (long r = row0; r < row1; r++) {
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += FL) {
                long o = base + 4L * c;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, c);
                FloatVector a = FloatVector.fromArray(FLOATS, scale, c);
                FloatVector b = FloatVector.fromArray(FLOATS, offset, c);
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(a, b);
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, o, NATIVE);
            }
            int c = vectorEnd;
            if (c1 - c >= HL) {
                // A half vector for the rest: 24 channels at 512 bits would leave a third scalar.
                long o = base + 4L * c;
                FloatVector v = FloatVector.fromMemorySegment(HALF, x, o, NATIVE).sub(FloatVector.fromArray(HALF, mean, c))
                        .fma(FloatVector.fromArray(HALF, scale, c), FloatVector.fromArray(HALF, offset, c));
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(HALF, res, o, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, o, NATIVE);
                c += HL;
            }
            for (; c < c1; c++) {
                long o = base + 4L * c;
                y.set(F32, o, ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), res, o, relu));
            }
        }
    }

    /**
     * Rows [row0, row1), a multiple of 4 of them, four rows per load of the three parameter
     * vectors: from {@link #WIDE_ROW_CHANNELS} channels the parameters take 12 KiB or more and,
     * loaded for every row, crowd the tensors' lines out of L1. The four rows are loaded before
     * any is stored: rows 4 or 8 KiB apart share their low 12 address bits with the stores, and
     * the core holds such a load back behind the store. (PERFORMANCE.md, transforms.)
     */
    private static void normalizeRows4(MemorySegment x, MemorySegment res, MemorySegment y,
                                       boolean relu, long rowBytes, long row0, long row1, int c0,
                                       int c1, float[] mean, float[] scale, float[] offset) {
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        for (long r = row0; r < row1; r += 4) {
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += FL) {
                long o0 = base + 4L * c, o1 = o0 + rowBytes, o2 = o1 + rowBytes, o3 = o2 + rowBytes;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, c);
                FloatVector a = FloatVector.fromArray(FLOATS, scale, c);
                FloatVector b = FloatVector.fromArray(FLOATS, offset, c);
                FloatVector v0 = FloatVector.fromMemorySegment(FLOATS, x, o0, NATIVE).sub(m).fma(a, b);
                FloatVector v1 = FloatVector.fromMemorySegment(FLOATS, x, o1, NATIVE).sub(m).fma(a, b);
                FloatVector v2 = FloatVector.fromMemorySegment(FLOATS, x, o2, NATIVE).sub(m).fma(a, b);
                FloatVector v3 = FloatVector.fromMemorySegment(FLOATS, x, o3, NATIVE).sub(m).fma(a, b);
                if (res != null) {
                    v0 = v0.add(FloatVector.fromMemorySegment(FLOATS, res, o0, NATIVE));
                    v1 = v1.add(FloatVector.fromMemorySegment(FLOATS, res, o1, NATIVE));
                    v2 = v2.add(FloatVector.fromMemorySegment(FLOATS, res, o2, NATIVE));
                    v3 = v3.add(FloatVector.fromMemorySegment(FLOATS, res, o3, NATIVE));
                }
                if (relu) {
                    v0 = v0.blend(0f, v0.compare(LE, 0f));
                    v1 = v1.blend(0f, v1.compare(LE, 0f));
                    v2 = v2.blend(0f, v2.compare(LE, 0f));
                    v3 = v3.blend(0f, v3.compare(LE, 0f));
                }
                v0.intoMemorySegment(y, o0, NATIVE);
                v1.intoMemorySegment(y, o1, NATIVE);
                v2.intoMemorySegment(y, o2, NATIVE);
                v3.intoMemorySegment(y, o3, NATIVE);
            }
            for (int c = vectorEnd; c < c1; c++) {
                for (long o = base + 4L * c, e = o + 4 * rowBytes; o < e; o += rowBytes) {
                    y.set(F32, o, ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), res, o, relu));
                }
            }
        }
    }

    /** As the 64-channel case of {@link #normalizeGroups} for 128 channels: 24 parameter vectors, a row is 8 vectors. */
    private static void normalize128(MemorySegment x, MemorySegment res, MemorySegment y,
                                     boolean relu, long row0, long row1, float[] mean,
                                     float[] scale, float[] offset) {
        FloatVector m0 = FloatVector.fromArray(FLOATS, mean, 0);
        FloatVector m1 = FloatVector.fromArray(FLOATS, mean, 16);
        FloatVector m2 = FloatVector.fromArray(FLOATS, mean, 32);
        FloatVector m3 = FloatVector.fromArray(FLOATS, mean, 48);
        FloatVector m4 = FloatVector.fromArray(FLOATS, mean, 64);
        FloatVector m5 = FloatVector.fromArray(FLOATS, mean, 80);
        FloatVector m6 = FloatVector.fromArray(FLOATS, mean, 96);
        FloatVector m7 = FloatVector.fromArray(FLOATS, mean, 112);
        FloatVector a0 = FloatVector.fromArray(FLOATS, scale, 0);
        FloatVector a1 = FloatVector.fromArray(FLOATS, scale, 16);
        FloatVector a2 = FloatVector.fromArray(FLOATS, scale, 32);
        FloatVector a3 = FloatVector.fromArray(FLOATS, scale, 48);
        FloatVector a4 = FloatVector.fromArray(FLOATS, scale, 64);
        FloatVector a5 = FloatVector.fromArray(FLOATS, scale, 80);
        FloatVector a6 = FloatVector.fromArray(FLOATS, scale, 96);
        FloatVector a7 = FloatVector.fromArray(FLOATS, scale, 112);
        FloatVector b0 = FloatVector.fromArray(FLOATS, offset, 0);
        FloatVector b1 = FloatVector.fromArray(FLOATS, offset, 16);
        FloatVector b2 = FloatVector.fromArray(FLOATS, offset, 32);
        FloatVector b3 = FloatVector.fromArray(FLOATS, offset, 48);
        FloatVector b4 = FloatVector.fromArray(FLOATS, offset, 64);
        FloatVector b5 = FloatVector.fromArray(FLOATS, offset, 80);
        FloatVector b6 = FloatVector.fromArray(FLOATS, offset, 96);
        FloatVector b7 = FloatVector.fromArray(FLOATS, offset, 112);
        for (long o = row0 * 512, end = row1 * 512; o < end; o += 512) {
            FloatVector v0 = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m0).fma(a0, b0);
            FloatVector v1 = FloatVector.fromMemorySegment(FLOATS, x, o + 64, NATIVE).sub(m1).fma(a1, b1);
            FloatVector v2 = FloatVector.fromMemorySegment(FLOATS, x, o + 128, NATIVE).sub(m2).fma(a2, b2);
            FloatVector v3 = FloatVector.fromMemorySegment(FLOATS, x, o + 192, NATIVE).sub(m3).fma(a3, b3);
            FloatVector v4 = FloatVector.fromMemorySegment(FLOATS, x, o + 256, NATIVE).sub(m4).fma(a4, b4);
            FloatVector v5 = FloatVector.fromMemorySegment(FLOATS, x, o + 320, NATIVE).sub(m5).fma(a5, b5);
            FloatVector v6 = FloatVector.fromMemorySegment(FLOATS, x, o + 384, NATIVE).sub(m6).fma(a6, b6);
            FloatVector v7 = FloatVector.fromMemorySegment(FLOATS, x, o + 448, NATIVE).sub(m7).fma(a7, b7);
            if (res != null) {
                v0 = v0.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
                v1 = v1.add(FloatVector.fromMemorySegment(FLOATS, res, o + 64, NATIVE));
                v2 = v2.add(FloatVector.fromMemorySegment(FLOATS, res, o + 128, NATIVE));
                v3 = v3.add(FloatVector.fromMemorySegment(FLOATS, res, o + 192, NATIVE));
                v4 = v4.add(FloatVector.fromMemorySegment(FLOATS, res, o + 256, NATIVE));
                v5 = v5.add(FloatVector.fromMemorySegment(FLOATS, res, o + 320, NATIVE));
                v6 = v6.add(FloatVector.fromMemorySegment(FLOATS, res, o + 384, NATIVE));
                v7 = v7.add(FloatVector.fromMemorySegment(FLOATS, res, o + 448, NATIVE));
            }
            if (relu) {
                v0 = v0.blend(0f, v0.compare(LE, 0f));
                v1 = v1.blend(0f, v1.compare(LE, 0f));
                v2 = v2.blend(0f, v2.compare(LE, 0f));
                v3 = v3.blend(0f, v3.compare(LE, 0f));
                v4 = v4.blend(0f, v4.compare(LE, 0f));
                v5 = v5.blend(0f, v5.compare(LE, 0f));
                v6 = v6.blend(0f, v6.compare(LE, 0f));
                v7 = v7.blend(0f, v7.compare(LE, 0f));
            }
            v0.intoMemorySegment(y, o, NATIVE);
            v1.intoMemorySegment(y, o + 64, NATIVE);
            v2.intoMemorySegment(y, o + 128, NATIVE);
            v3.intoMemorySegment(y, o + 192, NATIVE);
            v4.intoMemorySegment(y, o + 256, NATIVE);
            v5.intoMemorySegment(y, o + 320, NATIVE);
            v6.intoMemorySegment(y, o + 384, NATIVE);
            v7.intoMemorySegment(y, o + 448, NATIVE);
        }
    }

    /**
     * NHWC transforms over many channels (512 or more, in groups of 64; from {@link
     * #WIDE_ROW_CHANNELS} on only in place, where it beats {@link #normalizeRows4}) in a range
     * the caches can hold: blocks of {@link #GROUP_ROWS} rows, each group of 64 channels keeping
     * its parameters in registers across the block's rows instead of reloading three parameter
     * vectors per data vector. From memory the walk through the block by columns loses, hence
     * the size limit {@link #GROUPED_MAX_BYTES}. (PERFORMANCE.md, transforms.)
     */
    private static boolean grouped(int channels, int c0, int c1, long row0, long row1,
                                   boolean inPlace) {
        return FL == 16 && channels >= 512 && (channels < WIDE_ROW_CHANNELS || inPlace)
                && channels % 64 == 0 && c0 == 0 && c1 == channels
                && (row1 - row0) * 4L * channels <= GROUPED_MAX_BYTES;
    }

    /**
     * Rows [row0, row1) in blocks of {@code blockRows} rows (512 bits; channels a multiple of
     * 64): within a block, each group of 64 channels keeps its 12 parameter vectors in registers
     * across the block's rows, and a row of the group is 4 vectors. 64 channels are one group,
     * walked over all rows as one block; wider rows take blocks of {@link #GROUP_ROWS} (see
     * {@link #grouped}).
     */
    private static void normalizeGroups(MemorySegment x, MemorySegment res, MemorySegment y,
                                        boolean relu, long rowBytes, long row0, long row1,
                                        int channels, long blockRows, float[] mean,
                                        float[] scale, float[] offset) {
        for (long r = row0; r < row1; r += blockRows) {
            long base = r * rowBytes, blockEnd = Math.min(row1, r + blockRows) * rowBytes;
            for (int c = 0; c < channels; c += 64) {
                FloatVector m0 = FloatVector.fromArray(FLOATS, mean, c);
                FloatVector m1 = FloatVector.fromArray(FLOATS, mean, c + 16);
                FloatVector m2 = FloatVector.fromArray(FLOATS, mean, c + 32);
                FloatVector m3 = FloatVector.fromArray(FLOATS, mean, c + 48);
                FloatVector a0 = FloatVector.fromArray(FLOATS, scale, c);
                FloatVector a1 = FloatVector.fromArray(FLOATS, scale, c + 16);
                FloatVector a2 = FloatVector.fromArray(FLOATS, scale, c + 32);
                FloatVector a3 = FloatVector.fromArray(FLOATS, scale, c + 48);
                FloatVector b0 = FloatVector.fromArray(FLOATS, offset, c);
                FloatVector b1 = FloatVector.fromArray(FLOATS, offset, c + 16);
                FloatVector b2 = FloatVector.fromArray(FLOATS, offset, c + 32);
                FloatVector b3 = FloatVector.fromArray(FLOATS, offset, c + 48);
                for (long o = base + 4L * c, end = blockEnd + 4L * c; o < end; o += rowBytes) {
                    FloatVector v0 = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m0).fma(a0, b0);
                    if (res != null) {
                        v0 = v0.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
                    }
                    if (relu) {
                        v0 = v0.blend(0f, v0.compare(LE, 0f));
                    }
                    v0.intoMemorySegment(y, o, NATIVE);
                    FloatVector v1 = FloatVector.fromMemorySegment(FLOATS, x, o + 64, NATIVE).sub(m1).fma(a1, b1);
                    if (res != null) {
                        v1 = v1.add(FloatVector.fromMemorySegment(FLOATS, res, o + 64, NATIVE));
                    }
                    if (relu) {
                        v1 = v1.blend(0f, v1.compare(LE, 0f));
                    }
                    v1.intoMemorySegment(y, o + 64, NATIVE);
                    FloatVector v2 = FloatVector.fromMemorySegment(FLOATS, x, o + 128, NATIVE).sub(m2).fma(a2, b2);
                    if (res != null) {
                        v2 = v2.add(FloatVector.fromMemorySegment(FLOATS, res, o + 128, NATIVE));
                    }
                    if (relu) {
                        v2 = v2.blend(0f, v2.compare(LE, 0f));
                    }
                    v2.intoMemorySegment(y, o + 128, NATIVE);
                    FloatVector v3 = FloatVector.fromMemorySegment(FLOATS, x, o + 192, NATIVE).sub(m3).fma(a3, b3);
                    if (res != null) {
                        v3 = v3.add(FloatVector.fromMemorySegment(FLOATS, res, o + 192, NATIVE));
                    }
                    if (relu) {
                        v3 = v3.blend(0f, v3.compare(LE, 0f));
                    }
                    v3.intoMemorySegment(y, o + 192, NATIVE);
                }
            }
        }
    }

    static void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                 MemorySegment dx, MemorySegment dres, int channels, long row0,
                                 long row1, int c0, int c1, float[] mean, float[] a, float[] b,
                                 float[] c) {
        // Without x (the frozen form) only the general loop: no measured need for the others.
        if (FL == 16 && channels == 64 && c0 == 0 && c1 == 64 && x != null) {
            gradientInput64(x, dy, y, dx, dres, row0, row1, mean, a, b, c);
            return;
        }
        long rowBytes = 4L * channels;
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        if (channels > WIDE_ROW_CHANNELS && x != null) {
            long blocked = row0 + (row1 - row0) / 4 * 4;
            gradientInputRows4(x, dy, y, dx, dres, rowBytes, row0, blocked, c0, c1, mean, a, b, c);
            row0 = blocked;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * rowBytes;
            for (int ch = c0; ch < vectorEnd; ch += FL) {
                long o = base + 4L * ch;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, ch);
                FloatVector av = FloatVector.fromArray(FLOATS, a, ch);
                FloatVector bv = FloatVector.fromArray(FLOATS, b, ch);
                FloatVector cv = FloatVector.fromArray(FLOATS, c, ch);
                FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, o, NATIVE);
                if (y != null) {
                    g = g.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o, NATIVE).compare(LE, 0f));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, o, NATIVE);
                }
                FloatVector v = g.fma(av, cv);
                if (x != null) {
                    v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(bv, v);
                }
                v.intoMemorySegment(dx, o, NATIVE);
            }
            int ch = vectorEnd;
            if (c1 - ch >= HL) {                // a half vector for the rest, as in rowNormalize
                long o = base + 4L * ch;
                FloatVector g = FloatVector.fromMemorySegment(HALF, dy, o, NATIVE);
                if (y != null) {
                    g = g.blend(0f, FloatVector.fromMemorySegment(HALF, y, o, NATIVE).compare(LE, 0f));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, o, NATIVE);
                }
                FloatVector v = g.fma(FloatVector.fromArray(HALF, a, ch), FloatVector.fromArray(HALF, c, ch));
                if (x != null) {
                    v = FloatVector.fromMemorySegment(HALF, x, o, NATIVE).sub(FloatVector.fromArray(HALF, mean, ch))
                            .fma(FloatVector.fromArray(HALF, b, ch), v);
                }
                v.intoMemorySegment(dx, o, NATIVE);
                ch += HL;
            }
            for (; ch < c1; ch++) {
                ScalarKernels.gradientInput(x, dy, y, dx, dres, base + 4L * ch, mean[ch], a[ch], b[ch], c[ch]);
            }
        }
    }

    /**
     * Rows [row0, row1), a multiple of 4 of them, four rows per load of the four parameter
     * vectors: above {@link #WIDE_ROW_CHANNELS} channels the parameters exceed half of L1 and,
     * loaded for every row, stream from L2 beside three tensors' lines. Loads before stores, as
     * in {@link #normalizeRows4}; the mask's rows (y) are loaded with dy's. (PERFORMANCE.md,
     * transforms.)
     */
    private static void gradientInputRows4(MemorySegment x, MemorySegment dy, MemorySegment y,
                                           MemorySegment dx, MemorySegment dres, long rowBytes,
                                           long row0, long row1, int c0, int c1, float[] mean,
                                           float[] a, float[] b, float[] c) {
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        for (long r = row0; r < row1; r += 4) {
            long base = r * rowBytes;
            for (int ch = c0; ch < vectorEnd; ch += FL) {
                long o0 = base + 4L * ch, o1 = o0 + rowBytes, o2 = o1 + rowBytes, o3 = o2 + rowBytes;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, ch);
                FloatVector av = FloatVector.fromArray(FLOATS, a, ch);
                FloatVector bv = FloatVector.fromArray(FLOATS, b, ch);
                FloatVector cv = FloatVector.fromArray(FLOATS, c, ch);
                FloatVector g0 = FloatVector.fromMemorySegment(FLOATS, dy, o0, NATIVE);
                FloatVector g1 = FloatVector.fromMemorySegment(FLOATS, dy, o1, NATIVE);
                FloatVector g2 = FloatVector.fromMemorySegment(FLOATS, dy, o2, NATIVE);
                FloatVector g3 = FloatVector.fromMemorySegment(FLOATS, dy, o3, NATIVE);
                if (y != null) {
                    g0 = g0.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o0, NATIVE).compare(LE, 0f));
                    g1 = g1.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o1, NATIVE).compare(LE, 0f));
                    g2 = g2.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o2, NATIVE).compare(LE, 0f));
                    g3 = g3.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o3, NATIVE).compare(LE, 0f));
                }
                FloatVector v0 = FloatVector.fromMemorySegment(FLOATS, x, o0, NATIVE);
                FloatVector v1 = FloatVector.fromMemorySegment(FLOATS, x, o1, NATIVE);
                FloatVector v2 = FloatVector.fromMemorySegment(FLOATS, x, o2, NATIVE);
                FloatVector v3 = FloatVector.fromMemorySegment(FLOATS, x, o3, NATIVE);
                if (dres != null) {
                    g0.intoMemorySegment(dres, o0, NATIVE);
                    g1.intoMemorySegment(dres, o1, NATIVE);
                    g2.intoMemorySegment(dres, o2, NATIVE);
                    g3.intoMemorySegment(dres, o3, NATIVE);
                }
                v0.sub(m).fma(bv, g0.fma(av, cv)).intoMemorySegment(dx, o0, NATIVE);
                v1.sub(m).fma(bv, g1.fma(av, cv)).intoMemorySegment(dx, o1, NATIVE);
                v2.sub(m).fma(bv, g2.fma(av, cv)).intoMemorySegment(dx, o2, NATIVE);
                v3.sub(m).fma(bv, g3.fma(av, cv)).intoMemorySegment(dx, o3, NATIVE);
            }
            for (int ch = vectorEnd; ch < c1; ch++) {
                for (long o = base + 4L * ch, e = o + 4 * rowBytes; o < e; o += rowBytes) {
                    ScalarKernels.gradientInput(x, dy, y, dx, dres, o, mean[ch], a[ch], b[ch], c[ch]);
                }
            }
        }
    }

    /** As the 64-channel case of {@link #normalizeGroups}: 16 parameter vectors in registers, a row is 4 vectors. */
    private static void gradientInput64(MemorySegment x, MemorySegment dy, MemorySegment y,
                                        MemorySegment dx, MemorySegment dres, long row0,
                                        long row1, float[] mean, float[] a, float[] b, float[] c) {
        FloatVector m0 = FloatVector.fromArray(FLOATS, mean, 0);
        FloatVector m1 = FloatVector.fromArray(FLOATS, mean, 16);
        FloatVector m2 = FloatVector.fromArray(FLOATS, mean, 32);
        FloatVector m3 = FloatVector.fromArray(FLOATS, mean, 48);
        FloatVector a0 = FloatVector.fromArray(FLOATS, a, 0);
        FloatVector a1 = FloatVector.fromArray(FLOATS, a, 16);
        FloatVector a2 = FloatVector.fromArray(FLOATS, a, 32);
        FloatVector a3 = FloatVector.fromArray(FLOATS, a, 48);
        FloatVector b0 = FloatVector.fromArray(FLOATS, b, 0);
        FloatVector b1 = FloatVector.fromArray(FLOATS, b, 16);
        FloatVector b2 = FloatVector.fromArray(FLOATS, b, 32);
        FloatVector b3 = FloatVector.fromArray(FLOATS, b, 48);
        FloatVector c0 = FloatVector.fromArray(FLOATS, c, 0);
        FloatVector c1 = FloatVector.fromArray(FLOATS, c, 16);
        FloatVector c2 = FloatVector.fromArray(FLOATS, c, 32);
        FloatVector c3 = FloatVector.fromArray(FLOATS, c, 48);
        for (long o = row0 * 256, end = row1 * 256; o < end; o += 256) {
            FloatVector g0 = FloatVector.fromMemorySegment(FLOATS, dy, o, NATIVE);
            if (y != null) {
                g0 = g0.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o, NATIVE).compare(LE, 0f));
            }
            if (dres != null) {
                g0.intoMemorySegment(dres, o, NATIVE);
            }
            FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m0).fma(b0, g0.fma(a0, c0)).intoMemorySegment(dx, o, NATIVE);
            FloatVector g1 = FloatVector.fromMemorySegment(FLOATS, dy, o + 64, NATIVE);
            if (y != null) {
                g1 = g1.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o + 64, NATIVE).compare(LE, 0f));
            }
            if (dres != null) {
                g1.intoMemorySegment(dres, o + 64, NATIVE);
            }
            FloatVector.fromMemorySegment(FLOATS, x, o + 64, NATIVE).sub(m1).fma(b1, g1.fma(a1, c1)).intoMemorySegment(dx, o + 64, NATIVE);
            FloatVector g2 = FloatVector.fromMemorySegment(FLOATS, dy, o + 128, NATIVE);
            if (y != null) {
                g2 = g2.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o + 128, NATIVE).compare(LE, 0f));
            }
            if (dres != null) {
                g2.intoMemorySegment(dres, o + 128, NATIVE);
            }
            FloatVector.fromMemorySegment(FLOATS, x, o + 128, NATIVE).sub(m2).fma(b2, g2.fma(a2, c2)).intoMemorySegment(dx, o + 128, NATIVE);
            FloatVector g3 = FloatVector.fromMemorySegment(FLOATS, dy, o + 192, NATIVE);
            if (y != null) {
                g3 = g3.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o + 192, NATIVE).compare(LE, 0f));
            }
            if (dres != null) {
                g3.intoMemorySegment(dres, o + 192, NATIVE);
            }
            FloatVector.fromMemorySegment(FLOATS, x, o + 192, NATIVE).sub(m3).fma(b3, g3.fma(a3, c3)).intoMemorySegment(dx, o + 192, NATIVE);
        }
    }
}
