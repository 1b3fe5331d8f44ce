package dev.vecnorm.kernel;

import static dev.vecnorm.kernel.BatchNormKernels.TAIL_GRANULE;
import static dev.vecnorm.kernel.BatchNormKernels.VIRTUAL_LANES;
import static dev.vecnorm.kernel.VectorKernels.DL;
import static dev.vecnorm.kernel.VectorKernels.DOUBLES;
import static dev.vecnorm.kernel.VectorKernels.FLOATS;
import static dev.vecnorm.kernel.VectorKernels.HALF;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShuffle;

/**
 * The run kernels of {@link VectorKernels} (rows of LayerNorm and RMSNorm; see
 * {@link BatchNormKernels#runNormalize}). The element-wise loops compute, lane by lane, the
 * operations of {@link ScalarKernels}' loops, with those loops' scalar code for the last fewer
 * than one vector; {@link #runGradientSums} keeps the 32 virtual lanes of
 * {@link VectorReductions#channelGradientSums}, in registers at 512 bits.
 */
final class VectorRuns {

    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final VectorOperators.Conversion<Float, Double> F2D = VectorOperators.F2D;
    private static final int FL = FLOATS.length();
    private static final long ROW_BYTES = 4L * VIRTUAL_LANES;
    private static final long STEP = 4L * DL;
    private static final VectorShuffle<Double> HALF_UP = VectorShuffle.iota(DOUBLES, DL / 2, 1, true);
    private static final VectorShuffle<Double> QUARTER_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 4), 1, true);
    private static final VectorShuffle<Double> EIGHTH_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 8), 1, true);
    private static final ThreadLocal<double[]> RUN =
            ThreadLocal.withInitial(() -> new double[BatchNormKernels.LANE_SLOTS]);

    private VectorRuns() {
    }

    /**
     * {@link BatchNormKernels#runSumSquares}: the lanes in registers at 512 and 256 bits (32
     * lanes are 4 or 8 registers), in an array at other widths.
     */
    static double runSumSquares(MemorySegment x, MemorySegment residual, long off, int n) {
        if (DL != 8 && DL != 4) {
            return runSumSquaresAnyWidth(x, residual, off, n);
        }
        long rowsBytes = 4L * (n - n % VIRTUAL_LANES);
        long bodyBytes = 4L * (n - n % TAIL_GRANULE);
        // With a residual, each row's h = x + residual is stored just before it is summed (the
        // loads below then read it from L1): one pass over the run, and no second kernel call.
        // The add loops stay written out here: a small add method of their own is what C2 once
        // compiled with a boxed load (PERFORMANCE.md, "Allocation and C2").
        MemorySegment h = residual != null ? residual : x;
        DoubleVector q0 = DoubleVector.zero(DOUBLES), q1 = q0, q2 = q0, q3 = q0, q4 = q0, q5 = q0, q6 = q0, q7 = q0;
        long o = off, end = off + rowsBytes;
        for (; o < end; o += ROW_BYTES) {
            if (residual != null) {
                for (long p = o, rowEnd = o + ROW_BYTES; p < rowEnd; p += 4L * FL) {
                    FloatVector.fromMemorySegment(FLOATS, x, p, NATIVE)
                            .add(FloatVector.fromMemorySegment(FLOATS, residual, p, NATIVE))
                            .intoMemorySegment(residual, p, NATIVE);
                }
            }
            DoubleVector d0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o, NATIVE).convertShape(F2D, DOUBLES, 0);
            q0 = d0.fma(d0, q0);
            DoubleVector d1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
            q1 = d1.fma(d1, q1);
            DoubleVector d2 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
            q2 = d2.fma(d2, q2);
            DoubleVector d3 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
            q3 = d3.fma(d3, q3);
            if (DL == 4) {
                DoubleVector d4 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 4 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q4 = d4.fma(d4, q4);
                DoubleVector d5 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 5 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q5 = d5.fma(d5, q5);
                DoubleVector d6 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 6 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q6 = d6.fma(d6, q6);
                DoubleVector d7 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 7 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q7 = d7.fma(d7, q7);
            }
        }
        if (rowsBytes < bodyBytes) {               // a half row: lanes 0..15
            if (residual != null) {
                for (long p = o, rowEnd = o + ROW_BYTES / 2; p < rowEnd; p += 4L * FL) {
                    FloatVector.fromMemorySegment(FLOATS, x, p, NATIVE)
                            .add(FloatVector.fromMemorySegment(FLOATS, residual, p, NATIVE))
                            .intoMemorySegment(residual, p, NATIVE);
                }
            }
            DoubleVector d0 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o, NATIVE).convertShape(F2D, DOUBLES, 0);
            q0 = d0.fma(d0, q0);
            DoubleVector d1 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
            q1 = d1.fma(d1, q1);
            if (DL == 4) {
                DoubleVector d2 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q2 = d2.fma(d2, q2);
                DoubleVector d3 = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0);
                q3 = d3.fma(d3, q3);
            }
        }
        double t = sumSquaresTail(x, residual, off, bodyBytes, n);
        // LaneTree's order: lanes 16..31 onto 0..15, then 8..15 onto 0..7, and so on.
        DoubleVector r = DL == 8 ? q0.add(q2).add(q1.add(q3))
                : q0.add(q4).add(q2.add(q6)).add(q1.add(q5).add(q3.add(q7)));
        r = r.add(r.rearrange(HALF_UP));
        r = r.add(r.rearrange(QUARTER_UP));
        if (DL == 8) {
            r = r.add(r.rearrange(EIGHTH_UP));
        }
        return r.lane(0) + t;
    }

    private static double runSumSquaresAnyWidth(MemorySegment x, MemorySegment residual, long off, int n) {
        double[] lanes = RUN.get();
        java.util.Arrays.fill(lanes, 0.0);
        long bodyBytes = 4L * (n - n % TAIL_GRANULE);
        if (residual != null) {                    // FL divides TAIL_GRANULE at every width
            for (long p = off, end = off + bodyBytes; p < end; p += 4L * FL) {
                FloatVector.fromMemorySegment(FLOATS, x, p, NATIVE)
                        .add(FloatVector.fromMemorySegment(FLOATS, residual, p, NATIVE))
                        .intoMemorySegment(residual, p, NATIVE);
            }
        }
        MemorySegment h = residual != null ? residual : x;
        for (long p = 0; p < bodyBytes; p += STEP) {
            int lane = (int) (p / 4 % VIRTUAL_LANES);
            DoubleVector d = (DoubleVector) FloatVector.fromMemorySegment(HALF, h, off + p, NATIVE).convertShape(F2D, DOUBLES, 0);
            d.fma(d, DoubleVector.fromArray(DOUBLES, lanes, lane)).intoArray(lanes, lane);
        }
        return LaneTree.combine(lanes, 0, sumSquaresTail(x, residual, off, bodyBytes, n));
    }

    /** The last fewer than {@code TAIL_GRANULE} values of a run, their h stored first. */
    private static double sumSquaresTail(MemorySegment x, MemorySegment residual, long off,
                                         long bodyBytes, int n) {
        double t = 0;
        for (long p = off + bodyBytes, end = off + 4L * n; p < end; p += 4) {
            float v = x.get(F32, p);
            if (residual != null) {
                v += residual.get(F32, p);
                residual.set(F32, p, v);
            }
            double d = v;
            t = Math.fma(d, d, t);
        }
        return t;
    }

    static void runScale(MemorySegment x, MemorySegment y, long off, int n, float rstd,
                         MemorySegment weight) {
        int i = 0;
        for (; i <= n - FL; i += FL) {
            long o = off + 4L * i;
            FloatVector a = FloatVector.fromMemorySegment(FLOATS, weight, 4L * i, NATIVE).mul(rstd);
            FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).mul(a).intoMemorySegment(y, o, NATIVE);
        }
        for (; i < n; i++) {
            long o = off + 4L * i;
            y.set(F32, o, x.get(F32, o) * (rstd * weight.getAtIndex(F32, i)));
        }
    }

    static void runNormalize(MemorySegment x, MemorySegment y, long off, int n, float hi,
                             float lo, float rstd, MemorySegment weight, MemorySegment bias) {
        FloatVector h = FloatVector.broadcast(FLOATS, hi);
        FloatVector nl = FloatVector.broadcast(FLOATS, -lo);
        int i = 0;
        for (; i <= n - FL; i += FL) {
            long o = off + 4L * i, p = 4L * i;
            FloatVector a = FloatVector.fromMemorySegment(FLOATS, weight, p, NATIVE).mul(rstd);
            FloatVector b = nl.fma(a, FloatVector.fromMemorySegment(FLOATS, bias, p, NATIVE));
            FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(h).fma(a, b)
                    .intoMemorySegment(y, o, NATIVE);
        }
        for (; i < n; i++) {
            long o = off + 4L * i;
            float a = rstd * weight.getAtIndex(F32, i);
            y.set(F32, o, Math.fma(x.get(F32, o) - hi, a, Math.fma(-lo, a, bias.getAtIndex(F32, i))));
        }
    }

    static void runGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long off,
                                 int n, float mean, float rstd, MemorySegment weight, float b,
                                 float c) {
        FloatVector m = FloatVector.broadcast(FLOATS, mean);
        FloatVector bv = FloatVector.broadcast(FLOATS, b);
        FloatVector cv = FloatVector.broadcast(FLOATS, c);
        int i = 0;
        for (; i <= n - FL; i += FL) {
            long o = off + 4L * i;
            FloatVector a = FloatVector.fromMemorySegment(FLOATS, weight, 4L * i, NATIVE).mul(rstd);
            FloatVector inner = FloatVector.fromMemorySegment(FLOATS, dy, o, NATIVE).fma(a, cv);
            FloatVector.fromMemorySegment(FLOATS, x, o, NATIVE).sub(m).fma(bv, inner)
                    .intoMemorySegment(dx, o, NATIVE);
        }
        for (; i < n; i++) {
            long o = off + 4L * i;
            float a = rstd * weight.getAtIndex(F32, i);
            dx.set(F32, o, Math.fma(x.get(F32, o) - mean, b, Math.fma(dy.get(F32, o), a, c)));
        }
    }

    /** The tests of dw and db are loop-invariant: C2 unswitches them out of the loop. */
    static void runParameterGradients(MemorySegment x, MemorySegment dy, long off, int n,
                                      double mean, double rstd, double[] dw, double[] db) {
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        int i = 0;
        for (; i <= n - DL; i += DL) {
            long o = off + 4L * i;
            DoubleVector g = (DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0);
            if (dw != null) {
                DoubleVector t = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).mul(rstd);
                t.fma(g, DoubleVector.fromArray(DOUBLES, dw, i)).intoArray(dw, i);
            }
            if (db != null) {
                DoubleVector.fromArray(DOUBLES, db, i).add(g).intoArray(db, i);
            }
        }
        for (; i < n; i++) {
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

    /**
     * {@link BatchNormKernels#runGradientSums}: {@link VectorReductions#channelGradientSums}'
     * loop over one plane with {@code g = dy * weight} in double, the lanes in registers at 512
     * bits; other widths update the lanes in an array.
     */
    static void runGradientSums(MemorySegment x, MemorySegment dy, long off, int n, double mean,
                                MemorySegment weight, double[] out) {
        if (DL != 8) {
            runGradientSumsAnyWidth(x, dy, off, n, mean, weight, out);
            return;
        }
        long rowsBytes = 4L * (n - n % VIRTUAL_LANES);
        long bodyBytes = 4L * (n - n % TAIL_GRANULE);
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        DoubleVector a0 = DoubleVector.zero(DOUBLES), a1 = a0, a2 = a0, a3 = a0;
        DoubleVector q0 = a0, q1 = a0, q2 = a0, q3 = a0;
        for (long p = 0; p < rowsBytes; p += ROW_BYTES) {
            long o = off + p;
            DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a0 = a0.add(g0);
            q0 = d0.fma(g0, q0);
            DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p + STEP, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a1 = a1.add(g1);
            q1 = d1.fma(g1, q1);
            DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 2 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a2 = a2.add(g2);
            q2 = d2.fma(g2, q2);
            DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 3 * STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a3 = a3.add(g3);
            q3 = d3.fma(g3, q3);
        }
        if (rowsBytes < bodyBytes) {               // a half row: lanes 0..15
            long p = rowsBytes, o = off + p;
            DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a0 = a0.add(g0);
            q0 = d0.fma(g0, q0);
            DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p + STEP, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + STEP, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            a1 = a1.add(g1);
            q1 = d1.fma(g1, q1);
        }
        double t1 = 0, t2 = 0;
        for (long p = bodyBytes; p < 4L * n; p += 4) {
            double g = (double) dy.get(F32, off + p) * weight.get(F32, p);
            double d = (double) x.get(F32, off + p) - mean;
            t1 += g;
            t2 = Math.fma(d, g, t2);
        }
        DoubleVector s = a0.add(a2).add(a1.add(a3));
        DoubleVector r = q0.add(q2).add(q1.add(q3));
        s = s.add(s.rearrange(HALF_UP));
        r = r.add(r.rearrange(HALF_UP));
        s = s.add(s.rearrange(QUARTER_UP));
        r = r.add(r.rearrange(QUARTER_UP));
        s = s.add(s.rearrange(EIGHTH_UP));
        r = r.add(r.rearrange(EIGHTH_UP));
        out[0] = s.lane(0) + t1;
        out[1] = r.lane(0) + t2;
    }

    private static void runGradientSumsAnyWidth(MemorySegment x, MemorySegment dy, long off, int n,
                                                double mean, MemorySegment weight, double[] out) {
        double[] lanes = RUN.get();
        java.util.Arrays.fill(lanes, 0.0);
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        long bodyBytes = 4L * (n - n % TAIL_GRANULE);
        int tail = 2 * VIRTUAL_LANES;
        for (long p = 0; p < bodyBytes; p += STEP) {
            int lane = (int) (p / 4 % VIRTUAL_LANES);
            DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, off + p, NATIVE).convertShape(F2D, DOUBLES, 0)).mul((DoubleVector) FloatVector.fromMemorySegment(HALF, weight, p, NATIVE).convertShape(F2D, DOUBLES, 0));
            DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, off + p, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m);
            DoubleVector.fromArray(DOUBLES, lanes, lane).add(g).intoArray(lanes, lane);
            d.fma(g, DoubleVector.fromArray(DOUBLES, lanes, VIRTUAL_LANES + lane)).intoArray(lanes, VIRTUAL_LANES + lane);
        }
        for (long p = bodyBytes; p < 4L * n; p += 4) {
            double g = (double) dy.get(F32, off + p) * weight.get(F32, p);
            double d = (double) x.get(F32, off + p) - mean;
            lanes[tail] += g;
            lanes[tail + 1] = Math.fma(d, g, lanes[tail + 1]);
        }
        out[0] = LaneTree.combine(lanes, 0, lanes[tail]);
        out[1] = LaneTree.combine(lanes, VIRTUAL_LANES, lanes[tail + 1]);
    }
}
