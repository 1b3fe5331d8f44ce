package dev.vecnorm;

/**
 * Memory layout of a dense float32 activation tensor; the spatial dimensions are flattened.
 *
 * <ul>
 *   <li>{@link #NCHW}: channels first. Element {@code (n, c, s)} is at float index
 *       {@code (n * C + c) * spatial + s}; a channel's data is {@code N} contiguous planes.</li>
 *   <li>{@link #NHWC}: channels last. Element {@code (n, s, c)} is at float index
 *       {@code (n * spatial + s) * C + c}; a row of {@code C} channel values is contiguous.</li>
 * </ul>
 */
public enum Layout {
    /** Channels first (PyTorch's default {@code contiguous_format}, oneDNN {@code nchw}). */
    NCHW,
    /** Channels last (PyTorch's {@code channels_last}, oneDNN {@code nhwc}). */
    NHWC
}
