package dev.vecnorm;

import java.util.SplittableRandom;

/** Seeded test tensors whose channels follow hostile distributions. */
final class TestData {

    /** How one channel's values are drawn. */
    enum Distribution {
        /** Mean in [-3, 3], standard deviation in [0.1, 3]. */
        NORMAL,
        /** Mean 1e4, standard deviation 1: |mean| / std = 1e4. */
        LARGE_MEAN,
        /** Every value 1e7: variance 0, output exactly beta. */
        CONSTANT,
        /** Values around 1e-20 (their squares are far below float's normal range). */
        TINY,
        /** Values around 1e18 (their squares overflow float). */
        HUGE,
        /** Random signs, magnitudes log-uniform in [1e-20, 1e18]. */
        MIXED_MAGNITUDES,
        /**
         * Random signs, magnitudes log-uniform in [1e30, 3.2e38], up to float's largest: x - mean
         * can exceed float's range, the variance does, and the scale can be subnormal.
         */
        EXTREME
    }

    private TestData() {
    }

    /** Fills a tensor of {@code shape}, channel c drawn from {@code kinds[c % kinds.length]}. */
    static float[] tensor(TensorShape shape, long seed, Distribution... kinds) {
        float[] x = new float[Math.toIntExact(shape.elements())];
        SplittableRandom random = new SplittableRandom(seed);
        for (int c = 0; c < shape.channels(); c++) {
            Distribution kind = kinds[c % kinds.length];
            double mean = random.nextDouble(-3, 3);
            double std = random.nextDouble(0.1, 3);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    x[Reference.index(shape, n, c, s)] = (float) draw(kind, random, mean, std);
                }
            }
        }
        return x;
    }

    private static double draw(Distribution kind, SplittableRandom r, double mean, double std) {
        return switch (kind) {
            case NORMAL -> mean + std * gaussian(r);
            case LARGE_MEAN -> 1e4 + gaussian(r);
            case CONSTANT -> 1e7;
            case TINY -> 1e-20 * (mean + std * gaussian(r));
            case HUGE -> 1e18 * (mean + std * gaussian(r));
            case MIXED_MAGNITUDES -> (r.nextBoolean() ? 1 : -1) * Math.pow(10, r.nextDouble(-20, 18));
            case EXTREME -> (r.nextBoolean() ? 1 : -1) * Math.pow(10, r.nextDouble(30, 38.5));
        };
    }

    /** Standard normal values, {@code count} of them. */
    static float[] gaussian(int count, long seed, double scale) {
        SplittableRandom random = new SplittableRandom(seed);
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) (scale * gaussian(random));
        }
        return v;
    }

    private static double gaussian(SplittableRandom r) {
        double u1 = r.nextDouble(), u2 = r.nextDouble();
        return Math.sqrt(-2 * Math.log1p(-u1)) * Math.cos(2 * Math.PI * u2);
    }

    /** Copies an NCHW tensor into NHWC order (or back, with the shapes swapped). */
    static float[] relayout(TensorShape from, float[] x, Layout to) {
        TensorShape target = from.withLayout(to);
        float[] out = new float[x.length];
        for (int n = 0; n < from.batch(); n++) {
            for (int c = 0; c < from.channels(); c++) {
                for (long s = 0; s < from.spatial(); s++) {
                    out[Reference.index(target, n, c, s)] = x[Reference.index(from, n, c, s)];
                }
            }
        }
        return out;
    }

    /** {@link #relayout} for per-element bounds. */
    static double[] relayoutBounds(TensorShape from, double[] v, Layout to) {
        TensorShape target = from.withLayout(to);
        double[] out = new double[v.length];
        for (int n = 0; n < from.batch(); n++) {
            for (int c = 0; c < from.channels(); c++) {
                for (long s = 0; s < from.spatial(); s++) {
                    out[Reference.index(target, n, c, s)] = v[Reference.index(from, n, c, s)];
                }
            }
        }
        return out;
    }
}
