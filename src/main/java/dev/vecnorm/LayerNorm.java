package dev.vecnorm;

import java.lang.foreign.MemorySegment;

/**
 * Layer normalization (Ba, Kiros and Hinton, 2016) over the last {@code features} values of each
 * row, as PyTorch's {@code layer_norm} with {@code normalized_shape = [features]}:
 * <pre>
 *   mean = sum(x) / n,   var = sum((x - mean)^2) / n   (biased),   rstd = 1 / sqrt(var + eps)
 *   y = (x - mean) * rstd * weight + bias
 * </pre>
 * per unit of n = {@code features} floats. A unit is a row, or with {@link Builder#heads heads}
 * one of a row's consecutive per-head parts; rows may be {@link Builder#rowStride spaced} wider
 * than their units (a slice of a wider buffer), and the gaps are never touched.
 *
 * <p>The statistics take one pass over the unit: shifted sums in double (about the unit's first
 * value) with BatchNorm's lane order, so the variance stays accurate when |mean| is many standard
 * deviations; a constant unit gives variance 0 and y exactly bias. Rounding: with m the double
 * mean, hi = (float) m, lo = (float) (m - hi), rstd rounded to float and a = fl(rstd weight),
 * {@code y = fma(x - hi, a, fma(-lo, a, bias))}. The mean written is hi, the rstd the float one.
 *
 * <p>BatchNorm's conventions hold for every call (see {@link BatchNorm}): exact sizes, nulls where
 * allowed only, errors that name the argument before anything is written, {@code y} may be
 * {@code x} and {@code dx} may be {@code dy}, heap segments, NaN confined to its unit's outputs
 * (backward's dweight and dbias sum over all units), bitwise-identical results for every vector
 * width, the scalar kernels and every parallelism, no allocation per call in the steady state.
 * Values beyond about 1e30 in magnitude are outside what the rounding above is meant for.
 */
public final class LayerNorm extends RowNorm {

    private LayerNorm(Builder b) {
        super(b, false, false);
    }

    /**
     * A builder for {@code rows} rows of {@code features} values: epsilon 1e-5 (PyTorch's), one
     * head, dense rows, parallelism 1.
     *
     * @param rows     at least 1
     * @param features the size normalised over, at least 1
     * @return a new builder
     * @throws IllegalArgumentException if a size is below 1
     */
    public static Builder builder(long rows, int features) {
        return new Builder(rows, features);
    }

    /**
     * Normalises every unit (see the class comment).
     *
     * @param x      input, {@link #tensorFloats()} floats
     * @param weight scale per feature ({@code features} floats), or null for 1
     * @param bias   shift per feature, or null for 0
     * @param y      output, {@link #tensorFloats()} floats; may be {@code x}
     * @param mean   output, the float mean per unit ({@link #statisticsFloats()}), or null
     * @param rstd   output, 1 / sqrt(var + eps) per unit, or null
     */
    public void forward(MemorySegment x, MemorySegment weight, MemorySegment bias, MemorySegment y,
                        MemorySegment mean, MemorySegment rstd) {
        long e = rows.tensorFloats(), s = rows.units();
        int f = rows.features();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the input rows", false)
                .input("weight", weight, f, "one scale per feature", true)
                .input("bias", bias, f, "one shift per feature", true)
                .output("y", y, e, "the output rows", false)
                .output("mean", mean, s, "one mean per row and head", true)
                .output("rstd", rstd, s, "one rstd per row and head", true)
                .finish("y", "x");
        engine(shareable).forward(x, null, weight, bias, y, mean, rstd);
    }

    /**
     * Gradients of {@link #forward}, given the mean and rstd it wrote (PyTorch's
     * {@code native_layer_norm_backward}): with xhat = (x - mean) rstd and g = dy weight,
     * <pre>
     *   dx = rstd (g - sum(g) / n - xhat sum(g xhat) / n)
     *   dweight = sum over units of dy xhat,   dbias = sum over units of dy
     * </pre>
     * computed as {@code fma(x - mean, b, fma(dy, fl(rstd weight), c))} with b and c per unit in
     * double, rounded once; the parameter gradients in double, rounded once.
     *
     * @param dx      output, {@link #tensorFloats()} floats; may be {@code dy}
     * @param dweight output ({@code features} floats), or null
     * @param dbias   output ({@code features} floats), or null
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment weight, MemorySegment mean,
                         MemorySegment rstd, MemorySegment dx, MemorySegment dweight,
                         MemorySegment dbias) {
        long e = rows.tensorFloats(), s = rows.units();
        int f = rows.features();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the forward's input rows", false)
                .input("dy", dy, e, "the gradient of y", false)
                .input("weight", weight, f, "one scale per feature", true)
                .input("mean", mean, s, "the forward's mean per row and head", false)
                .input("rstd", rstd, s, "the forward's rstd per row and head", false)
                .output("dx", dx, e, "the gradient of x", false)
                .output("dweight", dweight, f, "one gradient per feature", true)
                .output("dbias", dbias, f, "one gradient per feature", true)
                .finish("dx", "dy");
        engine(shareable).backward(x, dy, weight, mean, rstd, dx, dweight, dbias);
    }

    @Override
    public String toString() {
        return describe("LayerNorm", "");
    }

    /** Configures a {@link LayerNorm}: epsilon, heads, rowStride, parallelism, executor. */
    public static final class Builder extends RowNorm.Builder<Builder> {

        private Builder(long rows, int features) {
            super(rows, features, 1e-5f);
        }

        /**
         * A new immutable {@link LayerNorm}.
         *
         * @return the LayerNorm
         * @throws IllegalArgumentException if rowStride is below heads x features
         */
        public LayerNorm build() {
            return new LayerNorm(this);
        }
    }
}
