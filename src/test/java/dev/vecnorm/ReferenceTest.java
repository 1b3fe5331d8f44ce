package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The reference backward (the paper's step-by-step equations) against central finite differences
 * of the reference forward, in double: L = sum(w * y) with random w, training mode (the
 * statistics are functions of x). Central differences err by O(h^2) (truncation) plus
 * O(w |L| / h) (rounding); h = 1e-5 puts both near 1e-10 for values of order 1, so a relative
 * agreement of 1e-7 leaves three orders of margin and still catches any wrong term.
 */
class ReferenceTest {

    @ParameterizedTest
    @ValueSource(longs = {1, 2, 3, 4, 5, 6, 7, 8})
    void backwardMatchesFiniteDifferences(long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        TensorShape shape = new TensorShape(2 + r.nextInt(2), 1 + r.nextInt(3), 1 + r.nextInt(5),
                r.nextBoolean() ? Layout.NCHW : Layout.NHWC);
        int e = (int) shape.elements(), channels = shape.channels();
        double eps = 1e-3;
        double[] x = new double[e], w = new double[e], gamma = new double[channels], beta = new double[channels];
        for (int i = 0; i < e; i++) {
            x[i] = r.nextDouble(-2, 2);
            w[i] = r.nextDouble(-1, 1);
        }
        for (int c = 0; c < channels; c++) {
            gamma[c] = r.nextDouble(0.5, 2);
            beta[c] = r.nextDouble(-1, 1);
        }
        Reference.Moments m = Reference.moments(shape, x);
        Reference.Gradients g = Reference.backward(shape, x, w, gamma, m.mean(), m.variance(), eps);
        double h = 1e-5;
        double scale = 0;
        for (double v : g.dx()) {
            scale = Math.max(scale, Math.abs(v));
        }
        java.util.function.DoubleSupplier loss = () -> loss(shape, x, w, gamma, beta, eps);
        for (int i = 0; i < e; i++) {
            assertEquals(centralDifference(x, i, h, loss), g.dx()[i], 1e-7 * scale, "dx[" + i + "] " + shape);
        }
        for (int c = 0; c < channels; c++) {
            assertEquals(centralDifference(gamma, c, h, loss), g.dgamma()[c],
                    1e-7 * Math.max(1, Math.abs(g.dgamma()[c])), "dgamma");
            assertEquals(centralDifference(beta, c, h, loss), g.dbeta()[c],
                    1e-7 * Math.max(1, Math.abs(g.dbeta()[c])), "dbeta");
        }
    }

    /**
     * The reference's fused backward (ReLU's mask, then the residual's and BatchNorm's
     * gradients) against central differences of L = sum(w * act(bn(x) + r)), with and without
     * ReLU. Away from the kink: r is chosen so that every pre-activation bn(x) + r has
     * magnitude in [0.5, 1.5], and a step h = 1e-5 moves every bn(x) by less than 1e-2 (in x:
     * about 3 gamma invstd h, with gamma <= 2 and invstd <= 1/sqrt(eps) = 32; in gamma:
     * h |xhat| <= h sqrt(M); in beta or r: h), so no perturbed value crosses 0 and the loss is
     * smooth at every point the difference evaluates: the same error analysis as above holds.
     */
    @ParameterizedTest
    @ValueSource(longs = {11, 12, 13, 14, 15, 16, 17, 18})
    void fusedBackwardMatchesFiniteDifferences(long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        TensorShape shape = new TensorShape(2 + r.nextInt(2), 1 + r.nextInt(3), 1 + r.nextInt(5),
                r.nextBoolean() ? Layout.NCHW : Layout.NHWC);
        int e = (int) shape.elements(), channels = shape.channels();
        double eps = 1e-3;
        double[] x = new double[e], w = new double[e], gamma = new double[channels], beta = new double[channels];
        for (int i = 0; i < e; i++) {
            x[i] = r.nextDouble(-2, 2);
            w[i] = r.nextDouble(-1, 1);
        }
        for (int c = 0; c < channels; c++) {
            gamma[c] = r.nextDouble(0.5, 2);
            beta[c] = r.nextDouble(-1, 1);
        }
        Reference.Moments m = Reference.moments(shape, x);
        double[] pre = Reference.transform(shape, x, gamma, beta, m.mean(), m.variance(), eps);
        double[] res = new double[e];
        for (int i = 0; i < e; i++) {
            double target = (r.nextBoolean() ? 1 : -1) * r.nextDouble(0.5, 1.5);
            res[i] = target - pre[i];
        }
        for (boolean relu : new boolean[] {true, false}) {
            double[] y = activate(pre, res, relu);
            Reference.FusedGradients g = Reference.fusedBackward(shape, x, w, y, relu, gamma, m.mean(),
                    m.variance(), eps);
            java.util.function.DoubleSupplier loss = () -> {
                Reference.Moments mm = Reference.moments(shape, x);
                double[] out = activate(Reference.transform(shape, x, gamma, beta, mm.mean(), mm.variance(), eps),
                        res, relu);
                double l = 0;
                for (int i = 0; i < out.length; i++) {
                    l += w[i] * out[i];
                }
                return l;
            };
            double scale = 0;
            for (double v : g.bn().dx()) {
                scale = Math.max(scale, Math.abs(v));
            }
            String at = shape + " relu " + relu;
            for (int i = 0; i < e; i++) {
                assertEquals(centralDifference(x, i, 1e-5, loss), g.bn().dx()[i], 1e-7 * Math.max(1, scale), "dx[" + i + "] " + at);
                assertEquals(centralDifference(res, i, 1e-5, loss), g.dresidual()[i], 1e-7, "dresidual[" + i + "] " + at);
            }
            for (int c = 0; c < channels; c++) {
                assertEquals(centralDifference(gamma, c, 1e-5, loss), g.bn().dgamma()[c],
                        1e-7 * Math.max(1, Math.abs(g.bn().dgamma()[c])), "dgamma " + at);
                assertEquals(centralDifference(beta, c, 1e-5, loss), g.bn().dbeta()[c],
                        1e-7 * Math.max(1, Math.abs(g.bn().dbeta()[c])), "dbeta " + at);
            }
        }
    }

    /** act(pre + res) in double, for residuals that are not floats. */
    private static double[] activate(double[] pre, double[] res, boolean relu) {
        double[] y = new double[pre.length];
        for (int i = 0; i < y.length; i++) {
            y[i] = relu ? Math.max(0, pre[i] + res[i]) : pre[i] + res[i];
        }
        return y;
    }

    /** (L(v + h e_i) - L(v - h e_i)) / 2h, leaving v as it was. */
    private static double centralDifference(double[] v, int i, double h,
                                            java.util.function.DoubleSupplier loss) {
        double saved = v[i];
        v[i] = saved + h;
        double up = loss.getAsDouble();
        v[i] = saved - h;
        double down = loss.getAsDouble();
        v[i] = saved;
        return (up - down) / (2 * h);
    }

    private static double loss(TensorShape shape, double[] x, double[] w, double[] gamma,
                               double[] beta, double eps) {
        Reference.Moments m = Reference.moments(shape, x);
        double[] y = Reference.transform(shape, x, gamma, beta, m.mean(), m.variance(), eps);
        double l = 0;
        for (int i = 0; i < y.length; i++) {
            l += w[i] * y[i];
        }
        return l;
    }

    /** The two-pass variance of a hand example: 1, 3, 5, 7 has mean 4 and variance 5. */
    @org.junit.jupiter.api.Test
    void momentsOfAHandExample() {
        Reference.Moments m = Reference.moments(TensorShape.nc(4, 1), new float[] {1, 3, 5, 7});
        assertEquals(4.0, m.mean()[0]);
        assertEquals(5.0, m.variance()[0]);
    }
}
