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
 * lanes are two sets of 16 ({@code a}: lanes 0..15, {@code b}: 16..31), each set
 * {@code ACCUMULATORS} = 16 / lanes-per-vector registers per quantity; the
 * {@code ACCUMULATORS > 2} and {@code > 4} branches are constant-folded by C2, so at 512 bits the
 * loop body is four independent vectors per quantity. Fewer chains leave the loop bound by the
 * latency of double adds (measured: 3.2 ms with one chain, 0.8 ms with four, for 6.4 M floats).
 */
final class VectorKernels implements BatchNormKernels {

    static final int BITS = configuredBits();
    static final VectorSpecies<Float> FLOATS = VectorShape.forBitSize(BITS).withLanes(float.class);
    static final VectorSpecies<Double> DOUBLES = VectorShape.forBitSize(BITS).withLanes(double.class);
    static final VectorSpecies<Float> HALF = VectorShape.forBitSize(BITS / 2).withLanes(float.class);
    private static final int FL = FLOATS.length();
    private static final int DL = DOUBLES.length();
    private static final int HALF_LANES = VIRTUAL_LANES / 2;
    /** Double vectors per 16 lanes: 2 at 512 bits, 4 at 256, 8 at 128. */
    private static final int ACCUMULATORS = HALF_LANES / DL;
    private static final long ROW_BYTES = 4L * VIRTUAL_LANES;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** NHWC reductions update each channel's accumulators once per this many rows. */
    private static final int ROW_BLOCK = 4;

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

    private static DoubleVector widen(MemorySegment s, long offset) {
        return (DoubleVector) FloatVector.fromMemorySegment(HALF, s, offset, NATIVE)
                .convertShape(VectorOperators.F2D, DOUBLES, 0);
    }

    private static FloatVector load(MemorySegment s, long offset) {
        return FloatVector.fromMemorySegment(FLOATS, s, offset, NATIVE);
    }

    // ------------------------------------------------------------------------------------ NCHW

    @Override
    public void planeMoments(MemorySegment x, long first, long stride, int planes, long spatial,
                             float shift, double[] out) {
        DoubleVector k = DoubleVector.broadcast(DOUBLES, shift);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector sa0 = z, sa1 = z, sa2 = z, sa3 = z, sa4 = z, sa5 = z, sa6 = z, sa7 = z, sb0 = z, sb1 = z, sb2 = z, sb3 = z, sb4 = z, sb5 = z, sb6 = z, sb7 = z;
        DoubleVector qa0 = z, qa1 = z, qa2 = z, qa3 = z, qa4 = z, qa5 = z, qa6 = z, qa7 = z, qb0 = z, qb1 = z, qb2 = z, qb3 = z, qb4 = z, qb5 = z, qb6 = z, qb7 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        double kd = shift, t1 = 0, t2 = 0;
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector da0 = widen(x, o + 0L).sub(k);
                sa0 = sa0.add(da0);
                qa0 = da0.fma(da0, qa0);
                DoubleVector db0 = widen(x, o + 64L).sub(k);
                sb0 = sb0.add(db0);
                qb0 = db0.fma(db0, qb0);
                DoubleVector da1 = widen(x, o + 4L * DL).sub(k);
                sa1 = sa1.add(da1);
                qa1 = da1.fma(da1, qa1);
                DoubleVector db1 = widen(x, o + 64L + 4L * DL).sub(k);
                sb1 = sb1.add(db1);
                qb1 = db1.fma(db1, qb1);
                if (ACCUMULATORS > 2) {
                    DoubleVector da2 = widen(x, o + 8L * DL).sub(k);
                    sa2 = sa2.add(da2);
                    qa2 = da2.fma(da2, qa2);
                    DoubleVector db2 = widen(x, o + 64L + 8L * DL).sub(k);
                    sb2 = sb2.add(db2);
                    qb2 = db2.fma(db2, qb2);
                }
                if (ACCUMULATORS > 2) {
                    DoubleVector da3 = widen(x, o + 12L * DL).sub(k);
                    sa3 = sa3.add(da3);
                    qa3 = da3.fma(da3, qa3);
                    DoubleVector db3 = widen(x, o + 64L + 12L * DL).sub(k);
                    sb3 = sb3.add(db3);
                    qb3 = db3.fma(db3, qb3);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da4 = widen(x, o + 16L * DL).sub(k);
                    sa4 = sa4.add(da4);
                    qa4 = da4.fma(da4, qa4);
                    DoubleVector db4 = widen(x, o + 64L + 16L * DL).sub(k);
                    sb4 = sb4.add(db4);
                    qb4 = db4.fma(db4, qb4);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da5 = widen(x, o + 20L * DL).sub(k);
                    sa5 = sa5.add(da5);
                    qa5 = da5.fma(da5, qa5);
                    DoubleVector db5 = widen(x, o + 64L + 20L * DL).sub(k);
                    sb5 = sb5.add(db5);
                    qb5 = db5.fma(db5, qb5);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da6 = widen(x, o + 24L * DL).sub(k);
                    sa6 = sa6.add(da6);
                    qa6 = da6.fma(da6, qa6);
                    DoubleVector db6 = widen(x, o + 64L + 24L * DL).sub(k);
                    sb6 = sb6.add(db6);
                    qb6 = db6.fma(db6, qb6);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da7 = widen(x, o + 28L * DL).sub(k);
                    sa7 = sa7.add(da7);
                    qa7 = da7.fma(da7, qa7);
                    DoubleVector db7 = widen(x, o + 64L + 28L * DL).sub(k);
                    sb7 = sb7.add(db7);
                    qb7 = db7.fma(db7, qb7);
                }
            }
            if (end < base + halfBytes) {       // a half row: lanes 0..15 only
                long o = end;
                DoubleVector da0 = widen(x, o + 0L).sub(k);
                sa0 = sa0.add(da0);
                qa0 = da0.fma(da0, qa0);
                DoubleVector da1 = widen(x, o + 4L * DL).sub(k);
                sa1 = sa1.add(da1);
                qa1 = da1.fma(da1, qa1);
                if (ACCUMULATORS > 2) {
                    DoubleVector da2 = widen(x, o + 8L * DL).sub(k);
                    sa2 = sa2.add(da2);
                    qa2 = da2.fma(da2, qa2);
                }
                if (ACCUMULATORS > 2) {
                    DoubleVector da3 = widen(x, o + 12L * DL).sub(k);
                    sa3 = sa3.add(da3);
                    qa3 = da3.fma(da3, qa3);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da4 = widen(x, o + 16L * DL).sub(k);
                    sa4 = sa4.add(da4);
                    qa4 = da4.fma(da4, qa4);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da5 = widen(x, o + 20L * DL).sub(k);
                    sa5 = sa5.add(da5);
                    qa5 = da5.fma(da5, qa5);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da6 = widen(x, o + 24L * DL).sub(k);
                    sa6 = sa6.add(da6);
                    qa6 = da6.fma(da6, qa6);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector da7 = widen(x, o + 28L * DL).sub(k);
                    sa7 = sa7.add(da7);
                    qa7 = da7.fma(da7, qa7);
                }
            }
            for (long o = base + halfBytes, tailEnd = base + 4 * spatial; o < tailEnd; o += 4) {
                double d = (double) x.get(F32, o) - kd;
                t1 += d;
                t2 = Math.fma(d, d, t2);
            }
        }
        double[] lanes = new double[2 * VIRTUAL_LANES];
        spill(lanes, 0, sa0, sa1, sa2, sa3, sa4, sa5, sa6, sa7);
        spill(lanes, HALF_LANES, sb0, sb1, sb2, sb3, sb4, sb5, sb6, sb7);
        spill(lanes, VIRTUAL_LANES, qa0, qa1, qa2, qa3, qa4, qa5, qa6, qa7);
        spill(lanes, VIRTUAL_LANES + HALF_LANES, qb0, qb1, qb2, qb3, qb4, qb5, qb6, qb7);
        out[0] = LaneTree.combine(lanes, 0, t1);
        out[1] = LaneTree.combine(lanes, VIRTUAL_LANES, t2);
    }

    /** Writes 16 lanes' accumulators to lanes[from, from + 16) in virtual-lane order. */
    private static void spill(double[] lanes, int from, DoubleVector v0, DoubleVector v1,
                              DoubleVector v2, DoubleVector v3, DoubleVector v4, DoubleVector v5,
                              DoubleVector v6, DoubleVector v7) {
        v0.intoArray(lanes, from);
        v1.intoArray(lanes, from + DL);
        if (ACCUMULATORS > 2) {
            v2.intoArray(lanes, from + 2 * DL);
            v3.intoArray(lanes, from + 3 * DL);
        }
        if (ACCUMULATORS > 4) {
            v4.intoArray(lanes, from + 4 * DL);
            v5.intoArray(lanes, from + 5 * DL);
            v6.intoArray(lanes, from + 6 * DL);
            v7.intoArray(lanes, from + 7 * DL);
        }
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
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        DoubleVector sa0 = z, sa1 = z, sa2 = z, sa3 = z, sa4 = z, sa5 = z, sa6 = z, sa7 = z, sb0 = z, sb1 = z, sb2 = z, sb3 = z, sb4 = z, sb5 = z, sb6 = z, sb7 = z;
        DoubleVector qa0 = z, qa1 = z, qa2 = z, qa3 = z, qa4 = z, qa5 = z, qa6 = z, qa7 = z, qb0 = z, qb1 = z, qb2 = z, qb3 = z, qb4 = z, qb5 = z, qb6 = z, qb7 = z;
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        double md = mean, t1 = 0, t2 = 0;
        for (int p = 0; p < planes; p++) {
            long base = first + p * stride;
            long end = base + rowsBytes;
            for (long o = base; o < end; o += ROW_BYTES) {
                DoubleVector ga0 = widen(dy, o + 0L);
                sa0 = sa0.add(ga0);
                qa0 = widen(x, o + 0L).sub(m).fma(ga0, qa0);
                DoubleVector gb0 = widen(dy, o + 64L);
                sb0 = sb0.add(gb0);
                qb0 = widen(x, o + 64L).sub(m).fma(gb0, qb0);
                DoubleVector ga1 = widen(dy, o + 4L * DL);
                sa1 = sa1.add(ga1);
                qa1 = widen(x, o + 4L * DL).sub(m).fma(ga1, qa1);
                DoubleVector gb1 = widen(dy, o + 64L + 4L * DL);
                sb1 = sb1.add(gb1);
                qb1 = widen(x, o + 64L + 4L * DL).sub(m).fma(gb1, qb1);
                if (ACCUMULATORS > 2) {
                    DoubleVector ga2 = widen(dy, o + 8L * DL);
                    sa2 = sa2.add(ga2);
                    qa2 = widen(x, o + 8L * DL).sub(m).fma(ga2, qa2);
                    DoubleVector gb2 = widen(dy, o + 64L + 8L * DL);
                    sb2 = sb2.add(gb2);
                    qb2 = widen(x, o + 64L + 8L * DL).sub(m).fma(gb2, qb2);
                }
                if (ACCUMULATORS > 2) {
                    DoubleVector ga3 = widen(dy, o + 12L * DL);
                    sa3 = sa3.add(ga3);
                    qa3 = widen(x, o + 12L * DL).sub(m).fma(ga3, qa3);
                    DoubleVector gb3 = widen(dy, o + 64L + 12L * DL);
                    sb3 = sb3.add(gb3);
                    qb3 = widen(x, o + 64L + 12L * DL).sub(m).fma(gb3, qb3);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga4 = widen(dy, o + 16L * DL);
                    sa4 = sa4.add(ga4);
                    qa4 = widen(x, o + 16L * DL).sub(m).fma(ga4, qa4);
                    DoubleVector gb4 = widen(dy, o + 64L + 16L * DL);
                    sb4 = sb4.add(gb4);
                    qb4 = widen(x, o + 64L + 16L * DL).sub(m).fma(gb4, qb4);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga5 = widen(dy, o + 20L * DL);
                    sa5 = sa5.add(ga5);
                    qa5 = widen(x, o + 20L * DL).sub(m).fma(ga5, qa5);
                    DoubleVector gb5 = widen(dy, o + 64L + 20L * DL);
                    sb5 = sb5.add(gb5);
                    qb5 = widen(x, o + 64L + 20L * DL).sub(m).fma(gb5, qb5);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga6 = widen(dy, o + 24L * DL);
                    sa6 = sa6.add(ga6);
                    qa6 = widen(x, o + 24L * DL).sub(m).fma(ga6, qa6);
                    DoubleVector gb6 = widen(dy, o + 64L + 24L * DL);
                    sb6 = sb6.add(gb6);
                    qb6 = widen(x, o + 64L + 24L * DL).sub(m).fma(gb6, qb6);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga7 = widen(dy, o + 28L * DL);
                    sa7 = sa7.add(ga7);
                    qa7 = widen(x, o + 28L * DL).sub(m).fma(ga7, qa7);
                    DoubleVector gb7 = widen(dy, o + 64L + 28L * DL);
                    sb7 = sb7.add(gb7);
                    qb7 = widen(x, o + 64L + 28L * DL).sub(m).fma(gb7, qb7);
                }
            }
            if (end < base + halfBytes) {       // a half row: lanes 0..15 only
                long o = end;
                DoubleVector ga0 = widen(dy, o + 0L);
                sa0 = sa0.add(ga0);
                qa0 = widen(x, o + 0L).sub(m).fma(ga0, qa0);
                DoubleVector ga1 = widen(dy, o + 4L * DL);
                sa1 = sa1.add(ga1);
                qa1 = widen(x, o + 4L * DL).sub(m).fma(ga1, qa1);
                if (ACCUMULATORS > 2) {
                    DoubleVector ga2 = widen(dy, o + 8L * DL);
                    sa2 = sa2.add(ga2);
                    qa2 = widen(x, o + 8L * DL).sub(m).fma(ga2, qa2);
                }
                if (ACCUMULATORS > 2) {
                    DoubleVector ga3 = widen(dy, o + 12L * DL);
                    sa3 = sa3.add(ga3);
                    qa3 = widen(x, o + 12L * DL).sub(m).fma(ga3, qa3);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga4 = widen(dy, o + 16L * DL);
                    sa4 = sa4.add(ga4);
                    qa4 = widen(x, o + 16L * DL).sub(m).fma(ga4, qa4);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga5 = widen(dy, o + 20L * DL);
                    sa5 = sa5.add(ga5);
                    qa5 = widen(x, o + 20L * DL).sub(m).fma(ga5, qa5);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga6 = widen(dy, o + 24L * DL);
                    sa6 = sa6.add(ga6);
                    qa6 = widen(x, o + 24L * DL).sub(m).fma(ga6, qa6);
                }
                if (ACCUMULATORS > 4) {
                    DoubleVector ga7 = widen(dy, o + 28L * DL);
                    sa7 = sa7.add(ga7);
                    qa7 = widen(x, o + 28L * DL).sub(m).fma(ga7, qa7);
                }
            }
            for (long o = base + halfBytes, tailEnd = base + 4 * spatial; o < tailEnd; o += 4) {
                double g = dy.get(F32, o);
                double d = (double) x.get(F32, o) - md;
                t1 += g;
                t2 = Math.fma(d, g, t2);
            }
        }
        double[] lanes = new double[2 * VIRTUAL_LANES];
        spill(lanes, 0, sa0, sa1, sa2, sa3, sa4, sa5, sa6, sa7);
        spill(lanes, HALF_LANES, sb0, sb1, sb2, sb3, sb4, sb5, sb6, sb7);
        spill(lanes, VIRTUAL_LANES, qa0, qa1, qa2, qa3, qa4, qa5, qa6, qa7);
        spill(lanes, VIRTUAL_LANES + HALF_LANES, qb0, qb1, qb2, qb3, qb4, qb5, qb6, qb7);
        out[0] = LaneTree.combine(lanes, 0, t1);
        out[1] = LaneTree.combine(lanes, VIRTUAL_LANES, t2);
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
                    DoubleVector d = widen(x, o).sub(k);
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
                    DoubleVector g = widen(dy, o);
                    a = a.add(g);
                    q = widen(x, o).sub(m).fma(g, q);
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
