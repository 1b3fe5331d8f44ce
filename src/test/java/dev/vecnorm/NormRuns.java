package dev.vecnorm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Runs the norm family on float arrays (copied into native segments, 64-byte aligned, or given
 * as heap segments) and returns every output as arrays.
 */
final class NormRuns {

    private NormRuns() {
    }

    /** Forward outputs: y, and per unit mean (LayerNorm, GroupNorm) and rstd (or rrms). */
    record Forward(float[] y, float[] mean, float[] rstd) {
    }

    /** Backward outputs. */
    record Backward(float[] dx, float[] dw, float[] db) {
    }

    private static MemorySegment in(Arena a, float[] v, boolean heap) {
        return v == null ? null : heap ? MemorySegment.ofArray(v.clone()) : Segments.of(a, v);
    }

    private static MemorySegment out(Arena a, long floats, boolean heap, float fill) {
        float[] v = new float[Math.toIntExact(floats)];
        java.util.Arrays.fill(v, fill);
        return heap ? MemorySegment.ofArray(v) : Segments.of(a, v);
    }

    private static float[] array(MemorySegment s) {
        return s == null ? null : Segments.toArray(s);
    }

    /** y starts as {@code fill} everywhere, so that gaps between strided rows can be checked. */
    static Forward layerNorm(LayerNorm ln, float[] x, float[] w, float[] b, boolean heap, float fill) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment y = out(a, ln.tensorFloats(), heap, fill);
            MemorySegment mean = out(a, ln.statisticsFloats(), heap, 0), rstd = out(a, ln.statisticsFloats(), heap, 0);
            ln.forward(in(a, x, heap), in(a, w, heap), in(a, b, heap), y, mean, rstd);
            return new Forward(array(y), array(mean), array(rstd));
        }
    }

    static Backward layerNormBackward(LayerNorm ln, float[] x, float[] dy, float[] w, float[] mean,
                                      float[] rstd, boolean inPlace) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment dys = in(a, dy, false);
            MemorySegment dx = inPlace ? dys : out(a, ln.tensorFloats(), false, 0);
            MemorySegment dw = out(a, ln.features(), false, 0), db = out(a, ln.features(), false, 0);
            ln.backward(in(a, x, false), dys, in(a, w, false), in(a, mean, false), in(a, rstd, false), dx, dw, db);
            return new Backward(array(dx), array(dw), array(db));
        }
    }

    static Forward rmsNorm(RMSNorm rms, float[] x, float[] w, boolean heap, float fill) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment y = out(a, rms.tensorFloats(), heap, fill);
            MemorySegment rrms = out(a, rms.statisticsFloats(), heap, 0);
            rms.forward(in(a, x, heap), in(a, w, heap), y, rrms);
            return new Forward(array(y), null, array(rrms));
        }
    }

    /** forwardWithResidual: returns y and rrms; {@code residual} is overwritten with h. */
    static Forward rmsNormWithResidual(RMSNorm rms, float[] x, float[] residual, float[] w) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment y = out(a, rms.tensorFloats(), false, 0), r = in(a, residual, false);
            MemorySegment rrms = out(a, rms.statisticsFloats(), false, 0);
            rms.forwardWithResidual(in(a, x, false), r, in(a, w, false), y, rrms);
            System.arraycopy(array(r), 0, residual, 0, residual.length);
            return new Forward(array(y), null, array(rrms));
        }
    }

    static Backward rmsNormBackward(RMSNorm rms, float[] x, float[] dy, float[] w, float[] rrms,
                                    boolean inPlace) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment dys = in(a, dy, false);
            MemorySegment dx = inPlace ? dys : out(a, rms.tensorFloats(), false, 0);
            MemorySegment dw = out(a, rms.features(), false, 0);
            rms.backward(in(a, x, false), dys, in(a, w, false), in(a, rrms, false), dx, dw);
            return new Backward(array(dx), array(dw), null);
        }
    }

    static Forward groupNorm(GroupNorm gn, float[] x, float[] w, float[] b, boolean heap, boolean inPlace) {
        try (Arena a = Arena.ofConfined()) {
            long units = (long) gn.shape().batch() * gn.groups();
            MemorySegment xs = in(a, x, heap);
            MemorySegment y = inPlace ? xs : out(a, gn.shape().elements(), heap, 0);
            MemorySegment mean = out(a, units, heap, 0), rstd = out(a, units, heap, 0);
            gn.forward(xs, in(a, w, heap), in(a, b, heap), y, mean, rstd);
            return new Forward(array(y), array(mean), array(rstd));
        }
    }

    static Backward groupNormBackward(GroupNorm gn, float[] x, float[] dy, float[] w, float[] mean,
                                      float[] rstd, boolean inPlace) {
        try (Arena a = Arena.ofConfined()) {
            int c = gn.shape().channels();
            MemorySegment dys = in(a, dy, false);
            MemorySegment dx = inPlace ? dys : out(a, gn.shape().elements(), false, 0);
            MemorySegment dw = out(a, c, false, 0), db = out(a, c, false, 0);
            gn.backward(in(a, x, false), dys, in(a, w, false), in(a, mean, false), in(a, rstd, false), dx, dw, db);
            return new Backward(array(dx), array(dw), array(db));
        }
    }

    /** Dense rows x heads x features values spread over a strided buffer whose gaps hold {@code fill}. */
    static float[] strided(float[] dense, long rows, int heads, int features, long rowStride, float fill) {
        float[] out = new float[Math.toIntExact((rows - 1) * rowStride + (long) heads * features)];
        java.util.Arrays.fill(out, fill);
        for (long r = 0; r < rows; r++) {
            System.arraycopy(dense, Math.toIntExact(r * heads * features), out, Math.toIntExact(r * rowStride), heads * features);
        }
        return out;
    }
}
