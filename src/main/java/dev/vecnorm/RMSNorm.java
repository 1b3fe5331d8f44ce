package dev.vecnorm;

import dev.vecnorm.kernel.BatchNormKernels;
import dev.vecnorm.kernel.KernelProvider;
import dev.vecnorm.kernel.RowNormEngine;
import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.ForkJoinPool;

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
public final class RMSNorm {

    private final RowGeometry rows;
    private final float epsilon;
    private final boolean unitOffset;
    private final int parallelism;
    private final RowNormEngine engine, serial;

    private RMSNorm(Builder b) {
        this.rows = RowGeometry.of(b.rows, b.features, b.heads, b.rowStride);
        this.epsilon = b.epsilon;
        this.unitOffset = b.unitOffset;
        this.parallelism = b.parallelism;
        BatchNormKernels kernels = b.kernels != null ? b.kernels : KernelProvider.kernels();
        ExecutorService executor = b.executor != null ? b.executor : ForkJoinPool.commonPool();
        this.serial = new RowNormEngine(kernels, rows.rows(), rows.heads(), rows.features(),
                rows.rowStride(), epsilon, true, unitOffset, 1, executor);
        this.engine = parallelism == 1 ? serial : new RowNormEngine(kernels, rows.rows(),
                rows.heads(), rows.features(), rows.rowStride(), epsilon, true, unitOffset,
                parallelism, executor);
    }

    /**
     * A builder for {@code rows} rows of {@code features} values: epsilon 2^-23 (PyTorch's
     * {@code eps=None} for float32, {@code torch.finfo(torch.float32).eps}), the weight as given,
     * one head, dense rows, parallelism 1.
     */
    public static Builder builder(long rows, int features) {
        return new Builder(rows, features);
    }

    public long rows() {
        return rows.rows();
    }

    public int heads() {
        return rows.heads();
    }

    public int features() {
        return rows.features();
    }

    public long rowStride() {
        return rows.rowStride();
    }

    public float epsilon() {
        return epsilon;
    }

    /** Whether the weight is applied as 1 + weight (Gemma). */
    public boolean unitOffset() {
        return unitOffset;
    }

    public int parallelism() {
        return parallelism;
    }

    /** Floats that x, y, dy and dx (and the residual) hold. */
    public long tensorFloats() {
        return rows.tensorFloats();
    }

    /** Floats of rrms: rows x heads, unit (r, h) at r x heads + h. */
    public long statisticsFloats() {
        return rows.units();
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
        (shareable ? engine : serial).forward(x, null, weight, null, y, null, rrms);
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
        (shareable ? engine : serial).forward(x, residual, weight, null, y, null, rrms);
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
        (shareable ? engine : serial).backward(x, dy, weight, null, rrms, dx, dweight, null);
    }

    @Override
    public String toString() {
        return "RMSNorm[rows=" + rows.rows() + ", heads=" + rows.heads() + ", features="
                + rows.features() + ", rowStride=" + rows.rowStride() + ", epsilon=" + epsilon
                + ", unitOffset=" + unitOffset + ", parallelism=" + parallelism + ", kernels="
                + engine.kernels().description() + "]";
    }

    /** Configures an {@link RMSNorm}; not thread-safe, reusable. */
    public static final class Builder {
        private final long rows;
        private final int features;
        private int heads = 1;
        private long rowStride = -1;
        private float epsilon = Math.ulp(1f);
        private boolean unitOffset;
        private int parallelism = 1;
        private ExecutorService executor;
        private BatchNormKernels kernels;

        private Builder(long rows, int features) {
            this.rows = rows;
            this.features = features;
            RowGeometry.of(rows, features, 1, -1);
        }

        /** The epsilon added to the mean square (default 2^-23). */
        public Builder epsilon(float epsilon) {
            this.epsilon = RowGeometry.epsilon(epsilon);
            return this;
        }

        /** With true the weight is applied as 1 + weight (Gemma's RMSNorm); default false. */
        public Builder unitOffset(boolean unitOffset) {
            this.unitOffset = unitOffset;
            return this;
        }

        /** Units per row (per-head Q/K norms), each of {@code features} floats (default 1). */
        public Builder heads(int heads) {
            if (heads < 1) {
                throw new IllegalArgumentException("heads: expected >= 1, got " + heads);
            }
            this.heads = heads;
            return this;
        }

        /** Floats from one row to the next, at least heads x features (default: exactly that). */
        public Builder rowStride(long rowStride) {
            if (rowStride < 1) {
                throw new IllegalArgumentException("rowStride: expected >= 1, got " + rowStride);
            }
            this.rowStride = rowStride;
            return this;
        }

        /** Threads a call may use (default 1); results do not depend on it. */
        public Builder parallelism(int parallelism) {
            this.parallelism = RowGeometry.parallelism(parallelism);
            return this;
        }

        /** The executor of the extra threads (default the common pool); a call never waits for it. */
        public Builder executor(ExecutorService executor) {
            this.executor = Objects.requireNonNull(executor, "executor: expected an ExecutorService, got null");
            return this;
        }

        /** Tests only: run these kernels instead of the JVM's choice. */
        Builder kernels(BatchNormKernels kernels) {
            this.kernels = kernels;
            return this;
        }

        /**
         * @throws IllegalArgumentException if rowStride is below heads x features
         */
        public RMSNorm build() {
            return new RMSNorm(this);
        }
    }
}
