package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.ExecutorService;
import java.util.function.ObjIntConsumer;

/**
 * Drives the run kernels for LayerNorm and RMSNorm: each unit (a row, or a head's part of a row)
 * is a run of {@code features} floats that one task normalises alone, with
 * {@link BatchNormKernels#channelMoments}' shifted sums (one plane) as its statistics, so a
 * unit's bits do not depend on which task ran it. Backward's parameter gradients add the units'
 * terms per feature: units are cut into chunks that depend on the geometry only, each chunk
 * adds its units in order, and the chunks are added in chunk order, as BatchNorm's statistics
 * are. Arguments are validated by the public classes before any method here runs.
 */
public final class RowNormEngine {

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private final BatchNormKernels kernels;
    private final long units;
    private final int heads;
    private final int features;
    private final long rowStride;
    private final double epsilon;
    private final boolean rms;
    private final boolean unitOffset;
    private final Workers workers;
    /** Backward's chunks of units (see the class comment). */
    private final int chunks;
    /** Weight 1 and bias 0 where the caller gave none: read only. */
    private final MemorySegment ones, zeros;

    /**
     * @param rms        RMSNorm (no mean, no bias) rather than LayerNorm
     * @param unitOffset RMSNorm's weight applied as 1 + weight (Gemma)
     */
    public RowNormEngine(BatchNormKernels kernels, long rows, int heads, int features,
                         long rowStride, float epsilon, boolean rms, boolean unitOffset,
                         int parallelism, ExecutorService executor) {
        this.kernels = kernels;
        this.units = rows * heads;
        this.heads = heads;
        this.features = features;
        this.rowStride = rowStride;
        this.epsilon = epsilon;
        this.rms = rms;
        this.unitOffset = unitOffset;
        long elements = units * features;
        this.workers = new Workers(elements < BatchNormEngine.PARALLEL_MIN_ELEMENTS ? 1
                : (int) Math.min(parallelism, units), executor);
        this.chunks = (int) Math.max(1, Math.min(Math.min(BatchNormEngine.MAX_CHUNKS, units),
                Math.ceilDiv(elements, BatchNormEngine.CHUNK_ELEMENTS)));
        float[] one = new float[features];
        java.util.Arrays.fill(one, 1f);
        this.ones = MemorySegment.ofArray(one);
        this.zeros = MemorySegment.ofArray(new float[features]);
    }

    /** The kernels this engine calls. */
    public BatchNormKernels kernels() {
        return kernels;
    }

    /**
     * Forward: with a {@code residual} (RMSNorm only) h = x + residual is written into the
     * residual first and normalised; {@code mean} (LayerNorm) and {@code rstd} may be null.
     */
    public void forward(MemorySegment x, MemorySegment residual, MemorySegment weight,
                        MemorySegment bias, MemorySegment y, MemorySegment mean,
                        MemorySegment rstd) {
        Scratch w = scratch.acquire();
        try {
            w.x = x;
            w.residual = residual;
            w.weight = effectiveWeight(weight, w);
            w.bias = bias != null ? bias : zeros;
            w.y = y;
            w.mean = mean;
            w.rstd = rstd;
            workers.run(workers.parallelism(), w, forwardTask);
        } finally {
            scratch.release(w);
        }
    }

    private final ObjIntConsumer<Scratch> forwardTask = this::forwardTask;
    private final ObjIntConsumer<Scratch> backwardTask = this::backwardTask;

    private void forwardTask(Scratch w, int t) {
        int tasks = workers.parallelism();
        double[] s1 = w.s1, s2 = w.s2;
        for (long u = units * t / tasks, end = units * (t + 1) / tasks; u < end; u++) {
            long off = offset(u);
            MemorySegment src = w.residual != null ? w.residual : w.x;
            double n = features;
            if (rms) {
                float rrms = (float) (1.0 / Math.sqrt(kernels.runSumSquares(w.x, w.residual, off, features) / n + epsilon));
                kernels.runScale(src, w.y, off, features, rrms, w.weight);
                if (w.rstd != null) {
                    w.rstd.setAtIndex(F32, u, rrms);
                }
                continue;
            }
            float shift = src.get(F32, off);
            kernels.channelMoments(src, off, 0, 1, features, shift, null, s1, s2, t);
            // ChannelMoments' merge of one chunk: mean = K + S1 / n, M2 = S2 - S1^2 / n.
            double perValue = s1[t] / n;
            double m = shift + perValue;
            double var = Math.max(0.0, s2[t] - s1[t] * perValue) / n;
            float hi = (float) m, lo = (float) (m - hi);
            float rstd = (float) (1.0 / Math.sqrt(var + epsilon));
            kernels.runNormalize(src, w.y, off, features, hi, lo, rstd, w.weight, w.bias);
            if (w.mean != null) {
                w.mean.setAtIndex(F32, u, hi);
            }
            if (w.rstd != null) {
                w.rstd.setAtIndex(F32, u, rstd);
            }
        }
    }

    /**
     * Backward, given the forward's float mean (LayerNorm; RMSNorm has none) and rstd:
     * <pre>
     *   g = dy w,  dx = rstd (g - sum(g) / n) - (x - mean) rstd^3 sum(g (x - mean)) / n
     *   dweight = sum over units of dy (x - mean) rstd,   dbias = sum over units of dy
     * </pre>
     * as {@code fma(x - mean, b, fma(dy, fl(rstd w), c))} with b and c per unit in double,
     * rounded once. {@code dweight} and {@code dbias} may be null; {@code dx} may be {@code dy}
     * (each unit's dx is written after everything that reads its dy).
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment weight,
                         MemorySegment mean, MemorySegment rstd, MemorySegment dx,
                         MemorySegment dweight, MemorySegment dbias) {
        Scratch w = scratch.acquire();
        try {
            w.x = x;
            w.dy = dy;
            w.weight = effectiveWeight(weight, w);
            w.mean = mean;
            w.rstd = rstd;
            w.dx = dx;
            w.wantWeight = dweight != null;
            w.wantBias = dbias != null;
            if ((w.wantWeight || w.wantBias) && w.dw == null) {
                w.dw = new double[chunks][features];   // once per scratch: forward needs none
                w.db = new double[chunks][features];
            }
            workers.run(chunks, w, backwardTask);
            parameterGradients(w.dw, dweight);
            parameterGradients(w.db, dbias);
        } finally {
            scratch.release(w);
        }
    }

    private void backwardTask(Scratch w, int k) {
        double[] dw = w.wantWeight ? w.dw[k] : null, db = w.wantBias ? w.db[k] : null;
        if (dw != null) {
            java.util.Arrays.fill(dw, 0.0);
        }
        if (db != null) {
            java.util.Arrays.fill(db, 0.0);
        }
        double[] sums = w.sums[k];
        double n = features;
        for (long u = units * k / chunks, end = units * (k + 1) / chunks; u < end; u++) {
            long off = offset(u);
            float mu = rms ? 0f : w.mean.getAtIndex(F32, u);
            float rstd = w.rstd.getAtIndex(F32, u);
            double r = rstd;
            kernels.runGradientSums(w.x, w.dy, off, features, mu, w.weight, sums);
            if (dw != null || db != null) {
                kernels.runParameterGradients(w.x, w.dy, off, features, mu, r, dw, db);
            }
            double bd = -r * r * r * sums[1] / n, cd = rms ? 0 : -r * sums[0] / n;
            if (lossy(bd) || lossy(cd)) {
                gradientInDouble(w, off, mu, r, bd, cd);
            } else {
                kernels.runGradientInput(w.x, w.dy, w.dx, off, features, mu, rstd, w.weight,
                        (float) bd, (float) cd);
            }
        }
    }

    /**
     * Whether the nonzero {@code exact} rounds to a subnormal float or to zero: b for a standard
     * deviation above about 1e18 (b scales as rstd^3 times the deviations), where the float
     * coefficient would keep fewer than 24 bits while dx is an ordinary float.
     */
    static boolean lossy(double exact) {
        return Math.abs((float) exact) < Float.MIN_NORMAL && exact != 0;
    }

    /**
     * dx of one unit whose coefficient is {@link #lossy}: {@code fma(x - mean, b, fma(dy, rstd w,
     * c))} in double, rounded once, value by value (the same code for every kernel, so the same
     * bits). Rare: no network produces such values.
     */
    private void gradientInDouble(Scratch w, long off, float mean, double rstd, double b, double c) {
        for (int i = 0; i < features; i++) {
            long o = off + 4L * i;
            double a = rstd * w.weight.getAtIndex(F32, i);
            double dx = Math.fma(w.x.get(F32, o) - (double) mean, b, Math.fma(w.dy.get(F32, o), a, c));
            w.dx.set(F32, o, (float) dx);
        }
    }

    /** The chunks' per-feature sums added in chunk order, rounded once, into {@code out}. */
    private void parameterGradients(double[][] partial, MemorySegment out) {
        if (out == null) {
            return;
        }
        for (int f = 0; f < features; f++) {
            double s = partial[0][f];
            for (int k = 1; k < chunks; k++) {
                s += partial[k][f];
            }
            out.setAtIndex(F32, f, (float) s);
        }
    }

    /** The weight the kernels multiply by: the caller's, 1 + it (unit offset), or ones. */
    private MemorySegment effectiveWeight(MemorySegment weight, Scratch w) {
        if (weight == null) {
            return ones;
        }
        if (!unitOffset) {
            return weight;
        }
        for (int f = 0; f < features; f++) {
            w.onePlus[f] = 1f + weight.getAtIndex(F32, f);
        }
        return w.onePlusSegment;
    }

    /** Byte offset of unit u: row u / heads, head u % heads. */
    private long offset(long u) {
        return 4L * ((u / heads) * rowStride + (u % heads) * (long) features);
    }

    // ---------------------------------------------------------------------------------- scratch

    /** The working arrays of one call, one set per thread (see {@link Scratches}). */
    private final Scratches<Scratch> scratch = new Scratches<>(this::newScratch);

    private Scratch newScratch() {
        return new Scratch(features, chunks, Math.max(chunks, workers.parallelism()));
    }

    private static final class Scratch extends Scratches.Slot {
        boolean wantWeight, wantBias;
        MemorySegment x, residual, weight, bias, y, mean, rstd, dy, dx;
        /** Per task: a unit's shifted sums (task t writes entry t). */
        final double[] s1, s2;
        /** Per chunk: a unit's two gradient sums; the per-feature parameter sums. */
        final double[][] sums;
        double[][] dw, db;
        final float[] onePlus;
        final MemorySegment onePlusSegment;

        Scratch(int features, int chunks, int tasks) {
            s1 = new double[tasks];
            s2 = new double[tasks];
            sums = new double[chunks][2];
            onePlus = new float[features];
            onePlusSegment = MemorySegment.ofArray(onePlus);
        }

        @Override
        void endCall() {
            x = residual = weight = bias = y = mean = rstd = dy = dx = null;
        }
    }
}
