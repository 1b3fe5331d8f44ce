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

    /** Per-channel facts the bounds need: the shifted sums of the kernels' reduction. */
    private record ChannelSums(double sumAbsD, double sumD, double sumD2) {
        static ChannelSums of(TensorShape shape, float[] x, int c) {
            double k = x[Reference.index(shape, 0, c, 0)];
            double sumAbsD = 0, sumD = 0, sumD2 = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    double d = x[Reference.index(shape, n, c, s)] - k;
                    sumAbsD += Math.abs(d);
                    sumD += d;
                    sumD2 += d * d;
                }
            }
            return new ChannelSums(sumAbsD, sumD, sumD2);
        }
    }

    /** The float mean's bound: its rounding, the double mean's error, a subnormal rounding. */
    private static double meanBound(long m, ChannelSums sums, double mu) {
        return Bounds.U * Math.abs(mu) + Bounds.meanError(m, sums.sumAbsD) + Bounds.TINY;
    }

    /** {@link #meanBound} for channel c of x. */
    static double meanBound(TensorShape shape, float[] x, int c, double mu) {
        return meanBound(shape.perChannel(), ChannelSums.of(shape, x, c), mu);
    }

    /** The bound of {@link Bounds#trainingOutput} for every element of y (in the shape's layout). */
    static double[] trainingOutputBounds(TensorShape shape, float[] x, float[] gamma, float[] beta,
                                         float eps) {
        Reference.Moments ref = Reference.moments(shape, x);
        double[] bounds = new double[x.length];
        for (int c = 0; c < shape.channels(); c++) {
            ChannelSums sums = ChannelSums.of(shape, x, c);
            double mu = ref.mean()[c], var = ref.variance()[c];
            double varError = Bounds.varianceError(shape.perChannel(), sums.sumAbsD, sums.sumD, sums.sumD2);
            double a = (gamma == null ? 1 : gamma[c]) / Math.sqrt(var + eps);
            double relA = varError / (2 * (var + eps)) + 4 * Bounds.W;
            double b = beta == null ? 0 : beta[c];
            double meanErr = Bounds.meanError(shape.perChannel(), sums.sumAbsD);
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
        int channels = shape.channels();
        long m = shape.perChannel();
        Reference.Moments ref = Reference.moments(shape, x);
        double[] g = gamma == null ? Reference.filled(channels, 1) : Reference.widen(gamma);
        double[] b = beta == null ? Reference.filled(channels, 0) : Reference.widen(beta);
        double[] y = Reference.transform(shape, x, g, b, ref.mean(), ref.variance(), eps);
        double[] bounds = trainingOutputBounds(shape, x, gamma, beta, eps);
        for (int c = 0; c < channels; c++) {
            ChannelSums sums = ChannelSums.of(shape, x, c);
            double mu = ref.mean()[c], var = ref.variance()[c];
            String at = context + ", channel " + c;
            within("mean", got.mean()[c], mu, meanBound(m, sums, mu), at);
            if (Float.isInfinite((float) var)) {
                // Beyond float's range (values near 1e38): rounding gives +Infinity.
                assertEquals(Float.POSITIVE_INFINITY, got.variance()[c], "variance at " + at);
            } else {
                within("variance", got.variance()[c], var, Bounds.U * var
                        + Bounds.varianceError(m, sums.sumAbsD, sums.sumD, sums.sumD2) + Bounds.TINY, at);
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
