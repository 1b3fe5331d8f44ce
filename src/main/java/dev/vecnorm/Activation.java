package dev.vecnorm;

/**
 * The activation a {@link BatchNorm} fuses into its forward output, chosen with
 * {@link BatchNorm.Builder#activation(Activation)}: the forward calls write {@code act(bn(x))},
 * or {@code act(bn(x) + residual)} through the overloads that take a residual, and backward is
 * the gradient of that composition.
 */
public enum Activation {
    /** The identity: {@code act(v) = v}. */
    NONE,
    /**
     * {@code act(v) = v <= 0 ? +0 : v}: the same as {@code Math.max(0f, v)}, bit for bit, so
     * a NaN stays NaN (with its bits) and -0 becomes +0. Its gradient passes dy where the
     * output is above 0 (or NaN, as PyTorch's {@code threshold_backward}) and is 0 elsewhere.
     */
    RELU
}
