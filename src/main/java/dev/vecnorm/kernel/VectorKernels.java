package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
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
 * as a {@code DOUBLES} vector has lanes. The reductions are in {@link VectorReductions}, the
 * transforms in {@link VectorTransforms}; this class only dispatches.
 */
final class VectorKernels implements BatchNormKernels {

    static final int BITS = configuredBits();
    static final VectorSpecies<Float> FLOATS = VectorShape.forBitSize(BITS).withLanes(float.class);
    static final VectorSpecies<Double> DOUBLES = VectorShape.forBitSize(BITS).withLanes(double.class);
    static final VectorSpecies<Float> HALF = VectorShape.forBitSize(BITS / 2).withLanes(float.class);
    static final int DL = DOUBLES.length();
    /** Channels from which the NHWC transforms take wide rows (see VectorTransforms). */
    static final int WIDE_ROW_CHANNELS = 1024;

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

    // ------------------------------------------------------------------------------------ NCHW

    @Override
    public void channelMoments(MemorySegment x, long base, long stride, int planes, long spatial,
                               double shift, double[] lanes, double[] s1, double[] s2, int c) {
        VectorReductions.channelMoments(x, base, stride, planes, spatial, shift, lanes, s1, s2, c);
    }

    @Override
    public void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                MemorySegment ws, boolean relu, int channels, long spatial,
                                long xShift, long yShift, int p0, int p1, float[] mean,
                                float[] scale, float[] offset) {
        VectorTransforms.planesNormalize(x, residual, y, ws, relu, channels, spatial, xShift, yShift, p0, p1, mean, scale, offset);
    }

    @Override
    public void channelGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, long base,
                                    long stride, long dyBase, long dyStride, long bit,
                                    long bitStride, int planes, long spatial, double mean,
                                    double[] lanes, double[] sumDy, double[] sumDyXmu, int c) {
        VectorReductions.channelGradientSums(x, dy, ws, base, stride, dyBase, dyStride, bit, bitStride,
                planes, spatial, mean, lanes, sumDy, sumDyXmu, c);
    }

    @Override
    public void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                    MemorySegment ws, MemorySegment dx, MemorySegment dresidual,
                                    int channels, long spatial, long xShift, long yShift, int p0,
                                    int p1, float[] mean, float[] a, float[] b, float[] c) {
        VectorTransforms.planesGradientInput(x, dy, y, ws, dx, dresidual, channels, spatial, xShift, yShift, p0, p1, mean, a, b, c);
    }

    // ------------------------------------------------------------------------------------ NHWC

    @Override
    public void rowMoments(MemorySegment x, int channels, long xRow, long row0, long row1, int c0,
                           int c1, double[] shift, double[] s1, double[] s2, boolean fromMemory) {
        VectorReductions.rowMoments(x, channels, xRow, row0, row1, c0, c1, shift, s1, s2, fromMemory);
    }

    @Override
    public void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                             MemorySegment ws, boolean relu, int channels, long inRow, long outRow,
                             long row0, long row1, int c0, int c1, float[] mean, float[] scale,
                             float[] offset) {
        VectorTransforms.rowNormalize(x, residual, y, ws, relu, channels, inRow, outRow, row0, row1, c0, c1, mean, scale, offset);
    }

    @Override
    public void rowGradientSums(MemorySegment x, MemorySegment dy, MemorySegment ws, int channels,
                                long xRow, long dyRow, long row0, long row1, int c0, int c1,
                                double[] mean, double[] sumDy, double[] sumDyXmu,
                                boolean fromMemory) {
        VectorReductions.rowGradientSums(x, dy, ws, channels, xRow, dyRow, row0, row1, c0, c1, mean, sumDy, sumDyXmu, fromMemory);
    }

    @Override
    public void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                 MemorySegment ws, MemorySegment dx, MemorySegment dresidual,
                                 int channels, long inRow, long outRow, long row0, long row1,
                                 int c0, int c1, float[] mean, float[] a, float[] b, float[] c) {
        VectorTransforms.rowGradientInput(x, dy, y, ws, dx, dresidual, channels, inRow, outRow, row0, row1, c0, c1, mean, a, b, c);
    }

    @Override
    public void maskedGradient(MemorySegment dy, long dyAt, MemorySegment ws, long bit, long count,
                               MemorySegment g, long gAt) {
        VectorTransforms.maskedGradient(dy, dyAt, ws, bit, count, g, gAt);
    }

    // ------------------------------------------------------------------------------------ runs

    @Override
    public double runSumSquares(MemorySegment x, MemorySegment residual, long off, int n) {
        return VectorRuns.runSumSquares(x, residual, off, n);
    }

    @Override
    public void runScale(MemorySegment x, MemorySegment y, long off, int n, float rstd,
                         MemorySegment weight) {
        VectorRuns.runScale(x, y, off, n, rstd, weight);
    }

    @Override
    public void runNormalize(MemorySegment x, MemorySegment y, long off, int n, float hi, float lo,
                             float rstd, MemorySegment weight, MemorySegment bias) {
        VectorRuns.runNormalize(x, y, off, n, hi, lo, rstd, weight, bias);
    }

    @Override
    public void runGradientSums(MemorySegment x, MemorySegment dy, long off, int n, double mean,
                                MemorySegment weight, double[] out) {
        VectorRuns.runGradientSums(x, dy, off, n, mean, weight, out);
    }

    @Override
    public void runGradientInput(MemorySegment x, MemorySegment dy, MemorySegment dx, long off,
                                 int n, float mean, float rstd, MemorySegment weight, float b,
                                 float c) {
        VectorRuns.runGradientInput(x, dy, dx, off, n, mean, rstd, weight, b, c);
    }

    @Override
    public void runParameterGradients(MemorySegment x, MemorySegment dy, long off, int n,
                                      double mean, double rstd, double[] dw, double[] db) {
        VectorRuns.runParameterGradients(x, dy, off, n, mean, rstd, dw, db);
    }
}
