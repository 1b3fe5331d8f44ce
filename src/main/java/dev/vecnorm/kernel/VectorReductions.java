package dev.vecnorm.kernel;

import static dev.vecnorm.kernel.BatchNormKernels.TAIL_GRANULE;
import static dev.vecnorm.kernel.BatchNormKernels.VIRTUAL_LANES;
import static dev.vecnorm.kernel.VectorKernels.DL;
import static dev.vecnorm.kernel.VectorKernels.DOUBLES;
import static dev.vecnorm.kernel.VectorKernels.HALF;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.LongVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

/**
 * The NCHW reductions of {@link VectorKernels}: one channel over a run of its planes, the 32
 * virtual lanes of {@link BatchNormKernels} in registers for the whole run, then combined by the
 * lane tree or stored back into their array. At 512 bits the lanes are 4 registers per quantity, at 256 bits
 * 8 (C2 folds the width tests, so each width compiles to its own straight loop); other widths
 * (128 bits, for tests) update the array directly.
 *
 * <p>The float-to-double widening is written out at every load instead of in a helper: in these
 * register-heavy loops C2 has refused to inline such a helper ("callee uses too much stack"), and
 * a vector passed to a method that is not inlined is boxed.
 */
final class VectorReductions {

    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final VectorOperators.Conversion<Float, Double> F2D = VectorOperators.F2D;
    /** 32 floats: one row of the virtual lanes. */
    private static final long ROW_BYTES = 4L * VIRTUAL_LANES;
    /** Bytes of floats per double register. */
    private static final long STEP = 4L * DL;
    private static final int LANE_SLOTS = BatchNormKernels.LANE_SLOTS;
    /** Lane i gets lane i + DL/2 (then DL/4, DL/8): the in-register levels of {@link LaneTree}. */
    private static final VectorShuffle<Double> HALF_UP = VectorShuffle.iota(DOUBLES, DL / 2, 1, true);
    private static final VectorShuffle<Double> QUARTER_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 4), 1, true);
    private static final VectorShuffle<Double> EIGHTH_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 8), 1, true);
    /** Zero lanes: where a run that the call finishes starts. Never written. */
    private static final double[] ZEROS = new double[LANE_SLOTS];
    /** Each thread's lanes for a run that an any-width call finishes itself. */
    private static final ThreadLocal<double[]> RUN = ThreadLocal.withInitial(() -> new double[LANE_SLOTS]);

    private static final VectorSpecies<Long> LONGS = VectorSpecies.of(long.class, DOUBLES.vectorShape());
    /**
     * Up to four lanes: entry k (DL longs) keeps lane i where bit i of k is set, ANDed into the
     * doubles' bits. {@code VectorMask.fromLong} boxed on 128-bit doubles (every call allocated)
     * and, without AVX-512's mask registers, doubled the 256-bit masked sums' time.
     */
    private static final long[] KEEP = keepTable();
    private static final int KEEP_BITS = (1 << Math.min(DL, 4)) - 1;

    private static long[] keepTable() {
        int lanes = Math.min(DL, 4);
        long[] t = new long[(1 << lanes) * lanes];
        for (int k = 0; k < 1 << lanes; k++) {
            for (int i = 0; i < lanes; i++) {
                t[k * lanes + i] = (k >>> i & 1) != 0 ? -1L : 0L;
            }
        }
        return t;
    }

    private VectorReductions() {
    }

    /** {@link BatchNormKernels#channelMoments}. */
    static void channelMoments(MemorySegment x, long base, long stride, int planes, long spatial,
                               double shift, double[] lanes, double[] s1, double[] s2, int c) {
        if (DL != 8 && DL != 4) {
            channelMomentsAnyWidth(x, base, stride, planes, spatial, shift, lanes, s1, s2, c);
            return;
        }
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long bodyBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        long planeBytes = 4 * spatial;
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        // A run that starts from zero lanes ends with the tree; one that continues lanes from
        // the array stores them back (see BatchNormKernels.channelMoments). The lanes are loaded
        // either way (zeros from ZEROS), so that no vector is merged from two branches, which C2
        // would box. At 512 bits the 32 lanes are a0..a3; at 256 bits a4..a7 hold lanes 16..31
        // (C2 folds the width tests).
        boolean finish = lanes == null;
        double[] from = finish ? ZEROS : lanes;
        int at = finish ? 0 : c * LANE_SLOTS, qt = at + VIRTUAL_LANES, tail = at + 2 * VIRTUAL_LANES;
        DoubleVector a0 = DoubleVector.fromArray(DOUBLES, from, at);
        DoubleVector a1 = DoubleVector.fromArray(DOUBLES, from, at + DL);
        DoubleVector a2 = DoubleVector.fromArray(DOUBLES, from, at + 2 * DL);
        DoubleVector a3 = DoubleVector.fromArray(DOUBLES, from, at + 3 * DL);
        DoubleVector q0 = DoubleVector.fromArray(DOUBLES, from, qt);
        DoubleVector q1 = DoubleVector.fromArray(DOUBLES, from, qt + DL);
        DoubleVector q2 = DoubleVector.fromArray(DOUBLES, from, qt + 2 * DL);
        DoubleVector q3 = DoubleVector.fromArray(DOUBLES, from, qt + 3 * DL);
        DoubleVector a4 = DoubleVector.fromArray(DOUBLES, from, at + (DL == 4 ? 4 * DL : 0));
        DoubleVector a5 = DoubleVector.fromArray(DOUBLES, from, at + (DL == 4 ? 5 * DL : 0));
        DoubleVector a6 = DoubleVector.fromArray(DOUBLES, from, at + (DL == 4 ? 6 * DL : 0));
        DoubleVector a7 = DoubleVector.fromArray(DOUBLES, from, at + (DL == 4 ? 7 * DL : 0));
        DoubleVector q4 = DoubleVector.fromArray(DOUBLES, from, qt + (DL == 4 ? 4 * DL : 0));
        DoubleVector q5 = DoubleVector.fromArray(DOUBLES, from, qt + (DL == 4 ? 5 * DL : 0));
        DoubleVector q6 = DoubleVector.fromArray(DOUBLES, from, qt + (DL == 4 ? 6 * DL : 0));
        DoubleVector q7 = DoubleVector.fromArray(DOUBLES, from, qt + (DL == 4 ? 7 * DL : 0));
        double t1 = from[tail], t2 = from[tail + 1];
        for (int p = 0; p < planes; p++, base += stride) {
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a0 = a0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a1 = a1.add(d1);
                q1 = d1.fma(d1, q1);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a2 = a2.add(d2);
                q2 = d2.fma(d2, q2);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a3 = a3.add(d3);
                q3 = d3.fma(d3, q3);
                if (DL == 4) {
                    DoubleVector d4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a4 = a4.add(d4);
                    q4 = d4.fma(d4, q4);
                    DoubleVector d5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 5 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a5 = a5.add(d5);
                    q5 = d5.fma(d5, q5);
                    DoubleVector d6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 6 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a6 = a6.add(d6);
                    q6 = d6.fma(d6, q6);
                    DoubleVector d7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 7 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a7 = a7.add(d7);
                    q7 = d7.fma(d7, q7);
                }
            }
            if (rowsBytes < bodyBytes) {           // a half row: lanes 0..15
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a0 = a0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                a1 = a1.add(d1);
                q1 = d1.fma(d1, q1);
                if (DL == 4) {
                    DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a2 = a2.add(d2);
                    q2 = d2.fma(d2, q2);
                    DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a3 = a3.add(d3);
                    q3 = d3.fma(d3, q3);
                }
            }
            for (long o = base + bodyBytes, stop = base + planeBytes; o < stop; o += 4) {
                double d = (double) x.get(F32, o) - shift;
                t1 += d;
                t2 = Math.fma(d, d, t2);
            }
        }
        if (finish) {
            // LaneTree's order in registers: lanes 16..31 onto 0..15, 8..15 onto 0..7, and so
            // on; at 512 bits the last three levels are within one register, at 256 bits two.
            DoubleVector s = DL == 8 ? a0.add(a2).add(a1.add(a3))
                    : a0.add(a4).add(a2.add(a6)).add(a1.add(a5).add(a3.add(a7)));
            DoubleVector r = DL == 8 ? q0.add(q2).add(q1.add(q3))
                    : q0.add(q4).add(q2.add(q6)).add(q1.add(q5).add(q3.add(q7)));
            s = s.add(s.rearrange(HALF_UP));
            r = r.add(r.rearrange(HALF_UP));
            s = s.add(s.rearrange(QUARTER_UP));
            r = r.add(r.rearrange(QUARTER_UP));
            if (DL == 8) {
                s = s.add(s.rearrange(EIGHTH_UP));
                r = r.add(r.rearrange(EIGHTH_UP));
            }
            s1[c] = s.lane(0) + t1;
            s2[c] = r.lane(0) + t2;
            return;
        }
        a0.intoArray(lanes, at);
        a1.intoArray(lanes, at + DL);
        a2.intoArray(lanes, at + 2 * DL);
        a3.intoArray(lanes, at + 3 * DL);
        q0.intoArray(lanes, qt);
        q1.intoArray(lanes, qt + DL);
        q2.intoArray(lanes, qt + 2 * DL);
        q3.intoArray(lanes, qt + 3 * DL);
        if (DL == 4) {
            a4.intoArray(lanes, at + 4 * DL);
            a5.intoArray(lanes, at + 5 * DL);
            a6.intoArray(lanes, at + 6 * DL);
            a7.intoArray(lanes, at + 7 * DL);
            q4.intoArray(lanes, qt + 4 * DL);
            q5.intoArray(lanes, qt + 5 * DL);
            q6.intoArray(lanes, qt + 6 * DL);
            q7.intoArray(lanes, qt + 7 * DL);
        }
        lanes[tail] = t1;
        lanes[tail + 1] = t2;
    }

    /**
     * {@link BatchNormKernels#channelGradientSums}: the loop of {@link #channelMoments}, in
     * registers at 512 bits only. With the 256-bit registers too, the method outgrew what C2
     * compiles without boxing its vectors (every call allocated); other widths take the array.
     */
    static void channelGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, long base,
                                    long stride, long dyBase, long dyStride, long bit,
                                    long bitStride, int planes, long spatial, double mean,
                                    double[] lanes, double[] sumDy, double[] sumDyXmu, int c) {
        if (DL != 8) {
            channelGradientSumsAnyWidth(x, dy, ws, base, stride, dyBase, dyStride, bit, bitStride,
                    planes, spatial, mean, lanes, sumDy, sumDyXmu, c);
            return;
        }
        if (ws != null) {
            channelGradientSumsMasked(x, dy, ws, base, stride, dyBase, dyStride, bit, bitStride,
                    planes, spatial, mean, lanes, sumDy, sumDyXmu, c);
            return;
        }
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long bodyBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        long planeBytes = 4 * spatial;
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        // A run that starts from zero lanes ends with the tree; one that continues lanes from
        // the array stores them back (see BatchNormKernels.channelMoments). The lanes are loaded
        // either way (zeros from ZEROS), so that no vector is merged from two branches, which C2
        // would box. At 512 bits the 32 lanes are a0..a3; at 256 bits a4..a7 hold lanes 16..31
        // (C2 folds the width tests).
        boolean finish = lanes == null;
        double[] from = finish ? ZEROS : lanes;
        int at = finish ? 0 : c * LANE_SLOTS, qt = at + VIRTUAL_LANES, tail = at + 2 * VIRTUAL_LANES;
        DoubleVector a0 = DoubleVector.fromArray(DOUBLES, from, at);
        DoubleVector a1 = DoubleVector.fromArray(DOUBLES, from, at + DL);
        DoubleVector a2 = DoubleVector.fromArray(DOUBLES, from, at + 2 * DL);
        DoubleVector a3 = DoubleVector.fromArray(DOUBLES, from, at + 3 * DL);
        DoubleVector q0 = DoubleVector.fromArray(DOUBLES, from, qt);
        DoubleVector q1 = DoubleVector.fromArray(DOUBLES, from, qt + DL);
        DoubleVector q2 = DoubleVector.fromArray(DOUBLES, from, qt + 2 * DL);
        DoubleVector q3 = DoubleVector.fromArray(DOUBLES, from, qt + 3 * DL);
        double t1 = from[tail], t2 = from[tail + 1];
        for (int p = 0; p < planes; p++, base += stride, dyBase += dyStride) {
            long dd = dyBase - base;            // dy's offset from x's (0 when dense)
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector g0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a0 = a0.add(g0);
                q0 = d0.fma(g0, q0);
                DoubleVector g1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + STEP + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a1 = a1.add(g1);
                q1 = d1.fma(g1, q1);
                DoubleVector g2 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 2 * STEP + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a2 = a2.add(g2);
                q2 = d2.fma(g2, q2);
                DoubleVector g3 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 3 * STEP + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a3 = a3.add(g3);
                q3 = d3.fma(g3, q3);
            }
            if (rowsBytes < bodyBytes) {           // a half row: lanes 0..15
                DoubleVector g0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, end + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a0 = a0.add(g0);
                q0 = d0.fma(g0, q0);
                DoubleVector g1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, end + STEP + dd, NATIVE).convertShape(F2D, DOUBLES, 0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a1 = a1.add(g1);
                q1 = d1.fma(g1, q1);
            }
            for (long o = base + bodyBytes, stop = base + planeBytes; o < stop; o += 4) {
                double g = dy.get(F32, o + dd);
                double d = (double) x.get(F32, o) - mean;
                t1 += g;
                t2 = Math.fma(d, g, t2);
            }
        }
        if (finish) {
            // LaneTree's order in registers: lanes 16..31 onto 0..15, 8..15 onto 0..7, and so
            // on; at 512 bits the last three levels are within one register, at 256 bits two.
            DoubleVector s = a0.add(a2).add(a1.add(a3));
            DoubleVector r = q0.add(q2).add(q1.add(q3));
            s = s.add(s.rearrange(HALF_UP));
            r = r.add(r.rearrange(HALF_UP));
            s = s.add(s.rearrange(QUARTER_UP));
            r = r.add(r.rearrange(QUARTER_UP));
            s = s.add(s.rearrange(EIGHTH_UP));
            r = r.add(r.rearrange(EIGHTH_UP));
            sumDy[c] = s.lane(0) + t1;
            sumDyXmu[c] = r.lane(0) + t2;
            return;
        }
        a0.intoArray(lanes, at);
        a1.intoArray(lanes, at + DL);
        a2.intoArray(lanes, at + 2 * DL);
        a3.intoArray(lanes, at + 3 * DL);
        q0.intoArray(lanes, qt);
        q1.intoArray(lanes, qt + DL);
        q2.intoArray(lanes, qt + 2 * DL);
        q3.intoArray(lanes, qt + 3 * DL);
        lanes[tail] = t1;
        lanes[tail + 1] = t2;
    }

    /**
     * {@link #channelGradientSums} at 512 bits with the workspace's mask: a copy of its register
     * loop with g = bit ? dy : +0, as a method of its own because the masks inside that one made
     * C2 box its vectors (every call allocated; PERFORMANCE.md, the mask workspace).
     */
    private static void channelGradientSumsMasked(MemorySegment x, MemorySegment dy, MemorySegment ws, long base,
                                    long stride, long dyBase, long dyStride, long bit,
                                    long bitStride, int planes, long spatial, double mean,
                                    double[] lanes, double[] sumDy, double[] sumDyXmu, int c) {
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long bodyBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        long planeBytes = 4 * spatial;
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        // A run that starts from zero lanes ends with the tree; one that continues lanes from
        // the array stores them back (see BatchNormKernels.channelMoments). The lanes are loaded
        // either way (zeros from ZEROS), so that no vector is merged from two branches, which C2
        // would box. At 512 bits the 32 lanes are a0..a3; at 256 bits a4..a7 hold lanes 16..31
        // (C2 folds the width tests).
        boolean finish = lanes == null;
        double[] from = finish ? ZEROS : lanes;
        int at = finish ? 0 : c * LANE_SLOTS, qt = at + VIRTUAL_LANES, tail = at + 2 * VIRTUAL_LANES;
        DoubleVector a0 = DoubleVector.fromArray(DOUBLES, from, at);
        DoubleVector a1 = DoubleVector.fromArray(DOUBLES, from, at + DL);
        DoubleVector a2 = DoubleVector.fromArray(DOUBLES, from, at + 2 * DL);
        DoubleVector a3 = DoubleVector.fromArray(DOUBLES, from, at + 3 * DL);
        DoubleVector q0 = DoubleVector.fromArray(DOUBLES, from, qt);
        DoubleVector q1 = DoubleVector.fromArray(DOUBLES, from, qt + DL);
        DoubleVector q2 = DoubleVector.fromArray(DOUBLES, from, qt + 2 * DL);
        DoubleVector q3 = DoubleVector.fromArray(DOUBLES, from, qt + 3 * DL);
        double t1 = from[tail], t2 = from[tail + 1];
        for (int p = 0; p < planes; p++, base += stride, dyBase += dyStride, bit += bitStride) {
            long dd = dyBase - base;            // dy's offset from x's (0 when dense)
            long eb = bit - (base >>> 2);       // the mask's element of x's float at byte o: o / 4 + eb
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector g0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, (o >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a0 = a0.add(g0);
                q0 = d0.fma(g0, q0);
                DoubleVector g1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + STEP + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, ((o + STEP) >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a1 = a1.add(g1);
                q1 = d1.fma(g1, q1);
                DoubleVector g2 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 2 * STEP + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, ((o + 2 * STEP) >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a2 = a2.add(g2);
                q2 = d2.fma(g2, q2);
                DoubleVector g3 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 3 * STEP + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, ((o + 3 * STEP) >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a3 = a3.add(g3);
                q3 = d3.fma(g3, q3);
            }
            if (rowsBytes < bodyBytes) {           // a half row: lanes 0..15
                DoubleVector g0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, end + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, (end >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a0 = a0.add(g0);
                q0 = d0.fma(g0, q0);
                DoubleVector g1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, end + STEP + dd, NATIVE)
                        .blend(0f, VectorMask.fromLong(HALF, ~ReluMask.bitsAt(ws, ((end + STEP) >>> 2) + eb))).convertShape(F2D, DOUBLES, 0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, end + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                a1 = a1.add(g1);
                q1 = d1.fma(g1, q1);
            }
            for (long o = base + bodyBytes, stop = base + planeBytes; o < stop; o += 4) {
                double g = ReluMask.passes(ws, (o >>> 2) + eb) ? dy.get(F32, o + dd) : 0.0;
                double d = (double) x.get(F32, o) - mean;
                t1 += g;
                t2 = Math.fma(d, g, t2);
            }
        }
        if (finish) {
            // LaneTree's order in registers: lanes 16..31 onto 0..15, 8..15 onto 0..7, and so
            // on; at 512 bits the last three levels are within one register, at 256 bits two.
            DoubleVector s = a0.add(a2).add(a1.add(a3));
            DoubleVector r = q0.add(q2).add(q1.add(q3));
            s = s.add(s.rearrange(HALF_UP));
            r = r.add(r.rearrange(HALF_UP));
            s = s.add(s.rearrange(QUARTER_UP));
            r = r.add(r.rearrange(QUARTER_UP));
            s = s.add(s.rearrange(EIGHTH_UP));
            r = r.add(r.rearrange(EIGHTH_UP));
            sumDy[c] = s.lane(0) + t1;
            sumDyXmu[c] = r.lane(0) + t2;
            return;
        }
        a0.intoArray(lanes, at);
        a1.intoArray(lanes, at + DL);
        a2.intoArray(lanes, at + 2 * DL);
        a3.intoArray(lanes, at + 3 * DL);
        q0.intoArray(lanes, qt);
        q1.intoArray(lanes, qt + DL);
        q2.intoArray(lanes, qt + 2 * DL);
        q3.intoArray(lanes, qt + 3 * DL);
        lanes[tail] = t1;
        lanes[tail + 1] = t2;
    }

    /** Any width (128 bits in tests): the lanes stay in the array, updated register by register. */
    private static void channelMomentsAnyWidth(MemorySegment x, long base, long stride, int planes,
                                               long spatial, double shift, double[] lanes,
                                               double[] s1, double[] s2, int c) {
        boolean finish = lanes == null;
        int at = finish ? 0 : c * LANE_SLOTS;
        if (finish) {
            lanes = RUN.get();
            java.util.Arrays.fill(lanes, 0.0);
        }
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        long bodyBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        int tail = at + 2 * VIRTUAL_LANES;
        for (int p = 0; p < planes; p++, base += stride) {
            for (long o = 0; o < bodyBytes; o += STEP) {
                int lane = at + (int) (o / 4 % VIRTUAL_LANES);
                DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, base + o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector.fromArray(DOUBLES, lanes, lane).add(d).intoArray(lanes, lane);
                d.fma(d, DoubleVector.fromArray(DOUBLES, lanes, VIRTUAL_LANES + lane)).intoArray(lanes, VIRTUAL_LANES + lane);
            }
            for (long o = base + bodyBytes, stop = base + 4 * spatial; o < stop; o += 4) {
                double d = (double) x.get(F32, o) - shift;
                lanes[tail] += d;
                lanes[tail + 1] = Math.fma(d, d, lanes[tail + 1]);
            }
        }
        if (finish) {
            s1[c] = LaneTree.combine(lanes, 0, lanes[tail]);
            s2[c] = LaneTree.combine(lanes, VIRTUAL_LANES, lanes[tail + 1]);
        }
    }

    private static void channelGradientSumsAnyWidth(MemorySegment x, MemorySegment dy,
                                                    MemorySegment ws, long base, long stride,
                                                    long dyBase, long dyStride, long bit,
                                                    long bitStride, int planes, long spatial,
                                                    double mean, double[] lanes, double[] sumDy,
                                                    double[] sumDyXmu, int c) {
        boolean finish = lanes == null;
        int at = finish ? 0 : c * LANE_SLOTS;
        if (finish) {
            lanes = RUN.get();
            java.util.Arrays.fill(lanes, 0.0);
        }
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        long bodyBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        int tail = at + 2 * VIRTUAL_LANES;
        for (int p = 0; p < planes; p++, base += stride, dyBase += dyStride, bit += bitStride) {
            for (long o = 0; o < bodyBytes; o += STEP) {
                int lane = at + (int) (o / 4 % VIRTUAL_LANES);
                DoubleVector g = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, dyBase + o, NATIVE).convertShape(F2D, DOUBLES, 0);
                if (ws != null) {              // on the doubles: masks of a 64-bit HALF boxed
                    g = DL > 4 ? g.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, bit + o / 4)))
                            : g.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, bit + o / 4) & KEEP_BITS))).reinterpretAsDoubles();
                }
                DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, base + o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                DoubleVector.fromArray(DOUBLES, lanes, lane).add(g).intoArray(lanes, lane);
                d.fma(g, DoubleVector.fromArray(DOUBLES, lanes, VIRTUAL_LANES + lane)).intoArray(lanes, VIRTUAL_LANES + lane);
            }
            for (long o = base + bodyBytes, stop = base + 4 * spatial; o < stop; o += 4) {
                double g = ws != null && !ReluMask.passes(ws, bit + (o - base) / 4) ? 0.0 : dy.get(F32, o - base + dyBase);
                double d = (double) x.get(F32, o) - mean;
                lanes[tail] += g;
                lanes[tail + 1] = Math.fma(d, g, lanes[tail + 1]);
            }
        }
        if (finish) {
            sumDy[c] = LaneTree.combine(lanes, 0, lanes[tail]);
            sumDyXmu[c] = LaneTree.combine(lanes, VIRTUAL_LANES, lanes[tail + 1]);
        }
    }

    // ------------------------------------------------------------------------------------ NHWC

    /**
     * NHWC reductions walk rows in memory order, {@code ROWS} at a time: per vector of channels
     * the accumulators are loaded once, take the four rows in order, and are stored back, so the
     * accumulator traffic is a quarter of the data's and the walk is four sequential streams a
     * row apart, which the prefetchers follow from the caches. From memory they follow one stream
     * better, so there ({@code fromMemory}) the rows go one at a time; each channel still adds its
     * rows in order, so the bits are the same. Any channel count takes the same loop; the
     * accumulators (16 bytes a channel) stay in L1 up to a few thousand channels.
     */
    private static final int ROWS = 4;

    /** {@link BatchNormKernels#rowMoments}. */
    static void rowMoments(MemorySegment x, int channels, long xRow, long row0, long row1, int c0,
                           int c1, double[] shift, double[] s1, double[] s2, boolean fromMemory) {
        java.util.Arrays.fill(s1, c0, c1, 0.0);
        java.util.Arrays.fill(s2, c0, c1, 0.0);
        long rb = xRow;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        long r = row0;
        for (; r + ROWS <= row1 && !fromMemory; r += ROWS) {
            long base = r * rb;
            for (int c = c0; c < vectorEnd; c += DL) {
                long o = base + 4L * c;
                DoubleVector k = DoubleVector.fromArray(DOUBLES, shift, c);
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector.fromArray(DOUBLES, s1, c).add(d0).add(d1).add(d2).add(d3).intoArray(s1, c);
                d3.fma(d3, d2.fma(d2, d1.fma(d1, d0.fma(d0, DoubleVector.fromArray(DOUBLES, s2, c)))))
                        .intoArray(s2, c);
            }
            scalarMoments(x, rb, r, ROWS, vectorEnd, c1, shift, s1, s2);
        }
        for (; r < row1; r++) {
            long base = r * rb;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, base + 4L * c, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(DoubleVector.fromArray(DOUBLES, shift, c));
                DoubleVector.fromArray(DOUBLES, s1, c).add(d).intoArray(s1, c);
                d.fma(d, DoubleVector.fromArray(DOUBLES, s2, c)).intoArray(s2, c);
            }
            scalarMoments(x, rb, r, 1, vectorEnd, c1, shift, s1, s2);
        }
    }

    /** Channels [c0, c1) of rows [r, r + rows), one at a time, rows in order. */
    private static void scalarMoments(MemorySegment x, long rb, long r, int rows, int c0, int c1,
                                      double[] shift, double[] s1, double[] s2) {
        for (int c = c0; c < c1; c++) {
            double a = s1[c], q = s2[c];
            for (long o = r * rb + 4L * c, end = o + rows * rb; o < end; o += rb) {
                double d = (double) x.get(F32, o) - shift[c];
                a += d;
                q = Math.fma(d, d, q);
            }
            s1[c] = a;
            s2[c] = q;
        }
    }

    /** {@link BatchNormKernels#rowGradientSums}: the walk of {@link #rowMoments}. */
    static void rowGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, int channels,
                                long xRow, long dyRow, long row0, long row1, int c0, int c1,
                                double[] mean, double[] sumDy, double[] sumDyXmu,
                                boolean fromMemory) {
        java.util.Arrays.fill(sumDy, c0, c1, 0.0);
        java.util.Arrays.fill(sumDyXmu, c0, c1, 0.0);
        long rb = xRow, db = dyRow;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        long r = row0;
        for (; r + ROWS <= row1 && !fromMemory; r += ROWS) {
            long base = r * rb, dbase = r * db;
            for (int c = c0; c < vectorEnd; c += DL) {
                long o = base + 4L * c, od = dbase + 4L * c;
                DoubleVector m = DoubleVector.fromArray(DOUBLES, mean, c);
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, od, NATIVE).convertShape(F2D, DOUBLES, 0)), g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, od + db, NATIVE).convertShape(F2D, DOUBLES, 0));
                DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, od + 2 * db, NATIVE).convertShape(F2D, DOUBLES, 0)), g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, od + 3 * db, NATIVE).convertShape(F2D, DOUBLES, 0));
                if (ws != null) {              // on the doubles: masks of a 64-bit HALF boxed
                    long e = r * channels + c;
                    g0 = DL > 4 ? g0.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, e)))
                            : g0.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, e) & KEEP_BITS))).reinterpretAsDoubles();
                    g1 = DL > 4 ? g1.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, e + channels)))
                            : g1.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, e + channels) & KEEP_BITS))).reinterpretAsDoubles();
                    g2 = DL > 4 ? g2.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, e + 2L * channels)))
                            : g2.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, e + 2L * channels) & KEEP_BITS))).reinterpretAsDoubles();
                    g3 = DL > 4 ? g3.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, e + 3L * channels)))
                            : g3.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, e + 3L * channels) & KEEP_BITS))).reinterpretAsDoubles();
                }
                DoubleVector u0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m), u1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                DoubleVector u2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m), u3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * rb, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
                DoubleVector.fromArray(DOUBLES, sumDy, c).add(g0).add(g1).add(g2).add(g3).intoArray(sumDy, c);
                u3.fma(g3, u2.fma(g2, u1.fma(g1, u0.fma(g0, DoubleVector.fromArray(DOUBLES, sumDyXmu, c)))))
                        .intoArray(sumDyXmu, c);
            }
            scalarGradientSums(x, dy, ws, channels, rb, db, r, ROWS, vectorEnd, c1, mean, sumDy, sumDyXmu);
        }
        for (; r < row1; r++) {
            long base = r * rb, dbase = r * db;
            for (int c = c0; c < vectorEnd; c += DL) {
                long o = base + 4L * c, od = dbase + 4L * c;
                DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, od, NATIVE).convertShape(F2D, DOUBLES, 0));
                if (ws != null) {
                    g = DL > 4 ? g.blend(0.0, VectorMask.fromLong(DOUBLES, ~ReluMask.bitsAt(ws, r * channels + c)))
                            : g.reinterpretAsLongs().and(LongVector.fromArray(LONGS, KEEP, DL * (int) (ReluMask.bitsAt(ws, r * channels + c) & KEEP_BITS))).reinterpretAsDoubles();
                }
                DoubleVector.fromArray(DOUBLES, sumDy, c).add(g).intoArray(sumDy, c);
                ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(DoubleVector.fromArray(DOUBLES, mean, c))
                        .fma(g, DoubleVector.fromArray(DOUBLES, sumDyXmu, c)).intoArray(sumDyXmu, c);
            }
            scalarGradientSums(x, dy, ws, channels, rb, db, r, 1, vectorEnd, c1, mean, sumDy, sumDyXmu);
        }
    }

    /** Channels [c0, c1) of rows [r, r + rows), each channel's rows in order. */
    private static void scalarGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws,
                                           int channels, long rb, long db, long r, int rows, int c0,
                                           int c1, double[] mean, double[] sumDy,
                                           double[] sumDyXmu) {
        for (int c = c0; c < c1; c++) {
            double a = sumDy[c], q = sumDyXmu[c];
            long e = r * channels + c;
            for (long o = r * rb + 4L * c, od = r * db + 4L * c, end = o + rows * rb; o < end; o += rb, od += db, e += channels) {
                double g = ws != null && !ReluMask.passes(ws, e) ? 0.0 : dy.get(F32, od);
                a += g;
                q = Math.fma((double) x.get(F32, o) - mean[c], g, q);
            }
            sumDy[c] = a;
            sumDyXmu[c] = q;
        }
    }
}
