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
