package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.Arrays;

/**
 * Comparisons of kernel results with {@link Reference}, each element against the bound that
 * {@link Bounds} derives for it.
 */
final class Expect {

    private Expect() {
    }

    static void within(String what, double actual, double expected, double bound, String where) {
        double error = Math.abs(actual - expected);
        if (!(error <= bound) && !(Double.isNaN(expected) && Double.isNaN(actual))) {
            fail(what + " at " + where + ": got " + actual + ", expected " + expected + " +- " + bound
                    + " (error " + error + ", " + (bound > 0 ? error / bound : Double.POSITIVE_INFINITY)
                    + " x the bound)");
        }
    }

    /**
     * The error bounds of channel c's double mean and variance as forwardTraining reduces it:
     * in the chunks of {@link BatchNorm#statisticsChunks()} (which depend on the shape only),
     * each about its own first value ({@link Bounds#partsError}).
     */
    static Bounds.StatisticsError statisticsError(TensorShape shape, float[] x, int c) {
        return statisticsError(shape, x, c, chunks(shape));
    }

    /** forwardTraining's chunks for the shape, in images (NCHW) or rows (NHWC). */
    static long[] chunks(TensorShape shape) {
        return CHUNKS.computeIfAbsent(shape, sh -> BatchNorm.builder(sh).build().statisticsChunks());
    }

    private static final java.util.Map<TensorShape, long[]> CHUNKS = new java.util.concurrent.ConcurrentHashMap<>();

    /** {@link #statisticsError(TensorShape, float[], int)} for parts of the given boundaries (images or rows). */
    static Bounds.StatisticsError statisticsError(TensorShape shape, float[] x, int c, long[] units) {
        double[] v = new double[Math.toIntExact(shape.perChannel())];
        int j = 0;
        for (int n = 0; n < shape.batch(); n++) {
            for (long s = 0; s < shape.spatial(); s++) {
                v[j++] = x[Reference.index(shape, n, c, s)];
            }
        }
        long perUnit = shape.perChannel() / units[units.length - 1];
        long[] bounds = new long[units.length];
        for (int i = 0; i < units.length; i++) {
            bounds[i] = units[i] * perUnit;
        }
        return Bounds.partsError(v, bounds);
    }

    /** The float mean's bound: its rounding, the double mean's error, a subnormal rounding. */
    static double meanBound(TensorShape shape, float[] x, int c, double mu) {
        return Bounds.U * Math.abs(mu) + statisticsError(shape, x, c).mean() + Bounds.TINY;
    }

    /** The bound of {@link Bounds#trainingOutput} for every element of y (in the shape's layout). */
    static double[] trainingOutputBounds(TensorShape shape, float[] x, float[] gamma, float[] beta,
                                         float eps) {
        return trainingOutputBounds(shape, x, gamma, beta, eps, chunks(shape));
    }

    /** {@link #trainingOutputBounds} for statistics reduced in parts of these boundaries. */
    static double[] trainingOutputBounds(TensorShape shape, float[] x, float[] gamma, float[] beta,
                                         float eps, long[] parts) {
        Reference.Moments ref = Reference.moments(shape, x);
        double[] bounds = new double[x.length];
        for (int c = 0; c < shape.channels(); c++) {
            Bounds.StatisticsError err = statisticsError(shape, x, c, parts);
            double mu = ref.mean()[c], var = ref.variance()[c];
            double varError = err.variance();
            double a = (gamma == null ? 1 : gamma[c]) / Math.sqrt(var + eps);
            double relA = varError / (2 * (var + eps)) + 4 * Bounds.W;
            double b = beta == null ? 0 : beta[c];
            double meanErr = err.mean();
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    bounds[i] = Bounds.trainingOutput(a, x[i] - mu, mu, b, relA, meanErr);
                }
            }
        }
        return bounds;
    }

    /** Checks training-mode mean, variance and y against the double reference and its bounds. */
    static void trainingMatchesReference(TensorShape shape, float[] x, float[] gamma, float[] beta,
                                         float eps, Runs.Training got, String context) {
        trainingMatchesReference(shape, x, gamma, beta, eps, got, context, chunks(shape));
    }

    /** {@link #trainingMatchesReference} for statistics reduced in parts of these boundaries. */
    static void trainingMatchesReference(TensorShape shape, float[] x, float[] gamma, float[] beta,
                                         float eps, Runs.Training got, String context,
                                         long[] parts) {
        int channels = shape.channels();
        long m = shape.perChannel();
        Reference.Moments ref = Reference.moments(shape, x);
        double[] g = gamma == null ? Reference.filled(channels, 1) : Reference.widen(gamma);
        double[] b = beta == null ? Reference.filled(channels, 0) : Reference.widen(beta);
        double[] y = Reference.transform(shape, x, g, b, ref.mean(), ref.variance(), eps);
        double[] bounds = trainingOutputBounds(shape, x, gamma, beta, eps, parts);
        for (int c = 0; c < channels; c++) {
            Bounds.StatisticsError err = statisticsError(shape, x, c, parts);
            double mu = ref.mean()[c], var = ref.variance()[c];
            String at = context + ", channel " + c;
            within("mean", got.mean()[c], mu, Bounds.U * Math.abs(mu) + err.mean() + Bounds.TINY, at);
            if (Float.isInfinite((float) var)) {
                // Beyond float's range (values near 1e38): rounding gives +Infinity.
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[c], "variance at " + at);
            } else {
                within("variance", got.variance()[c], var, Bounds.U * var
                        + err.variance() + Bounds.TINY, at);
            }
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    within("y", got.y()[i], y[i], bounds[i],
                            at + ", n " + n + ", s " + s + ", x " + x[i]);
                }
            }
        }
    }

    static void bitwiseEqual(String what, float[] a, float[] b, String context) {
        for (int i = 0; i < a.length; i++) {
            if (Float.floatToRawIntBits(a[i]) != Float.floatToRawIntBits(b[i])) {
                fail(what + " differs at " + i + " (" + context + "): " + a[i] + " vs " + b[i]);
            }
        }
        if (a.length != b.length) {
            fail(what + " lengths differ: " + a.length + " vs " + b.length + " " + Arrays.toString(a));
        }
    }
}
