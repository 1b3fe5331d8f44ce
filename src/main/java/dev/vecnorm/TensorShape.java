package dev.vecnorm;

import java.util.Objects;

/**
 * The shape of a BatchNorm input: {@code batch} images of {@code channels} channels, each channel
 * a plane of {@code spatial} values (H x W flattened), stored in {@code layout}.
 *
 * @param batch    N, at least 1
 * @param channels C, at least 1
 * @param spatial  H * W, at least 1
 * @param layout   the memory layout, not null
 */
public record TensorShape(int batch, int channels, long spatial, Layout layout) {

    /** Largest element count: byte offsets ({@code 4 * elements}) must fit in a {@code long}. */
    private static final long MAX_ELEMENTS = Long.MAX_VALUE / Float.BYTES;

    /**
     * Validates the dimensions.
     *
     * @throws IllegalArgumentException if a dimension is below 1 or the element count overflows
     * @throws NullPointerException     if {@code layout} is null
     */
    public TensorShape {
        Objects.requireNonNull(layout, "layout: expected NCHW or NHWC, got null");
        if (batch < 1) {
            throw new IllegalArgumentException("batch: expected >= 1, got " + batch);
        }
        if (channels < 1) {
            throw new IllegalArgumentException("channels: expected >= 1, got " + channels);
        }
        if (spatial < 1) {
            throw new IllegalArgumentException("spatial: expected >= 1, got " + spatial);
        }
        long perChannel;
        try {
            perChannel = Math.multiplyExact((long) batch, spatial);
            if (Math.multiplyExact(perChannel, (long) channels) > MAX_ELEMENTS) {
                throw new ArithmeticException();
            }
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("shape: expected at most " + MAX_ELEMENTS
                    + " elements, got batch=" + batch + " channels=" + channels + " spatial=" + spatial);
        }
    }

    /**
     * An N x C x H x W tensor in channels-first layout.
     *
     * @param n the batch size N
     * @param c the channels C
     * @param h the height H
     * @param w the width W
     * @return the shape, with {@code spatial = h * w}
     * @throws IllegalArgumentException if a dimension is below 1 or the element count overflows
     */
    public static TensorShape nchw(int n, int c, int h, int w) {
        return new TensorShape(n, c, spatialOf(h, w), Layout.NCHW);
    }

    /**
     * An N x C x H x W tensor in channels-last layout (memory order N, H, W, C).
     *
     * @param n the batch size N
     * @param c the channels C
     * @param h the height H
     * @param w the width W
     * @return the shape, with {@code spatial = h * w}
     * @throws IllegalArgumentException if a dimension is below 1 or the element count overflows
     */
    public static TensorShape nhwc(int n, int c, int h, int w) {
        return new TensorShape(n, c, spatialOf(h, w), Layout.NHWC);
    }

    /**
     * A 2-D input [N, C] (a fully connected layer's output): spatial = 1; both layouts coincide.
     *
     * @param n the batch size N
     * @param c the channels C (features)
     * @return the shape, in layout NCHW
     * @throws IllegalArgumentException if a dimension is below 1 or the element count overflows
     */
    public static TensorShape nc(int n, int c) {
        return new TensorShape(n, c, 1, Layout.NCHW);
    }

    /**
     * The same dimensions in another layout.
     *
     * @param other the layout of the new shape
     * @return a shape with this one's batch, channels and spatial size
     * @throws NullPointerException if {@code other} is null
     */
    public TensorShape withLayout(Layout other) {
        return new TensorShape(batch, channels, spatial, other);
    }

    /**
     * Number of floats in the tensor.
     *
     * @return {@code batch * channels * spatial}
     */
    public long elements() {
        return (long) batch * channels * spatial;
    }

    /**
     * Number of values each channel's statistics reduce over.
     *
     * @return M = {@code batch * spatial}
     */
    public long perChannel() {
        return (long) batch * spatial;
    }

    private static long spatialOf(int h, int w) {
        if (h < 1) {
            throw new IllegalArgumentException("h: expected >= 1, got " + h);
        }
        if (w < 1) {
            throw new IllegalArgumentException("w: expected >= 1, got " + w);
        }
        return (long) h * w;
    }
}
