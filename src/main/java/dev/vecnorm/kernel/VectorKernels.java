package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * Vector API kernels. Loaded reflectively by {@link KernelProvider} only when
 * {@code jdk.incubator.vector} is readable; no other class of the library imports the module.
 *
 * <p>The species are {@code static final} so that C2 treats them as constants (an instance
 * field would not be, and every vector operation would fall back to Java code). The width comes
 * from {@code -Dvecnorm.vectorBits} (tests use it to exercise narrower lanes), else the
 * preferred width.
 *
 * <p>Reductions widen floats to double before they accumulate: {@code HALF} loads as many floats
 * as a {@code DOUBLES} vector has lanes. The {@link BatchNormKernels#VIRTUAL_LANES} = 32 double
 * lanes are 4 registers per quantity at 512 bits ({@code moments4}) and 8 at 256
 * ({@code moments8}); C2 folds the width test. Fewer, longer chains leave the loop bound by the
 * latency of double adds (measured: 3.2 ms with one chain, 0.8 ms with four, for 6.4 M floats).
 * Each variant is a small method on purpose: one large method with every width's registers
 * exceeded C2's inlining budget, and helpers that take vectors, once not inlined, box them.
 * For the same reason the float-to-double widening is written out at every load instead of in a
 * helper: in these register-heavy loops C2 refused to inline such a helper ("callee uses too much
 * stack") in some positions, and one boxed load made the NHWC statistics 2-4x slower.
 * Other widths (128 bits, for tests) keep the lanes in an array ({@code momentsAnyWidth}).
 */
final class VectorKernels implements BatchNormKernels {

    static final int BITS = configuredBits();
    static final VectorSpecies<Float> FLOATS = VectorShape.forBitSize(BITS).withLanes(float.class);
    static final VectorSpecies<Double> DOUBLES = VectorShape.forBitSize(BITS).withLanes(double.class);
    static final VectorSpecies<Float> HALF = VectorShape.forBitSize(BITS / 2).withLanes(float.class);
    private static final int FL = FLOATS.length();
    private static final int DL = DOUBLES.length();
    private static final long ROW_BYTES = 4L * VIRTUAL_LANES;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final VectorOperators.Conversion<Float, Double> F2D = VectorOperators.F2D;
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** NHWC reductions update each channel's accumulators once per this many rows. */
    private static final int ROW_BLOCK = 4;
    /**
     * The 64-channel register path walks a chunk's rows once per group of 64 channels; beyond
     * 256 channels (1 KiB rows) that walk strides too far for the prefetchers and the row-block
     * path is faster (measured on 50x512x28x28 .. 50x2048x7x7).
     */
    private static final int REGISTER_ROW_MAX = 256;

    private final String description;

    VectorKernels(boolean hardwareFma) {
        this.description = "vector " + BITS + "-bit, " + (hardwareFma ? "FMA" : "FMA emulated (slow)");
    }

    /**
     * The width in bits: {@code vecnorm.vectorBits} if set, else the preferred width.
     *
     * @throws IllegalStateException if the property is not 128, 256 or 512, or wider than the
     *                               hardware's preferred width
     */
    static int configuredBits() {
        int preferred = VectorShape.preferredShape().vectorBitSize();
        String wanted = System.getProperty(KernelProvider.BITS_PROPERTY);
        if (wanted == null || wanted.isBlank()) {
            if (preferred < 128) {
                throw new IllegalStateException("the preferred vector width is " + preferred
                        + " bits; vecnorm's vector kernels need at least 128");
            }
            return Math.min(preferred, 512);
        }
        int bits;
        try {
            bits = Integer.parseInt(wanted.trim());
        } catch (NumberFormatException e) {
            bits = -1;
        }
        if ((bits != 128 && bits != 256 && bits != 512) || bits > preferred) {
            throw new IllegalStateException(KernelProvider.BITS_PROPERTY
                    + ": expected 128, 256 or 512 and at most this CPU's preferred " + preferred
                    + ", got '" + wanted + "'");
        }
        return bits;
    }

    @Override
    public String description() {
        return description;
    }

    private static FloatVector load(MemorySegment s, long offset) {
        return FloatVector.fromMemorySegment(FLOATS, s, offset, NATIVE);
    }

    // ------------------------------------------------------------------------------------ NCHW

    @Override
    public void planeMoments(MemorySegment x, long first, long stride, int planes, long spatial,
                             float shift, double[] out) {
        double[] lanes = new double[2 * VIRTUAL_LANES];
        double[] tail = new double[2];
        if (DL == 8) {
            moments4(x, first, stride, planes, spatial, shift, lanes, tail);
        } else if (DL == 4) {
            moments8(x, first, stride, planes, spatial, shift, lanes, tail);
        } else {
            momentsAnyWidth(x, first, stride, planes, spatial, shift, lanes, tail);
        }
        out[0] = LaneTree.combine(lanes, 0, tail[0]);
        out[1] = LaneTree.combine(lanes, VIRTUAL_LANES, tail[1]);
    }

    private static void moments4(MemorySegment x, long first, long stride, int planes, long spatial,
                              double shift, double[] lanes, double[] tail) {
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector s0 = z, s1 = z, s2 = z, s3 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s0 = s0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s1 = s1.add(d1);
                q1 = d1.fma(d1, q1);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s2 = s2.add(d2);
                q2 = d2.fma(d2, q2);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s3 = s3.add(d3);
                q3 = d3.fma(d3, q3);
            }
            if (end < base + halfBytes) {        // a half row: lanes 0..15
                long o = end;
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s0 = s0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s1 = s1.add(d1);
                q1 = d1.fma(d1, q1);
            }
            momentsTail(x, base + halfBytes, base + 4 * spatial, shift, tail);
        }
        s0.intoArray(lanes, 0 * DL);
        s1.intoArray(lanes, 1 * DL);
        s2.intoArray(lanes, 2 * DL);
        s3.intoArray(lanes, 3 * DL);
        q0.intoArray(lanes, VIRTUAL_LANES + 0 * DL);
        q1.intoArray(lanes, VIRTUAL_LANES + 1 * DL);
        q2.intoArray(lanes, VIRTUAL_LANES + 2 * DL);
        q3.intoArray(lanes, VIRTUAL_LANES + 3 * DL);
    }

    private static void moments8(MemorySegment x, long first, long stride, int planes, long spatial,
                              double shift, double[] lanes, double[] tail) {
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector s0 = z, s1 = z, s2 = z, s3 = z, s4 = z, s5 = z, s6 = z, s7 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z, q4 = z, q5 = z, q6 = z, q7 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s0 = s0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s1 = s1.add(d1);
                q1 = d1.fma(d1, q1);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s2 = s2.add(d2);
                q2 = d2.fma(d2, q2);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s3 = s3.add(d3);
                q3 = d3.fma(d3, q3);
                DoubleVector d4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 16L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s4 = s4.add(d4);
                q4 = d4.fma(d4, q4);
                DoubleVector d5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 20L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s5 = s5.add(d5);
                q5 = d5.fma(d5, q5);
                DoubleVector d6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 24L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s6 = s6.add(d6);
                q6 = d6.fma(d6, q6);
                DoubleVector d7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 28L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s7 = s7.add(d7);
                q7 = d7.fma(d7, q7);
            }
            if (end < base + halfBytes) {        // a half row: lanes 0..15
                long o = end;
                DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s0 = s0.add(d0);
                q0 = d0.fma(d0, q0);
                DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s1 = s1.add(d1);
                q1 = d1.fma(d1, q1);
                DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s2 = s2.add(d2);
                q2 = d2.fma(d2, q2);
                DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                s3 = s3.add(d3);
                q3 = d3.fma(d3, q3);
            }
            momentsTail(x, base + halfBytes, base + 4 * spatial, shift, tail);
        }
        s0.intoArray(lanes, 0 * DL);
        s1.intoArray(lanes, 1 * DL);
        s2.intoArray(lanes, 2 * DL);
        s3.intoArray(lanes, 3 * DL);
        s4.intoArray(lanes, 4 * DL);
        s5.intoArray(lanes, 5 * DL);
        s6.intoArray(lanes, 6 * DL);
        s7.intoArray(lanes, 7 * DL);
        q0.intoArray(lanes, VIRTUAL_LANES + 0 * DL);
        q1.intoArray(lanes, VIRTUAL_LANES + 1 * DL);
        q2.intoArray(lanes, VIRTUAL_LANES + 2 * DL);
        q3.intoArray(lanes, VIRTUAL_LANES + 3 * DL);
        q4.intoArray(lanes, VIRTUAL_LANES + 4 * DL);
        q5.intoArray(lanes, VIRTUAL_LANES + 5 * DL);
        q6.intoArray(lanes, VIRTUAL_LANES + 6 * DL);
        q7.intoArray(lanes, VIRTUAL_LANES + 7 * DL);
    }

    @Override
    public void planeNormalize(MemorySegment x, MemorySegment y, long first, long stride,
                               int planes, long spatial, float mean, float scale, float offset) {
        FloatVector m = FloatVector.broadcast(FLOATS, mean);
        FloatVector a = FloatVector.broadcast(FLOATS, scale);
        FloatVector b = FloatVector.broadcast(FLOATS, offset);
        long bodyBytes = 4 * (spatial - spatial % FL);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + bodyBytes;
            for (long o = base; o < end; o += 4L * FL) {
                load(x, o).sub(m).fma(a, b).intoMemorySegment(y, o, NATIVE);
            }
            for (long o = end, tailEnd = base + 4 * spatial; o < tailEnd; o += 4) {
                y.set(F32, o, Math.fma(x.get(F32, o) - mean, scale, offset));
            }
        }
    }

    @Override
    public void planeGradientSums(MemorySegment x, MemorySegment dy, long first, long stride,
                                  int planes, long spatial, float mean, double[] out) {
        double[] lanes = new double[2 * VIRTUAL_LANES];
        double[] tail = new double[2];
        if (DL == 8) {
            gradientSums4(x, dy, first, stride, planes, spatial, mean, lanes, tail);
        } else if (DL == 4) {
            gradientSums8(x, dy, first, stride, planes, spatial, mean, lanes, tail);
        } else {
            gradientSumsAnyWidth(x, dy, first, stride, planes, spatial, mean, lanes, tail);
        }
        out[0] = LaneTree.combine(lanes, 0, tail[0]);
        out[1] = LaneTree.combine(lanes, VIRTUAL_LANES, tail[1]);
    }

    private static void gradientSums4(MemorySegment x, MemorySegment dy, long first, long stride, int planes,
                              long spatial, double mean, double[] lanes, double[] tail) {
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector s0 = z, s1 = z, s2 = z, s3 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                s0 = s0.add(g0);
                q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g0, q0);
                DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s1 = s1.add(g1);
                q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g1, q1);
                DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s2 = s2.add(g2);
                q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g2, q2);
                DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s3 = s3.add(g3);
                q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g3, q3);
            }
            if (end < base + halfBytes) {        // a half row: lanes 0..15
                long o = end;
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                s0 = s0.add(g0);
                q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g0, q0);
                DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s1 = s1.add(g1);
                q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g1, q1);
            }
            gradientTail(x, dy, base + halfBytes, base + 4 * spatial, mean, tail);
        }
        s0.intoArray(lanes, 0 * DL);
        s1.intoArray(lanes, 1 * DL);
        s2.intoArray(lanes, 2 * DL);
        s3.intoArray(lanes, 3 * DL);
        q0.intoArray(lanes, VIRTUAL_LANES + 0 * DL);
        q1.intoArray(lanes, VIRTUAL_LANES + 1 * DL);
        q2.intoArray(lanes, VIRTUAL_LANES + 2 * DL);
        q3.intoArray(lanes, VIRTUAL_LANES + 3 * DL);
    }

    private static void gradientSums8(MemorySegment x, MemorySegment dy, long first, long stride, int planes,
                              long spatial, double mean, double[] lanes, double[] tail) {
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector s0 = z, s1 = z, s2 = z, s3 = z, s4 = z, s5 = z, s6 = z, s7 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z, q4 = z, q5 = z, q6 = z, q7 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                s0 = s0.add(g0);
                q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g0, q0);
                DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s1 = s1.add(g1);
                q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g1, q1);
                DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s2 = s2.add(g2);
                q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g2, q2);
                DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s3 = s3.add(g3);
                q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g3, q3);
                DoubleVector g4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 16L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s4 = s4.add(g4);
                q4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 16L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g4, q4);
                DoubleVector g5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 20L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s5 = s5.add(g5);
                q5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 20L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g5, q5);
                DoubleVector g6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 24L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s6 = s6.add(g6);
                q6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 24L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g6, q6);
                DoubleVector g7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 28L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s7 = s7.add(g7);
                q7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 28L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g7, q7);
            }
            if (end < base + halfBytes) {        // a half row: lanes 0..15
                long o = end;
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                s0 = s0.add(g0);
                q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g0, q0);
                DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s1 = s1.add(g1);
                q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g1, q1);
                DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s2 = s2.add(g2);
                q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g2, q2);
                DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                s3 = s3.add(g3);
                q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g3, q3);
            }
            gradientTail(x, dy, base + halfBytes, base + 4 * spatial, mean, tail);
        }
        s0.intoArray(lanes, 0 * DL);
        s1.intoArray(lanes, 1 * DL);
        s2.intoArray(lanes, 2 * DL);
        s3.intoArray(lanes, 3 * DL);
        s4.intoArray(lanes, 4 * DL);
        s5.intoArray(lanes, 5 * DL);
        s6.intoArray(lanes, 6 * DL);
        s7.intoArray(lanes, 7 * DL);
        q0.intoArray(lanes, VIRTUAL_LANES + 0 * DL);
        q1.intoArray(lanes, VIRTUAL_LANES + 1 * DL);
        q2.intoArray(lanes, VIRTUAL_LANES + 2 * DL);
        q3.intoArray(lanes, VIRTUAL_LANES + 3 * DL);
        q4.intoArray(lanes, VIRTUAL_LANES + 4 * DL);
        q5.intoArray(lanes, VIRTUAL_LANES + 5 * DL);
        q6.intoArray(lanes, VIRTUAL_LANES + 6 * DL);
        q7.intoArray(lanes, VIRTUAL_LANES + 7 * DL);
    }

    /** Any width (128 bits in tests): the 32 lanes live in {@code lanes}, updated row by row. */
    private static void momentsAnyWidth(MemorySegment x, long first, long stride, int planes,
                                        long spatial, double shift, double[] lanes, double[] tail) {
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long o = base; o < base + halfBytes; o += 4L * DL) {
                int lane = (int) ((o - base) / 4 % VIRTUAL_LANES);
                DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                DoubleVector.fromArray(DOUBLES, lanes, lane).add(d).intoArray(lanes, lane);
                d.fma(d, DoubleVector.fromArray(DOUBLES, lanes, VIRTUAL_LANES + lane))
                        .intoArray(lanes, VIRTUAL_LANES + lane);
            }
            momentsTail(x, base + halfBytes, base + 4 * spatial, shift, tail);
        }
    }

    /** Any width: as {@link #momentsAnyWidth}, for the gradient sums. */
    private static void gradientSumsAnyWidth(MemorySegment x, MemorySegment dy, long first,
                                             long stride, int planes, long spatial, double mean,
                                             double[] lanes, double[] tail) {
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            for (long o = base; o < base + halfBytes; o += 4L * DL) {
                int lane = (int) ((o - base) / 4 % VIRTUAL_LANES);
                DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                DoubleVector.fromArray(DOUBLES, lanes, lane).add(g).intoArray(lanes, lane);
                ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g, DoubleVector.fromArray(DOUBLES, lanes, VIRTUAL_LANES + lane))
                        .intoArray(lanes, VIRTUAL_LANES + lane);
            }
            gradientTail(x, dy, base + halfBytes, base + 4 * spatial, mean, tail);
        }
    }

    /** The plane's tail (fewer than 16 values), in order, into tail[0] and tail[1]. */
    private static void momentsTail(MemorySegment x, long from, long to, double shift, double[] tail) {
        double t1 = tail[0], t2 = tail[1];
        for (long o = from; o < to; o += 4) {
            double d = (double) x.get(F32, o) - shift;
            t1 += d;
            t2 = Math.fma(d, d, t2);
        }
        tail[0] = t1;
        tail[1] = t2;
    }

    private static void gradientTail(MemorySegment x, MemorySegment dy, long from, long to,
                                     double mean, double[] tail) {
        double t1 = tail[0], t2 = tail[1];
        for (long o = from; o < to; o += 4) {
            double g = dy.get(F32, o);
            double d = (double) x.get(F32, o) - mean;
            t1 += g;
            t2 = Math.fma(d, g, t2);
        }
        tail[0] = t1;
        tail[1] = t2;
    }

    @Override
    public void planeGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long first,
                                   long stride, int planes, long spatial, float mean, float a,
                                   float b, float c) {
        FloatVector m = FloatVector.broadcast(FLOATS, mean);
        FloatVector av = FloatVector.broadcast(FLOATS, a);
        FloatVector bv = FloatVector.broadcast(FLOATS, b);
        FloatVector cv = FloatVector.broadcast(FLOATS, c);
        long bodyBytes = 4 * (spatial - spatial % FL);
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + bodyBytes;
            for (long o = base; o < end; o += 4L * FL) {
                FloatVector g = load(dy, o);
                load(x, o).sub(m).fma(bv, g.fma(av, cv)).intoMemorySegment(dx, o, NATIVE);
            }
            for (long o = end, tailEnd = base + 4 * spatial; o < tailEnd; o += 4) {
                float g = dy.get(F32, o);
                dx.set(F32, o, Math.fma(x.get(F32, o) - mean, b, Math.fma(g, a, c)));
            }
        }
    }

    // ------------------------------------------------------------------------------------ NHWC

    @Override
    public void rowMoments(MemorySegment x, int channels, long row0, long row1, int c0, int c1,
                           double[] shift, double[] s1, double[] s2) {
        if (DL == 8 && channels <= REGISTER_ROW_MAX) {
            // 64 channels at a time in registers over every row: one pass, no accumulator
            // traffic (measured 0.77 ms against 1.25 for C = 64, 6.4 M floats: memory speed).
            for (; c0 + 64 <= c1; c0 += 64) {
                moments64(x, 4L * channels, row0, row1, c0, shift, s1, s2);
            }
        }
        for (int c = c0; c < c1; c++) {
            s1[c] = 0;
            s2[c] = 0;
        }
        long rowBytes = 4L * channels;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        for (long r = row0; r < row1; r += ROW_BLOCK) {
            int rows = (int) Math.min(ROW_BLOCK, row1 - r);
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector k = DoubleVector.fromArray(DOUBLES, shift, c);
                DoubleVector a = DoubleVector.fromArray(DOUBLES, s1, c);
                DoubleVector q = DoubleVector.fromArray(DOUBLES, s2, c);
                long o = base + 4L * c;
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a = a.add(d);
                    q = d.fma(d, q);
                }
                a.intoArray(s1, c);
                q.intoArray(s2, c);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                double a = s1[c], q = s2[c], k = shift[c];
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    double d = (double) x.get(F32, o) - k;
                    a += d;
                    q = Math.fma(d, d, q);
                }
                s1[c] = a;
                s2[c] = q;
            }
        }
    }

    /** Channels [c, c + 64), rows [row0, row1), each channel adding its rows in order (512 bits). */
    private static void moments64(MemorySegment x, long rowBytes, long row0, long row1, int c,
                                  double[] shift, double[] s1, double[] s2) {
        DoubleVector k0 = DoubleVector.fromArray(DOUBLES, shift, c + 0);
        DoubleVector k1 = DoubleVector.fromArray(DOUBLES, shift, c + 8);
        DoubleVector k2 = DoubleVector.fromArray(DOUBLES, shift, c + 16);
        DoubleVector k3 = DoubleVector.fromArray(DOUBLES, shift, c + 24);
        DoubleVector k4 = DoubleVector.fromArray(DOUBLES, shift, c + 32);
        DoubleVector k5 = DoubleVector.fromArray(DOUBLES, shift, c + 40);
        DoubleVector k6 = DoubleVector.fromArray(DOUBLES, shift, c + 48);
        DoubleVector k7 = DoubleVector.fromArray(DOUBLES, shift, c + 56);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z, q4 = z, q5 = z, q6 = z, q7 = z;
        for (long o = row0 * rowBytes + 4L * c, end = row1 * rowBytes; o < end; o += rowBytes) {
            DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k0);
            a0 = a0.add(d0);
            q0 = d0.fma(d0, q0);
            DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k1);
            a1 = a1.add(d1);
            q1 = d1.fma(d1, q1);
            DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k2);
            a2 = a2.add(d2);
            q2 = d2.fma(d2, q2);
            DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k3);
            a3 = a3.add(d3);
            q3 = d3.fma(d3, q3);
            DoubleVector d4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k4);
            a4 = a4.add(d4);
            q4 = d4.fma(d4, q4);
            DoubleVector d5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k5);
            a5 = a5.add(d5);
            q5 = d5.fma(d5, q5);
            DoubleVector d6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k6);
            a6 = a6.add(d6);
            q6 = d6.fma(d6, q6);
            DoubleVector d7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k7);
            a7 = a7.add(d7);
            q7 = d7.fma(d7, q7);
        }
        a0.intoArray(s1, c + 0);
        a1.intoArray(s1, c + 8);
        a2.intoArray(s1, c + 16);
        a3.intoArray(s1, c + 24);
        a4.intoArray(s1, c + 32);
        a5.intoArray(s1, c + 40);
        a6.intoArray(s1, c + 48);
        a7.intoArray(s1, c + 56);
        q0.intoArray(s2, c + 0);
        q1.intoArray(s2, c + 8);
        q2.intoArray(s2, c + 16);
        q3.intoArray(s2, c + 24);
        q4.intoArray(s2, c + 32);
        q5.intoArray(s2, c + 40);
        q6.intoArray(s2, c + 48);
        q7.intoArray(s2, c + 56);
    }

    @Override
    public void rowNormalize(MemorySegment x, MemorySegment y, int channels, long row0, long row1,
                             int c0, int c1, float[] mean, float[] scale, float[] offset) {
        long rowBytes = 4L * channels;
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        for (long r = row0; r < row1; r++) {
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += FL) {
                long o = base + 4L * c;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, c);
                FloatVector a = FloatVector.fromArray(FLOATS, scale, c);
                FloatVector b = FloatVector.fromArray(FLOATS, offset, c);
                load(x, o).sub(m).fma(a, b).intoMemorySegment(y, o, NATIVE);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                y.set(F32, o, Math.fma(x.get(F32, o) - mean[c], scale[c], offset[c]));
            }
        }
    }

    @Override
    public void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long row0,
                                long row1, int c0, int c1, double[] mean, double[] sumDy,
                                double[] sumDyXmu) {
        if (DL == 8 && channels <= REGISTER_ROW_MAX) {
            for (; c0 + 64 <= c1; c0 += 64) {
                gradientSums64(x, dy, 4L * channels, row0, row1, c0, mean, sumDy, sumDyXmu);
            }
        }
        for (int c = c0; c < c1; c++) {
            sumDy[c] = 0;
            sumDyXmu[c] = 0;
        }
        long rowBytes = 4L * channels;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        for (long r = row0; r < row1; r += ROW_BLOCK) {
            int rows = (int) Math.min(ROW_BLOCK, row1 - r);
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector m = DoubleVector.fromArray(DOUBLES, mean, c);
                DoubleVector a = DoubleVector.fromArray(DOUBLES, sumDy, c);
                DoubleVector q = DoubleVector.fromArray(DOUBLES, sumDyXmu, c);
                long o = base + 4L * c;
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                    a = a.add(g);
                    q = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g, q);
                }
                a.intoArray(sumDy, c);
                q.intoArray(sumDyXmu, c);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                double a = sumDy[c], q = sumDyXmu[c], m = mean[c];
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    double g = dy.get(F32, o);
                    double d = (double) x.get(F32, o) - m;
                    a += g;
                    q = Math.fma(d, g, q);
                }
                sumDy[c] = a;
                sumDyXmu[c] = q;
            }
        }
    }

    /** As {@link #moments64}, for the gradient sums. */
    private static void gradientSums64(MemorySegment x, MemorySegment dy, long rowBytes, long row0,
                                       long row1, int c, double[] mean, double[] sumDy,
                                       double[] sumDyXmu) {
        DoubleVector m0 = DoubleVector.fromArray(DOUBLES, mean, c + 0);
        DoubleVector m1 = DoubleVector.fromArray(DOUBLES, mean, c + 8);
        DoubleVector m2 = DoubleVector.fromArray(DOUBLES, mean, c + 16);
        DoubleVector m3 = DoubleVector.fromArray(DOUBLES, mean, c + 24);
        DoubleVector m4 = DoubleVector.fromArray(DOUBLES, mean, c + 32);
        DoubleVector m5 = DoubleVector.fromArray(DOUBLES, mean, c + 40);
        DoubleVector m6 = DoubleVector.fromArray(DOUBLES, mean, c + 48);
        DoubleVector m7 = DoubleVector.fromArray(DOUBLES, mean, c + 56);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
        DoubleVector q0 = z, q1 = z, q2 = z, q3 = z, q4 = z, q5 = z, q6 = z, q7 = z;
        for (long o = row0 * rowBytes + 4L * c, end = row1 * rowBytes; o < end; o += rowBytes) {
            DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
            a0 = a0.add(g0);
            q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m0).fma(g0, q0);
            DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0));
            a1 = a1.add(g1);
            q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m1).fma(g1, q1);
            DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0));
            a2 = a2.add(g2);
            q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m2).fma(g2, q2);
            DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0));
            a3 = a3.add(g3);
            q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m3).fma(g3, q3);
            DoubleVector g4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0));
            a4 = a4.add(g4);
            q4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m4).fma(g4, q4);
            DoubleVector g5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0));
            a5 = a5.add(g5);
            q5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m5).fma(g5, q5);
            DoubleVector g6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0));
            a6 = a6.add(g6);
            q6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m6).fma(g6, q6);
            DoubleVector g7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0));
            a7 = a7.add(g7);
            q7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m7).fma(g7, q7);
        }
        a0.intoArray(sumDy, c + 0);
        a1.intoArray(sumDy, c + 8);
        a2.intoArray(sumDy, c + 16);
        a3.intoArray(sumDy, c + 24);
        a4.intoArray(sumDy, c + 32);
        a5.intoArray(sumDy, c + 40);
        a6.intoArray(sumDy, c + 48);
        a7.intoArray(sumDy, c + 56);
        q0.intoArray(sumDyXmu, c + 0);
        q1.intoArray(sumDyXmu, c + 8);
        q2.intoArray(sumDyXmu, c + 16);
        q3.intoArray(sumDyXmu, c + 24);
        q4.intoArray(sumDyXmu, c + 32);
        q5.intoArray(sumDyXmu, c + 40);
        q6.intoArray(sumDyXmu, c + 48);
        q7.intoArray(sumDyXmu, c + 56);
    }

    @Override
    public void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, int channels,
                                 long row0, long row1, int c0, int c1, float[] mean, float[] a,
                                 float[] b, float[] c) {
        long rowBytes = 4L * channels;
        int vectorEnd = c0 + (c1 - c0) / FL * FL;
        for (long r = row0; r < row1; r++) {
            long base = r * rowBytes;
            for (int ch = c0; ch < vectorEnd; ch += FL) {
                long o = base + 4L * ch;
                FloatVector m = FloatVector.fromArray(FLOATS, mean, ch);
                FloatVector av = FloatVector.fromArray(FLOATS, a, ch);
                FloatVector bv = FloatVector.fromArray(FLOATS, b, ch);
                FloatVector cv = FloatVector.fromArray(FLOATS, c, ch);
                FloatVector g = load(dy, o);
                load(x, o).sub(m).fma(bv, g.fma(av, cv)).intoMemorySegment(dx, o, NATIVE);
            }
            for (int ch = vectorEnd; ch < c1; ch++) {
                long o = base + 4L * ch;
                float g = dy.get(F32, o);
                dx.set(F32, o, Math.fma(x.get(F32, o) - mean[ch], b[ch], Math.fma(g, a[ch], c[ch])));
            }
        }
    }
}
