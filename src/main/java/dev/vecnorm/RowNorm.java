package dev.vecnorm;

import dev.vecnorm.kernel.RowNormEngine;

/**
 * What LayerNorm and RMSNorm share: the rows' geometry (see {@link RowGeometry}), epsilon,
 * parallelism and their engines (the parallel one, and a serial one for segments confined to
 * the calling thread).
 */
abstract class RowNorm {

    final RowGeometry rows;
    private final float epsilon;
    private final int parallelism;
    private final RowNormEngine engine, serial;

    RowNorm(Builder<?> b, boolean rms, boolean unitOffset) {
        this.rows = RowGeometry.of(b.rows, b.features, b.heads, b.rowStride);
        this.epsilon = b.epsilon;
        this.parallelism = b.parallelism;
        this.serial = new RowNormEngine(b.kernelsOrDefault(), rows.rows(), rows.heads(),
                rows.features(), rows.rowStride(), epsilon, rms, unitOffset, 1, b.executorOrDefault());
        this.engine = parallelism == 1 ? serial : new RowNormEngine(b.kernelsOrDefault(), rows.rows(),
                rows.heads(), rows.features(), rows.rowStride(), epsilon, rms, unitOffset,
                parallelism, b.executorOrDefault());
    }

    /**
     * The number of rows.
     *
     * @return at least 1
     */
    public long rows() {
        return rows.rows();
    }

    /**
     * The units per row, each of {@link #features()} floats, normalised separately.
     *
     * @return at least 1
     */
    public int heads() {
        return rows.heads();
    }

    /**
     * The floats of one unit: the size normalised over.
     *
     * @return at least 1
     */
    public int features() {
        return rows.features();
    }

    /**
     * The floats from one row to the next.
     *
     * @return at least heads x features
     */
    public long rowStride() {
        return rows.rowStride();
    }

    /**
     * The epsilon added before the square root.
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
     * The floats that x, y, dy and dx hold: (rows - 1) x rowStride + heads x features.
     *
     * @return the tensors' size in floats
     */
    public long tensorFloats() {
        return rows.tensorFloats();
    }

    /**
     * The floats of a per-unit statistic (mean, rstd, rrms): rows x heads, unit (r, h) at
     * r x heads + h.
     *
     * @return rows x heads
     */
    public long statisticsFloats() {
        return rows.units();
    }

    RowNormEngine engine(boolean shareable) {
        return shareable ? engine : serial;
    }

    String describe(String name, String extra) {
        return name + "[rows=" + rows.rows() + ", heads=" + rows.heads() + ", features="
                + rows.features() + ", rowStride=" + rows.rowStride() + ", epsilon=" + epsilon
                + extra + ", parallelism=" + parallelism + ", kernels="
                + engine.kernels().description() + "]";
    }

    /** The rows' part of LayerNorm's and RMSNorm's builders. */
    abstract static class Builder<B extends Builder<B>> extends NormBuilder<B> {
        final long rows;
        final int features;
        int heads = 1;
        long rowStride = -1;

        Builder(long rows, int features, float defaultEpsilon) {
            super(defaultEpsilon);
            RowGeometry.of(rows, features, 1, -1);
            this.rows = rows;
            this.features = features;
        }

        @SuppressWarnings("unchecked")
        private B self() {
            return (B) this;
        }

        /**
         * The units per row (per-head norms), consecutive from the row's start, each of
         * {@code features} floats (default 1).
         *
         * @param heads at least 1
         * @return this builder
         * @throws IllegalArgumentException unless at least 1
         */
        public B heads(int heads) {
            if (heads < 1) {
                throw new IllegalArgumentException("heads: expected >= 1, got " + heads);
            }
            this.heads = heads;
            return self();
        }

        /**
         * The floats from one row to the next (default heads x features: dense rows); larger for
         * rows that are slices of a wider buffer. Gaps are never read or written.
         *
         * @param rowStride at least heads x features ({@code build()} checks it)
         * @return this builder
         * @throws IllegalArgumentException unless at least 1
         */
        public B rowStride(long rowStride) {
            if (rowStride < 1) {
                throw new IllegalArgumentException("rowStride: expected >= 1, got " + rowStride);
            }
            this.rowStride = rowStride;
            return self();
        }
    }
}
