package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
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
    // Abstract lanewise, compare and blend(Vector, mask), called here, not through FloatVector's final
    // sub, fma, add and blend(float, mask): their call inside the JDK has one type profile for
    // every vector size, which the half-width blocks make bimorphic, and C2 then boxed the
    // full-width loop's vectors (PERFORMANCE.md, "Allocation and C2").
    private static final VectorOperators.Binary SUB = VectorOperators.SUB, ADD = VectorOperators.ADD;
    private static final VectorOperators.Ternary FMA = VectorOperators.FMA;
    private static final FloatVector ZERO = FloatVector.zero(FLOATS);
    private static final VectorSpecies<Integer> INTS = VectorSpecies.of(int.class, FLOATS.vectorShape());
    /**
     * Lane i holds 1 << i. Up to 8 lanes the workspace's bits become a mask by AND and compare:
     * {@code VectorMask.fromLong} cost 7-10 % more of the masked dx pass without AVX-512's mask
     * registers (PERFORMANCE.md, the mask workspace).
     */
    private static final IntVector LANE_BITS = IntVector.fromArray(INTS,
            java.util.stream.IntStream.range(0, 16).map(i -> 1 << i).toArray(), 0);
    /** The lanes of elements [e, e + FL) whose gradient the ReLU cleared (their bits are 0). */
    private static VectorMask<Float> cleared(MemorySegment ws, long e) {
        long bits = ReluMask.bitsAt(ws, e);
        return FL > 8 ? VectorMask.fromLong(FLOATS, ~bits)
                : IntVector.broadcast(INTS, (int) bits).and(LANE_BITS).compare(VectorOperators.EQ, 0).cast(FLOATS);
    }

    /** The lanes whose bits in the low FL bits of {@code bits} are 1. */
    private static VectorMask<Float> passing(long bits) {
        return FL > 8 ? VectorMask.fromLong(FLOATS, bits)
                : IntVector.broadcast(INTS, (int) bits).and(LANE_BITS).compare(VectorOperators.NE, 0).cast(FLOATS);
    }

    /**
     * Whether out of place the NCHW passes take runs too. The stream's blends for every vector
     * won out of place at 512 bits, where stores limit; below, with no mask registers, they cost
     * more than the stores (1x64x56x56 inference 3.3x slower than runs; PERFORMANCE.md, the
     * plane masks).
     */
    private static final boolean RUNS_OUT_OF_PLACE = FL <= 8;

    /** Lane i holds i. */
    private static final IntVector LANE_INDEX = IntVector.fromArray(INTS,
            java.util.stream.IntStream.range(0, 16).toArray(), 0);

    /**
     * Lanes k and up (0 <= k <= FL): a vector's lanes in the next plane. Below 512 bits a
     * compare: there {@code fromLong}, with no mask registers to load, cost the stream about
     * 15 % (PERFORMANCE.md, the plane masks).
     */
    private static VectorMask<Float> upperFrom(long k) {
        return FL > 8 ? VectorMask.fromLong(FLOATS, -1L << k)
                : LANE_INDEX.compare(VectorOperators.GE, (int) k).cast(FLOATS);
    }

    /** The low FL bits: a full-width mask's lanes. */
    private static final long FL_BITS = (1L << FL) - 1, HL_BITS = (1L << HL) - 1;
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
     * one vector. At 512 bits, out of place, the blend for every vector ({@link #normalizeStream})
     * is faster; in place, where no store fetches its line first, and below 512 bits everywhere,
     * plain runs with a blend only at plane boundaries ({@link #normalizeRuns}) win (from 14x14
     * planes on in place at 512 bits; PERFORMANCE.md, transforms and the plane masks).
     * Both give the same bits; y over the residual counts as in place.
     */
    static void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                MemorySegment ws, boolean relu, int channels, long spatial, long xs,
                                long ys, int p0, int p1, float[] mean, float[] scale,
                                float[] offset) {
        if (spatial < FL) {
            SCALAR.planesNormalize(x, residual, y, ws, relu, channels, spatial, xs, ys, p0, p1, mean, scale, offset);
        } else if (ws != null) {
            normalizeStreamMasked(x, residual, y, ws, relu, channels, spatial, xs, ys, p0, p1, mean, scale, offset);
        } else if (spatial >= 4 * FL && spatial <= Integer.MAX_VALUE && (RUNS_OUT_OF_PLACE || x.equals(y) && xs == ys || y.equals(residual))) {
            normalizeRuns(x, residual, y, relu, channels, spatial, xs, ys, p0, p1, mean, scale, offset);
        } else {
            normalizeStream(x, residual, y, relu, channels, spatial, xs, ys, p0, p1, mean, scale, offset);
        }
    }

    /**
     * The stream with the parameters blended for every vector. The range ends on a plane
     * boundary, so what is left after the last full vector (fewer than FL floats) belongs to the
     * last plane.
     */
    private static void normalizeStream(MemorySegment x, MemorySegment res, MemorySegment y,
                                        boolean relu, int channels, long spatial, long xs, long ys,
                                        int p0, int p1, float[] mean, float[] scale, float[] offset) {
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int c = p0 % channels;
        long left = spatial;                       // floats of plane c from o on
        for (; o <= end - 4L * FL; o += 4L * FL) {
            int next = c + 1 == channels ? 0 : c + 1;
            VectorMask<Float> upper = upperFrom(Math.min(left, FL));
            FloatVector m = FloatVector.broadcast(FLOATS, mean[c]).blend(FloatVector.broadcast(FLOATS, mean[next]), upper);
            FloatVector a = FloatVector.broadcast(FLOATS, scale[c]).blend(FloatVector.broadcast(FLOATS, scale[next]), upper);
            FloatVector b = FloatVector.broadcast(FLOATS, offset[c]).blend(FloatVector.broadcast(FLOATS, offset[next]), upper);
            FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o + xs, NATIVE).sub(m).fma(a, b);
            if (res != null) {
                v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o + ys, NATIVE));
            }
            if (relu) {
                v = v.blend(0f, v.compare(LE, 0f));
            }
            v.intoMemorySegment(y, o + ys, NATIVE);
            boolean crossed = left <= FL;
            left = crossed ? left + spatial - FL : left - FL;
            c = crossed ? next : c;
        }
        for (; o < end; o += 4) {
            y.set(F32, o + ys, ScalarKernels.activate(Math.fma(x.get(F32, o + xs) - mean[c], scale[c], offset[c]), res, o + ys, relu));
        }
    }

    /** The stream as runs of whole vectors per plane, a blended vector only where planes meet. */
    private static void normalizeRuns(MemorySegment x, MemorySegment res, MemorySegment y,
                                      boolean relu, int channels, long spatial, long xs, long ys,
                                      int p0, int p1, float[] mean, float[] scale, float[] offset) {
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
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, at + xs, NATIVE).sub(m).fma(a, b);
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(FLOATS, res, at + ys, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, at + ys, NATIVE);
            }
            o += (long) whole * (4 * FL);
            left -= (long) whole * FL;
            if (o == end) {
                return;
            }
            if (o + 4 * left == end) {             // the last plane's end: no next plane to blend
                for (; o < end; o += 4) {
                    y.set(F32, o + ys, ScalarKernels.activate(Math.fma(x.get(F32, o + xs) - mean[c], scale[c], offset[c]), res, o + ys, relu));
                }
                return;
            }
            int next = c + 1 == channels ? 0 : c + 1;
            FloatVector mn = FloatVector.broadcast(FLOATS, mean[next]);
            FloatVector an = FloatVector.broadcast(FLOATS, scale[next]);
            FloatVector bn = FloatVector.broadcast(FLOATS, offset[next]);
            if (left > 0) {
                VectorMask<Float> upper = upperFrom(left);
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o + xs, NATIVE).sub(m.blend(mn, upper)).fma(a.blend(an, upper), b.blend(bn, upper));
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o + ys, NATIVE));
                }
                if (relu) {
                    v = v.blend(0f, v.compare(LE, 0f));
                }
                v.intoMemorySegment(y, o + ys, NATIVE);
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

    /**
     * {@link #normalizeStream} that writes the ReLU's mask into {@code ws} (see
     * {@link ReluMask#add}), in or out of place. A method of its own: with the bit writer inside
     * normalizeStream, the masked stream ran 3x slower than the plain one in most JVMs, and
     * the plain one must not pay for it (PERFORMANCE.md, the mask workspace).
     */
    private static void normalizeStreamMasked(MemorySegment x, MemorySegment res, MemorySegment y,
                                        MemorySegment ws, boolean relu, int channels, long spatial,
                                        long xs, long ys, int p0, int p1, float[] mean,
                                        float[] scale, float[] offset) {
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int c = p0 % channels;
        long left = spatial;                       // floats of plane c from o on
        long e0 = o >>> 2, acc = 0, head = 0;      // the mask's bit writer (see ReluMask.add)
        for (; o <= end - 4L * FL; o += 4L * FL) {
            int next = c + 1 == channels ? 0 : c + 1;
            VectorMask<Float> upper = upperFrom(Math.min(left, FL));
            FloatVector m = FloatVector.broadcast(FLOATS, mean[c]).blend(FloatVector.broadcast(FLOATS, mean[next]), upper);
            FloatVector a = FloatVector.broadcast(FLOATS, scale[c]).blend(FloatVector.broadcast(FLOATS, scale[next]), upper);
            FloatVector b = FloatVector.broadcast(FLOATS, offset[c]).blend(FloatVector.broadcast(FLOATS, offset[next]), upper);
            FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o + xs, NATIVE).sub(m).fma(a, b);
            if (res != null) {
                v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o + ys, NATIVE));
            }
            if (relu) {
                VectorMask<Float> le = v.compare(LE, 0f);
                v = v.blend(0f, le);
                long bits = ~le.toLong() & FL_BITS, el = o >>> 2;
                int s = (int) el & 63;
                acc |= bits << s;
                if (s + FL >= 64) {
                    if (el >>> 6 << 6 >= e0) {
                        ReluMask.store(ws, el >>> 6, acc);
                    } else {
                        head = acc;                   // the range's first word, partial: ORed after the loop
                    }
                    acc = bits >>> (64 - s);
                }
            }
            v.intoMemorySegment(y, o + ys, NATIVE);
            boolean crossed = left <= FL;
            left = crossed ? left + spatial - FL : left - FL;
            c = crossed ? next : c;
        }
        for (; o < end; o += 4) {
            float v = ScalarKernels.activate(Math.fma(x.get(F32, o + xs) - mean[c], scale[c], offset[c]), res, o + ys, relu);
            y.set(F32, o + ys, v);
            acc = ReluMask.add(ws, e0, o >>> 2, v <= 0f ? 0 : 1, 1, acc);
        }
        ReluMask.finish(ws, e0, head, end >>> 2, acc);
    }

    /** Planes in memory order, one flat stream as in {@link #planesNormalize}. */
    static void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                    MemorySegment ws, MemorySegment dx, MemorySegment dres,
                                    int channels, long spatial, long xs, long ys, int p0, int p1,
                                    float[] mean, float[] a, float[] b, float[] c) {
        if (spatial < FL) {
            SCALAR.planesGradientInput(x, dy, y, ws, dx, dres, channels, spatial, xs, ys, p0, p1, mean, a, b, c);
            return;
        }
        // Without x (g alone, or frozen statistics) the runs boxed their parameter vectors.
        if (RUNS_OUT_OF_PLACE && x != null && spatial >= 4 * FL && spatial <= Integer.MAX_VALUE) {
            gradientRuns(x, dy, y, ws, dx, dres, channels, spatial, xs, ys, p0, p1, mean, a, b, c);
            return;
        }
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int ch = p0 % channels;
        long left = spatial;                       // floats of plane ch from o on
        for (; o <= end - 4L * FL; o += 4L * FL) {
            int next = ch + 1 == channels ? 0 : ch + 1;
            VectorMask<Float> upper = upperFrom(Math.min(left, FL));
            FloatVector m = FloatVector.broadcast(FLOATS, mean[ch]).blend(FloatVector.broadcast(FLOATS, mean[next]), upper);
            FloatVector av = FloatVector.broadcast(FLOATS, a[ch]).blend(FloatVector.broadcast(FLOATS, a[next]), upper);
            FloatVector bv = FloatVector.broadcast(FLOATS, b[ch]).blend(FloatVector.broadcast(FLOATS, b[next]), upper);
            FloatVector cv = FloatVector.broadcast(FLOATS, c[ch]).blend(FloatVector.broadcast(FLOATS, c[next]), upper);
            FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, o + ys, NATIVE);
            if (y != null) {
                g = g.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o + ys, NATIVE).compare(LE, 0f));
            }
            if (ws != null) {
                g = g.blend(0f, cleared(ws, o >>> 2));
            }
            if (dres != null) {
                g.intoMemorySegment(dres, o + ys, NATIVE);
            }
            FloatVector v = g.fma(av, cv);
            if (x != null) {
                v = FloatVector.fromMemorySegment(FLOATS, x, o + xs, NATIVE).sub(m).fma(bv, v);
            }
            v.intoMemorySegment(dx, o + xs, NATIVE);
            boolean crossed = left <= FL;
            left = crossed ? left + spatial - FL : left - FL;
            ch = crossed ? next : ch;
        }
        for (; o < end; o += 4) {
            ScalarKernels.gradientInput(x, dy, y, ws, o >>> 2, dx, dres, o + xs, o + ys, mean[ch], a[ch], b[ch], c[ch]);
        }
    }

    /** The dx stream as runs of whole vectors per plane, as {@link #normalizeRuns}; x is not null. */
    private static void gradientRuns(MemorySegment x, MemorySegment dy, MemorySegment y,
                                     MemorySegment ws, MemorySegment dx, MemorySegment dres,
                                     int channels, long spatial, long xs, long ys, int p0, int p1,
                                     float[] mean, float[] a, float[] b, float[] c) {
        long end = 4L * p1 * spatial;
        long o = 4L * p0 * spatial;
        int ch = p0 % channels;
        long left = spatial;                       // floats of plane ch from o on
        while (true) {
            FloatVector m = FloatVector.broadcast(FLOATS, mean[ch]);
            FloatVector av = FloatVector.broadcast(FLOATS, a[ch]);
            FloatVector bv = FloatVector.broadcast(FLOATS, b[ch]);
            FloatVector cv = FloatVector.broadcast(FLOATS, c[ch]);
            int whole = (int) (left / FL);
            for (int i = 0; i < whole; i++) {
                long at = o + (long) i * (4 * FL);
                FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, at + ys, NATIVE);
                if (y != null) {
                    g = g.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, at + ys, NATIVE).compare(LE, 0f));
                }
                if (ws != null) {
                    g = g.blend(0f, cleared(ws, at >>> 2));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, at + ys, NATIVE);
                }
                FloatVector.fromMemorySegment(FLOATS, x, at + xs, NATIVE).sub(m).fma(bv, g.fma(av, cv))
                        .intoMemorySegment(dx, at + xs, NATIVE);
            }
            o += (long) whole * (4 * FL);
            left -= (long) whole * FL;
            if (o == end) {
                return;
            }
            if (o + 4 * left == end) {             // the last plane's end: no next plane to blend
                for (; o < end; o += 4) {
                    ScalarKernels.gradientInput(x, dy, y, ws, o >>> 2, dx, dres, o + xs, o + ys, mean[ch], a[ch], b[ch], c[ch]);
                }
                return;
            }
            int next = ch + 1 == channels ? 0 : ch + 1;
            if (left > 0) {
                FloatVector mn = FloatVector.broadcast(FLOATS, mean[next]);
                FloatVector an = FloatVector.broadcast(FLOATS, a[next]);
                FloatVector bn = FloatVector.broadcast(FLOATS, b[next]);
                FloatVector cn = FloatVector.broadcast(FLOATS, c[next]);
                VectorMask<Float> upper = upperFrom(left);
                FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, o + ys, NATIVE);
                if (y != null) {
                    g = g.blend(0f, FloatVector.fromMemorySegment(FLOATS, y, o + ys, NATIVE).compare(LE, 0f));
                }
                if (ws != null) {
                    g = g.blend(0f, cleared(ws, o >>> 2));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, o + ys, NATIVE);
                }
                FloatVector.fromMemorySegment(FLOATS, x, o + xs, NATIVE).sub(m.blend(mn, upper))
                        .fma(bv.blend(bn, upper), g.fma(av.blend(an, upper), cv.blend(cn, upper)))
                        .intoMemorySegment(dx, o + xs, NATIVE);
                o += 4L * FL;
                left += spatial - FL;
            } else {
                left = spatial;
            }
            ch = next;
        }
    }

    // ------------------------------------------------------------------------------------ NHWC

    static void rowNormalize(MemorySegment x, MemorySegment res, MemorySegment y, MemorySegment ws,
                             boolean relu, int channels, long inRow, long outRow, long row0,
                             long row1, int c0, int c1, float[] mean, float[] scale,
                             float[] offset) {
        long rowBytes = 4L * channels;
        if (ws != null && (c0 != 0 || c1 != channels)) {
            throw new IllegalArgumentException("c0, c1: expected whole rows with a workspace, got " + c0 + ", " + c1);
        }
        if (channels >= WIDE_ROW_CHANNELS && res == null && x.equals(y) && inRow == outRow && ws == null) {
            long blocked = row0 + (row1 - row0) / 4 * 4;
            normalizeRows4(x, y, relu, inRow, row0, blocked, c0, c1, mean, scale, offset);
            row0 = blocked;
        }
        if (c0 == 0 && c1 == channels && channels % FL == 0 && inRow == rowBytes && outRow == rowBytes) {
            rowStream(x, res, y, ws, relu, channels, row0, row1, mean, scale, offset);
            return;
        }
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        long e0 = row0 * channels, acc = 0, head = 0;  // the mask's bit writer (see ReluMask.add)
        for (long r = row0; r < row1; r++) {
            long base = r * inRow, outBase = r * outRow;
            for (int c = c0; c < vectorEnd; c += FL) {
                long o = base + 4L * c, oo = outBase + 4L * c;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, c);
                FloatVector a = FloatVector.fromArray(FLOATS, scale, c);
                FloatVector b = FloatVector.fromArray(FLOATS, offset, c);
                FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).lanewise(SUB, m).lanewise(FMA, a, b);
                if (res != null) {
                    v = v.lanewise(ADD, FloatVector.fromMemorySegment(FLOATS, res, oo, NATIVE));
                }
                if (relu) {
                    VectorMask<Float> le = v.compare(LE, 0f);
                    v = v.blend(ZERO, le);
                    if (ws != null) {
                        long bits = ~le.toLong() & FL_BITS, el = r * channels + c;
                        int s = (int) el & 63;
                        acc |= bits << s;
                        if (s + FL >= 64) {
                            if (el >>> 6 << 6 >= e0) {
                                ReluMask.store(ws, el >>> 6, acc);
                            } else {
                                head = acc;               // the range's first word, partial: ORed after the loop
                            }
                            acc = bits >>> (64 - s);
                        }
                    }
                }
                v.intoMemorySegment(y, oo, NATIVE);
            }
            int c = vectorEnd;
            if (c1 - c >= HL) {
                // A half vector for the rest: 24 channels at 512 bits would leave a third scalar.
                long o = base + 4L * c, oo = outBase + 4L * c;
                FloatVector v = FloatVector.fromMemorySegment(HALF, x, o, NATIVE).sub(FloatVector.fromArray(HALF, mean, c))
                        .fma(FloatVector.fromArray(HALF, scale, c), FloatVector.fromArray(HALF, offset, c));
                if (res != null) {
                    v = v.add(FloatVector.fromMemorySegment(HALF, res, oo, NATIVE));
                }
                if (relu) {
                    VectorMask<Float> le = v.compare(LE, 0f);
                    v = v.blend(0f, le);
                    if (ws != null) {
                        long bits = ~le.toLong() & HL_BITS, el = r * channels + c;
                        int s = (int) el & 63;
                        acc |= bits << s;
                        if (s + HL >= 64) {
                            if (el >>> 6 << 6 >= e0) {
                                ReluMask.store(ws, el >>> 6, acc);
                            } else {
                                head = acc;               // the range's first word, partial: ORed after the loop
                            }
                            acc = bits >>> (64 - s);
                        }
                    }
                }
                v.intoMemorySegment(y, oo, NATIVE);
                c += HL;
            }
            for (; c < c1; c++) {
                long o = base + 4L * c, oo = outBase + 4L * c;
                float v = ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), res, oo, relu);
                y.set(F32, oo, v);
                if (ws != null) {
                    long el = r * channels + c;
                    acc |= (v <= 0f ? 0L : 1L) << el;    // shifts use the low 6 bits: el & 63
                    if ((el & 63) == 63) {
                        if (el >>> 6 << 6 >= e0) {
                            ReluMask.store(ws, el >>> 6, acc);
                        } else {
                            head = acc;
                        }
                        acc = 0;
                    }
                }
            }
        }
        if (ws != null) {
            ReluMask.finish(ws, e0, head, row1 * channels, acc);
        }
    }

    /**
     * Out of place, whole dense rows: one stream of vectors in memory order, the parameters'
     * index wrapping at each row's end (no inner loop of a few trips per row). A method of its
     * own: inside rowNormalize, beside the strided loops, the same loop ran at half speed in
     * most JVMs (PERFORMANCE.md, "the row stream in a method of its own").
     */
    private static void rowStream(MemorySegment x, MemorySegment res, MemorySegment y,
                                  MemorySegment ws, boolean relu, int channels, long row0,
                                  long row1, float[] mean, float[] scale, float[] offset) {
        long rowBytes = 4L * channels;
        int c = 0;
        long e0 = row0 * channels, acc = 0, head = 0;  // the mask's bit writer (see ReluMask.add)
        for (long o = row0 * rowBytes, end = row1 * rowBytes; o < end; o += 4L * FL) {
            FloatVector m = FloatVector.fromArray(FLOATS, mean, c);
            FloatVector a = FloatVector.fromArray(FLOATS, scale, c);
            FloatVector b = FloatVector.fromArray(FLOATS, offset, c);
            FloatVector v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(a, b);
            if (res != null) {
                v = v.add(FloatVector.fromMemorySegment(FLOATS, res, o, NATIVE));
            }
            if (relu) {
                VectorMask<Float> le = v.compare(LE, 0f);
                v = v.blend(0f, le);
                if (ws != null) {
                    long bits = ~le.toLong() & FL_BITS, el = o >>> 2;
                    int s = (int) el & 63;
                    acc |= bits << s;
                    if (s + FL >= 64) {
                        if (el >>> 6 << 6 >= e0) {
                            ReluMask.store(ws, el >>> 6, acc);
                        } else {
                            head = acc;               // the range's first word, partial: ORed after the loop
                        }
                        acc = bits >>> (64 - s);
                    }
                }
            }
            v.intoMemorySegment(y, o, NATIVE);
            c += FL;
            c = c == channels ? 0 : c;
        }
        if (ws != null) {
            ReluMask.finish(ws, e0, head, row1 * channels, acc);
        }
    }

    /**
     * Rows [row0, row1), a multiple of 4 of them, four rows per load of the three parameter
     * vectors, for the in-place transform of wide rows: the stores find their lines cached, and
     * the parameters (12 KiB and more), loaded once per four rows, leave L1 to the tensors'
     * lines. (Out of place one
     * sequential stream of stores beats four streams a row apart: PERFORMANCE.md.) The four
     * rows are loaded before any is stored: rows 4 or 8 KiB apart share their low 12 address
     * bits with the stores, and the core holds such a load back behind the store.
     */
    private static void normalizeRows4(MemorySegment x, MemorySegment y, boolean relu,
                                       long rowBytes, long row0, long row1, int c0, int c1,
                                       float[] mean, float[] scale, float[] offset) {
        // ReLU without a branch: v <= NaN is never true. Vectors merged from two branches in
        // this four-row body were boxed by C2 (AllocationTest).
        float floor = relu ? 0f : Float.NaN;
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
                v0.blend(0f, v0.compare(LE, floor)).intoMemorySegment(y, o0, NATIVE);
                v1.blend(0f, v1.compare(LE, floor)).intoMemorySegment(y, o1, NATIVE);
                v2.blend(0f, v2.compare(LE, floor)).intoMemorySegment(y, o2, NATIVE);
                v3.blend(0f, v3.compare(LE, floor)).intoMemorySegment(y, o3, NATIVE);
            }
            for (int c = vectorEnd; c < c1; c++) {
                for (long o = base + 4L * c, e = o + 4 * rowBytes; o < e; o += rowBytes) {
                    y.set(F32, o, ScalarKernels.activate(Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]), null, o, relu));
                }
            }
        }
    }

    static void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                 MemorySegment ws, MemorySegment dx, MemorySegment dres,
                                 int channels, long inRow, long outRow, long row0, long row1,
                                 int c0, int c1, float[] mean, float[] a, float[] b, float[] c) {
        // Without x (the frozen form) only the general loop: no measured need for the others.
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        long rowBytes = 4L * channels;
        if (channels <= WIDE_ROW_CHANNELS && x != null && c0 == 0 && c1 == channels
                && channels % FL == 0 && inRow == rowBytes && outRow == rowBytes) {
            gradientStream(x, dy, y, ws, dx, dres, channels, row0, row1, mean, a, b, c);
            return;
        }
        if (channels > WIDE_ROW_CHANNELS && x != null && inRow == outRow) {
            long blocked = row0 + (row1 - row0) / 4 * 4;
            gradientInputRows4(x, dy, y, ws, dx, dres, channels, inRow, row0, blocked, c0, c1, mean, a, b, c);
            row0 = blocked;
        }
        for (long r = row0; r < row1; r++) {
            long base = r * inRow, outBase = r * outRow;
            for (int ch = c0; ch < vectorEnd; ch += FL) {
                long o = base + 4L * ch, oo = outBase + 4L * ch;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, ch);
                FloatVector av = FloatVector.fromArray(FLOATS, a, ch);
                FloatVector bv = FloatVector.fromArray(FLOATS, b, ch);
                FloatVector cv = FloatVector.fromArray(FLOATS, c, ch);
                FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, oo, NATIVE);
                if (y != null) {
                    g = g.blend(ZERO, FloatVector.fromMemorySegment(FLOATS, y, oo, NATIVE).compare(LE, 0f));
                }
                if (ws != null) {
                    g = g.blend(ZERO, cleared(ws, r * channels + ch));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, oo, NATIVE);
                }
                FloatVector v = g.lanewise(FMA, av, cv);
                if (x != null) {
                    v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).lanewise(SUB, m).lanewise(FMA, bv, v);
                }
                v.intoMemorySegment(dx, o, NATIVE);
            }
            int ch = vectorEnd;
            // A half vector for the rest, as in rowNormalize; not with the workspace, whose
            // masks on a 64-bit HALF (128-bit kernels) boxed: the scalar loop takes those.
            if (c1 - ch >= HL && ws == null) {
                long o = base + 4L * ch, oo = outBase + 4L * ch;
                FloatVector g = FloatVector.fromMemorySegment(HALF, dy, oo, NATIVE);
                if (y != null) {
                    g = g.blend(0f, FloatVector.fromMemorySegment(HALF, y, oo, NATIVE).compare(LE, 0f));
                }
                if (dres != null) {
                    g.intoMemorySegment(dres, oo, NATIVE);
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
                ScalarKernels.gradientInput(x, dy, y, ws, r * channels + ch, dx, dres, base + 4L * ch, outBase + 4L * ch, mean[ch], a[ch], b[ch], c[ch]);
            }
        }
    }

    /**
     * Dense whole rows as one stream of vectors in memory order, the coefficients' index wrapping
     * at each row's end, as {@link #rowStream} does for y: rows of a few vectors no longer pay an
     * inner loop's entry and exit per row.
     */
    private static void gradientStream(MemorySegment x, MemorySegment dy, MemorySegment y,
                                       MemorySegment ws, MemorySegment dx, MemorySegment dres,
                                       int channels, long row0, long row1, float[] mean, float[] a,
                                       float[] b, float[] c) {
        long rowBytes = 4L * channels;
        int ch = 0;
        for (long o = row0 * rowBytes, end = row1 * rowBytes; o < end; o += 4L * FL) {
            FloatVector m = FloatVector.fromArray(FLOATS, mean, ch);
            FloatVector av = FloatVector.fromArray(FLOATS, a, ch);
            FloatVector bv = FloatVector.fromArray(FLOATS, b, ch);
            FloatVector cv = FloatVector.fromArray(FLOATS, c, ch);
            FloatVector g = FloatVector.fromMemorySegment(FLOATS, dy, o, NATIVE);
            if (y != null) {
                g = g.blend(ZERO, FloatVector.fromMemorySegment(FLOATS, y, o, NATIVE).compare(LE, 0f));
            }
            if (ws != null) {
                g = g.blend(ZERO, cleared(ws, o >>> 2));
            }
            if (dres != null) {
                g.intoMemorySegment(dres, o, NATIVE);
            }
            FloatVector v = g.lanewise(FMA, av, cv);
            v = FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).lanewise(SUB, m).lanewise(FMA, bv, v);
            v.intoMemorySegment(dx, o, NATIVE);
            ch += FL;
            ch = ch == channels ? 0 : ch;
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
                                           MemorySegment ws, MemorySegment dx, MemorySegment dres,
                                           int channels, long rowBytes, long row0, long row1,
                                           int c0, int c1, float[] mean, float[] a, float[] b,
                                           float[] c) {
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
                if (ws != null) {
                    long e = r * channels + ch;
                    g0 = g0.blend(0f, cleared(ws, e));
                    g1 = g1.blend(0f, cleared(ws, e + channels));
                    g2 = g2.blend(0f, cleared(ws, e + 2L * channels));
                    g3 = g3.blend(0f, cleared(ws, e + 3L * channels));
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
                for (int k = 0; k < 4; k++) {
                    long o = base + 4L * ch + k * rowBytes;
                    ScalarKernels.gradientInput(x, dy, y, ws, (r + k) * channels + ch, dx, dres, o, o, mean[ch], a[ch], b[ch], c[ch]);
                }
            }
        }
    }

    /**
     * {@link BatchNormKernels#maskedGradient}: a word of bits per 64 floats, {@code 64 / FL}
     * vectors blended under its lanes; the partial words at the ends in scalar code.
     */
    static void maskedGradient(MemorySegment dy, long dyAt, MemorySegment ws, long bit, long count,
                               MemorySegment g, long gAt) {
        long end = bit + count;
        long first = Math.min(end, (bit + 63) & ~63L);
        ReluMask.gradientScalar(dy, dyAt, ws, bit, g, gAt, bit, first);
        long e = first;
        for (long whole = end & ~63L; e < whole; e += 64) {
            long word = ReluMask.word(ws, e >>> 6), i = 4 * (e - bit);
            for (int k = 0; k < 64; k += FL) {
                ZERO.blend(FloatVector.fromMemorySegment(FLOATS, dy, dyAt + i + 4L * k, NATIVE), passing(word >>> k))
                        .intoMemorySegment(g, gAt + i + 4L * k, NATIVE);
            }
        }
        ReluMask.gradientScalar(dy, dyAt, ws, bit, g, gAt, Math.max(e, first), end);
    }
}
