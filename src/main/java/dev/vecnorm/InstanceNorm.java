package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * Instance normalization (Ulyanov, Vedaldi and Lempitsky, 2016), as PyTorch's
 * {@code instance_norm}: each (image, channel) normalised with its own statistics over its H x W
 * values, then scaled and shifted per channel. It is {@link GroupNorm} with one group per channel
 * (the same kernels and bits), plus PyTorch's {@code track_running_stats}: the training forward
 * may update running statistics, and {@link #forwardInference} normalises with them as
 * {@link BatchNorm#forwardInference} does. {@link BatchNorm}'s conventions hold.
 */
public final class InstanceNorm {

    private final GroupNorm norm;
    private final BatchNorm inference;
    private final float momentum;

    private InstanceNorm(Builder b) {
        this.norm = new GroupNorm(b.shape, b.shape.channels(), b.epsilon, b.parallelism, b.executor, b.kernels);
        BatchNorm.Builder bn = BatchNorm.builder(b.shape).epsilon(b.epsilon).parallelism(b.parallelism).kernels(b.kernels);
        if (b.executor != null) {
            bn.executor(b.executor);
        }
        this.inference = bn.build();
        this.momentum = b.momentum;
    }

    /**
     * A builder for {@code shape}: epsilon 1e-5, momentum 0.1 (PyTorch's), parallelism 1.
     *
     * @param shape the tensors' shape (NCHW or NHWC)
     * @return a new builder
     */
    public static Builder builder(TensorShape shape) {
        return new Builder(Objects.requireNonNull(shape, "shape: expected a TensorShape, got null"));
    }

    /**
     * The shape every call's tensors have.
     *
     * @return the shape
     */
    public TensorShape shape() {
        return norm.shape();
    }

    /**
     * The epsilon added to the variance.
     *
     * @return a positive finite number
     */
    public float epsilon() {
        return norm.epsilon();
    }

    /**
     * The running statistics' momentum: the weight of the batch value (PyTorch's).
     *
     * @return a number in [0, 1]
     */
    public float momentum() {
        return momentum;
    }

    /**
     * The threads a call may use.
     *
     * @return at least 1
     */
    public int parallelism() {
        return norm.parallelism();
    }

    /**
     * Normalises every (image, channel) with its own statistics; mean and rstd (batch x channels
     * floats, at n x channels + c) may be null. As {@link GroupNorm#forward}.
     */
    public void forward(MemorySegment x, MemorySegment weight, MemorySegment bias, MemorySegment y,
                        MemorySegment mean, MemorySegment rstd) {
        norm.forward(x, weight, bias, y, mean, rstd);
    }

    /**
     * {@link #forward}, and the running statistics updated as PyTorch's training forward with
     * {@code track_running_stats=True}:
     * <pre>
     *   runningMean = (1 - momentum) runningMean + momentum avg_n(mean[n, c])
     *   runningVar  = (1 - momentum) runningVar  + momentum avg_n(var[n, c] HW / (HW - 1))
     * </pre>
     * from the double statistics, rounded once.
     *
     * @throws IllegalArgumentException as {@link #forward}, if a running vector is not
     *                                  {@code channels} floats, or if H x W = 1 (the unbiased
     *                                  variance of one value is not defined)
     */
    public void forward(MemorySegment x, MemorySegment weight, MemorySegment bias, MemorySegment y,
                        MemorySegment mean, MemorySegment rstd, MemorySegment runningMean,
                        MemorySegment runningVar) {
        TensorShape shape = norm.shape();
        if (shape.spatial() == 1) {
            throw new IllegalArgumentException("shape: expected more than 1 spatial element when"
                    + " updating running statistics, got " + shape);
        }
        long e = shape.elements(), s = (long) shape.batch() * shape.channels();
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, e, "the input tensor", false)
                .input("weight", weight, c, "one scale per channel", true)
                .input("bias", bias, c, "one shift per channel", true)
                .output("y", y, e, "the output tensor", false)
                .output("mean", mean, s, "one mean per image and channel", true)
                .output("rstd", rstd, s, "one rstd per image and channel", true)
                .output("runningMean", runningMean, c, "the running mean per channel", false)
                .output("runningVar", runningVar, c, "the running variance per channel", false)
                .finish("y", "x");
        norm.engineFor(shareable).forward(x, weight, bias, y, mean, rstd, runningMean, runningVar, momentum);
    }

    /**
     * Eval mode with tracked statistics: y = (x - runningMean[c]) / sqrt(runningVar[c] + eps)
     * weight[c] + bias[c], exactly {@link BatchNorm#forwardInference}. {@code y} may be {@code x}.
     */
    public void forwardInference(MemorySegment x, MemorySegment weight, MemorySegment bias,
                                 MemorySegment runningMean, MemorySegment runningVar, MemorySegment y) {
        inference.forwardInference(x, weight, bias, runningMean, runningVar, y);
    }

    /** Gradients of {@link #forward} given the mean and rstd it wrote; as {@link GroupNorm#backward}. */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment weight, MemorySegment mean,
                         MemorySegment rstd, MemorySegment dx, MemorySegment dweight,
                         MemorySegment dbias) {
        norm.backward(x, dy, weight, mean, rstd, dx, dweight, dbias);
    }

    @Override
    public String toString() {
        return "InstanceNorm[" + norm.shape() + ", epsilon=" + norm.epsilon() + ", momentum="
                + momentum + ", parallelism=" + norm.parallelism() + "]";
    }

    /** Configures an {@link InstanceNorm}: epsilon (default 1e-5), momentum, parallelism, executor. */
    public static final class Builder extends NormBuilder<Builder> {
        private final TensorShape shape;
        private float momentum = 0.1f;

        private Builder(TensorShape shape) {
            super(1e-5f);
            this.shape = shape;
        }

        /**
         * The running statistics' momentum, the weight of the batch value (default 0.1, PyTorch's).
         *
         * @param momentum in [0, 1]
         * @return this builder
         * @throws IllegalArgumentException unless in [0, 1]
         */
        public Builder momentum(float momentum) {
            if (!(momentum >= 0 && momentum <= 1)) {
                throw new IllegalArgumentException("momentum: expected a number in [0, 1], got " + momentum);
            }
            this.momentum = momentum;
            return this;
        }

        /**
         * A new immutable {@link InstanceNorm}.
         *
         * @return the InstanceNorm
         */
        public InstanceNorm build() {
            return new InstanceNorm(this);
        }
    }
}
