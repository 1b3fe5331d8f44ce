package dev.vecnorm;

import dev.vecnorm.kernel.BatchNormKernels;
import dev.vecnorm.kernel.GroupNormEngine;
import dev.vecnorm.kernel.KernelProvider;
import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.ForkJoinPool;

/**
 * Group normalization (Wu and He, 2018) of an N x C x H x W tensor in NCHW or NHWC, as PyTorch's
 * {@code group_norm}: the C channels form {@code groups} groups of C / groups consecutive
 * channels, and each (image, group) is normalised with its own statistics over its
 * m = C / groups x H x W values, then scaled and shifted per channel:
 * <pre>
 *   mean = sum(x) / m,   var = sum((x - mean)^2) / m   (biased),   rstd = 1 / sqrt(var + eps)
 *   y = (x - mean) * rstd * weight[c] + bias[c]
 * </pre>
 * One pass of shifted sums in double for the statistics; y rounded as BatchNorm's:
 * {@code fma(x - hi, fl(weight rstd), fl(bias - lo weight rstd))} with hi + lo the double mean.
 * The statistics' bits are the same for every vector width, the scalar kernels and every
 * parallelism; NCHW and NHWC add in different orders. {@link BatchNorm}'s conventions hold.
 */
public final class GroupNorm {

    private final TensorShape shape;
    private final int groups;
    private final float epsilon;
    private final int parallelism;
    private final GroupNormEngine engine, serial;

    GroupNorm(TensorShape shape, int groups, float epsilon, int parallelism,
              ExecutorService executor, BatchNormKernels kernels) {
        Objects.requireNonNull(shape, "shape: expected a TensorShape, got null");
        if (groups < 1 || shape.channels() % groups != 0) {
            throw new IllegalArgumentException("groups: expected a divisor of channels = "
                    + shape.channels() + ", got " + groups);
        }
        this.shape = shape;
        this.groups = groups;
        this.epsilon = epsilon;
        this.parallelism = parallelism;
        BatchNormKernels k = kernels != null ? kernels : KernelProvider.kernels();
        ExecutorService e = executor != null ? executor : ForkJoinPool.commonPool();
        this.serial = new GroupNormEngine(k, shape, groups, epsilon, 1, e);
        this.engine = parallelism == 1 ? serial : new GroupNormEngine(k, shape, groups, epsilon, parallelism, e);
    }

    /**
     * A builder for {@code shape} in {@code groups} groups: epsilon 1e-5, parallelism 1.
     *
     * @param shape  the tensors' shape (NCHW or NHWC)
     * @param groups a divisor of the channels
     * @return a new builder
     * @throws IllegalArgumentException if groups does not divide the channels
     */
    public static Builder builder(TensorShape shape, int groups) {
        return new Builder(Objects.requireNonNull(shape, "shape: expected a TensorShape, got null"), groups);
    }

    /**
     * The shape every call's tensors have.
     *
     * @return the shape
     */
    public TensorShape shape() {
        return shape;
    }

    /**
     * The number of groups of consecutive channels.
     *
     * @return a divisor of the channels
     */
    public int groups() {
        return groups;
    }

    /**
     * The epsilon added to the variance.
     *
     * @return a positive finite number
     */
    public float epsilon() {
        return epsilon;
    }

    /**
     * The threads a call may use.
     *
     * @return at least 1
     */
    public int parallelism() {
        return parallelism;
    }

    /**
     * Normalises every (image, group).
     *
     * @param x      input, {@code shape.elements()} floats
     * @param weight scale per channel, or null for 1
     * @param bias   shift per channel, or null for 0
     * @param y      output; may be {@code x}
     * @param mean   output, the float mean per (image, group) at n x groups + g, or null
     * @param rstd   output, 1 / sqrt(var + eps) per (image, group), or null
     */
    public void forward(MemorySegment x, MemorySegment weight, MemorySegment bias, MemorySegment y,
                        MemorySegment mean, MemorySegment rstd) {
        long e = shape.elements(), s = (long) shape.batch() * groups;
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the input tensor", false)
                .input("weight", weight, c, "one scale per channel", true)
                .input("bias", bias, c, "one shift per channel", true)
                .output("y", y, e, "the output tensor", false)
                .output("mean", mean, s, "one mean per image and group", true)
                .output("rstd", rstd, s, "one rstd per image and group", true)
                .finish("y", "x");
        (shareable ? engine : serial).forward(x, weight, bias, y, mean, rstd, null, null, 0f);
    }

    /**
     * Gradients of {@link #forward} given the mean and rstd it wrote (PyTorch's
     * {@code native_group_norm_backward}): with g = dy weight[c] and sums over the group,
     * <pre>
     *   dx = rstd g - rstd sum(g) / m - (x - mean) rstd^3 sum(g (x - mean)) / m
     *   dweight[c] = sum over images of rstd sum(dy (x - mean)),   dbias[c] = sum of dy
     * </pre>
     * as {@code fma(x - mean, b, fma(dy, a, c))}, coefficients in double rounded once.
     *
     * @param dx output; may be {@code dy}
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment weight, MemorySegment mean,
                         MemorySegment rstd, MemorySegment dx, MemorySegment dweight,
                         MemorySegment dbias) {
        long e = shape.elements(), s = (long) shape.batch() * groups;
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the forward's input tensor", false)
                .input("dy", dy, e, "the gradient of y", false)
                .input("weight", weight, c, "one scale per channel", true)
                .input("mean", mean, s, "the forward's mean per image and group", false)
                .input("rstd", rstd, s, "the forward's rstd per image and group", false)
                .output("dx", dx, e, "the gradient of x", false)
                .output("dweight", dweight, c, "one gradient per channel", true)
                .output("dbias", dbias, c, "one gradient per channel", true)
                .finish("dx", "dy");
        (shareable ? engine : serial).backward(x, dy, weight, mean, rstd, dx, dweight, dbias);
    }

    /** The engine for InstanceNorm's running statistics. */
    GroupNormEngine engineFor(boolean shareable) {
        return shareable ? engine : serial;
    }

    @Override
    public String toString() {
        return "GroupNorm[" + shape + ", groups=" + groups + ", epsilon=" + epsilon
                + ", parallelism=" + parallelism + ", kernels=" + engine.kernels().description() + "]";
    }

    /** Configures a {@link GroupNorm}: epsilon (default 1e-5), parallelism, executor. */
    public static final class Builder extends NormBuilder<Builder> {
        private final TensorShape shape;
        private final int groups;

        private Builder(TensorShape shape, int groups) {
            super(1e-5f);
            if (groups < 1 || shape.channels() % groups != 0) {
                throw new IllegalArgumentException("groups: expected a divisor of channels = "
                        + shape.channels() + ", got " + groups);
            }
            this.shape = shape;
            this.groups = groups;
        }

        /**
         * A new immutable {@link GroupNorm}.
         *
         * @return the GroupNorm
         */
        public GroupNorm build() {
            return new GroupNorm(shape, groups, epsilon, parallelism, executor, kernels);
        }
    }
}
