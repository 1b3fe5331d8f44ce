package dev.vecnorm;

/**
 * The rows of LayerNorm and RMSNorm: {@code rows} rows {@code rowStride} floats apart, each
 * holding {@code heads} consecutive units of {@code features} floats that are normalised
 * separately (per-head norms), from the row's start. Gaps (a stride above heads x features) are
 * never read or written.
 */
record RowGeometry(long rows, int heads, int features, long rowStride) {

    /** Largest float count whose byte offsets fit in a long. */
    private static final long MAX_FLOATS = Long.MAX_VALUE / Float.BYTES;

    static RowGeometry of(long rows, int features, int heads, long rowStride) {
        if (rows < 1) {
            throw new IllegalArgumentException("rows: expected >= 1, got " + rows);
        }
        if (features < 1) {
            throw new IllegalArgumentException("features: expected >= 1, got " + features);
        }
        if (heads < 1) {
            throw new IllegalArgumentException("heads: expected >= 1, got " + heads);
        }
        long row = (long) heads * features;
        long stride = rowStride < 0 ? row : rowStride;
        if (stride < row) {
            throw new IllegalArgumentException("rowStride: expected >= heads * features = " + row
                    + " floats, got " + stride);
        }
        try {
            long floats = Math.addExact(Math.multiplyExact(rows - 1, stride), row);
            Math.multiplyExact(rows, (long) heads);
            if (floats > MAX_FLOATS) {
                throw new ArithmeticException();
            }
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("rows: expected at most " + MAX_FLOATS
                    + " floats in all, got rows=" + rows + " rowStride=" + stride + " heads=" + heads
                    + " features=" + features);
        }
        return new RowGeometry(rows, heads, features, stride);
    }

    /** Floats that x, y, dy and dx hold: (rows - 1) x rowStride + heads x features. */
    long tensorFloats() {
        return (rows - 1) * rowStride + (long) heads * features;
    }

    /** Units, and floats of a per-unit statistic: rows x heads. */
    long units() {
        return rows * heads;
    }
}
