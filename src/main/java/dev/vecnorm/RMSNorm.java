package dev.vecnorm;

import java.lang.foreign.MemorySegment;

/**
 * Root-mean-square normalization (Zhang and Sennrich, 2019) over the last {@code features}
 * values of each row, as PyTorch's {@code rms_norm}:
 * <pre>
 *   rrms = 1 / sqrt(sum(x^2) / n + eps),   y = x * rrms * w'
 * </pre>
 * per unit of n = {@code features} floats, with w' the weight, or 1 + weight with
 * {@link Builder#unitOffset unitOffset} (Gemma's). Units, heads and row strides as
 * {@link LayerNorm}'s, whose conventions every call follows.
 *
 * <p>The sum of squares is taken in double with BatchNorm's lane order (each square exact in
 * double), rrms computed in double and rounded once; {@code y = fl(x * fl(rrms * w'))}, with
 * w' = fl(1 + weight) for the unit offset. Scaling a unit by a power of two therefore scales
 * its rrms by the inverse exactly, and leaves y's bits unchanged, wherever eps is negligible.
 */
public final class RMSNorm extends RowNorm {

    private final boolean unitOffset;

    private RMSNorm(Builder b) {
        super(b, true, b.unitOffset);
        this.unitOffset = b.unitOffset;
    }

    /**
     * A builder for {@code rows} rows of {@code features} values: epsilon 2^-23 (PyTorch's
     * {@code eps=None} for float32, {@code torch.finfo(torch.float32).eps}), the weight as given,
     * one head, dense rows, parallelism 1.
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
     * Whether the weight is applied as 1 + weight (Gemma).
     *
     * @return the builder's choice (default false)
     */
    public boolean unitOffset() {
        return unitOffset;
    }

    /**
     * Normalises every unit.
     *
     * @param x      input, {@link #tensorFloats()} floats
     * @param weight scale per feature ({@code features} floats), or null for w' = 1
     * @param y      output; may be {@code x}
     * @param rrms   output, 1 / sqrt(mean(x^2) + eps) per unit ({@link #statisticsFloats()}), or null
     */
    public void forward(MemorySegment x, MemorySegment weight, MemorySegment y, MemorySegment rrms) {
        long e = rows.tensorFloats();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the input rows", false)
                .input("weight", weight, rows.features(), "one scale per feature", true)
                .output("y", y, e, "the output rows", false)
                .output("rrms", rrms, rows.units(), "one rrms per row and head", true)
                .finish("y", "x");
        engine(shareable).forward(x, null, weight, null, y, null, rrms);
    }

    /**
     * A pre-norm transformer block's fused add and norm: {@code h = fl(x + residual)} is written
     * into {@code residual} (the new hidden state), then {@code y = rmsnorm(h)} as
     * {@link #forward}. The same bits as adding, then calling {@link #forward} on h.
     *
     * @param residual read and written: the hidden state in, h out
     * @param y        output; may be {@code x}, not the residual
     */
    public void forwardWithResidual(MemorySegment x, MemorySegment residual, MemorySegment weight,
                                    MemorySegment y, MemorySegment rrms) {
        long e = rows.tensorFloats();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the input rows", false)
                .input("weight", weight, rows.features(), "one scale per feature", true)
                .output("residual", residual, e, "the residual rows, overwritten by x + residual", false)
                .output("y", y, e, "the output rows", false)
                .output("rrms", rrms, rows.units(), "one rrms per row and head", true)
                .finish("y", "x");
        engine(shareable).forward(x, residual, weight, null, y, null, rrms);
    }

    /**
     * Gradients of {@link #forward} given the rrms it wrote: with g = dy w',
     * <pre>
     *   dx = rrms g - x rrms^3 sum(g x) / n,   dweight = sum over units of dy x rrms
     * </pre>
     * (the same dweight with the unit offset), computed as
     * {@code fma(x, b, fl(dy fl(rrms w')))} with b per unit in double, rounded once. After
     * {@link #forwardWithResidual}, x is h and dx is the gradient of h (the residual's and x's).
     *
     * @param dx      output; may be {@code dy}
     * @param dweight output ({@code features} floats), or null
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment weight, MemorySegment rrms,
                         MemorySegment dx, MemorySegment dweight) {
        long e = rows.tensorFloats();
        int f = rows.features();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the forward's input rows", false)
                .input("dy", dy, e, "the gradient of y", false)
                .input("weight", weight, f, "one scale per feature", true)
                .input("rrms", rrms, rows.units(), "the forward's rrms per row and head", false)
                .output("dx", dx, e, "the gradient of x", false)
                .output("dweight", dweight, f, "one gradient per feature", true)
                .finish("dx", "dy");
        engine(shareable).backward(x, dy, weight, null, rrms, dx, dweight, null);
    }

    @Override
    public String toString() {
        return describe("RMSNorm", ", unitOffset=" + unitOffset);
    }

    /** Configures an {@link RMSNorm}: epsilon, unitOffset, heads, rowStride, parallelism, executor. */
    public static final class Builder extends RowNorm.Builder<Builder> {
        private boolean unitOffset;

        private Builder(long rows, int features) {
            super(rows, features, Math.ulp(1f));
        }

        /**
         * With true the weight is applied as 1 + weight (Gemma's RMSNorm); default false.
         *
         * @param unitOffset whether to add 1 to the weight
         * @return this builder
         */
        public Builder unitOffset(boolean unitOffset) {
            this.unitOffset = unitOffset;
            return this;
        }

        /**
         * A new immutable {@link RMSNorm}.
         *
         * @return the RMSNorm
         * @throws IllegalArgumentException if rowStride is below heads x features
         */
        public RMSNorm build() {
            return new RMSNorm(this);
        }
    }
}
