package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/**
 * {@link NormReference} checked by hand and by central finite differences: its backward must be
 * the derivative of its own forward, sum(y dy) as the loss.
 *
 * <p>Finite-difference tolerance: with h = 1e-4 x max(1, |x|) the central difference of a smooth
 * loss errs by about h^2 |L'''| / 6 (truncation) plus 2 eps_d |L| / h (cancellation, eps_d =
 * 2^-53). On these small units (values of order 1, standard deviations above 0.3, |L| below
 * about 100) the first term is below 1e-7 and the second below 1e-10, so a relative error of 1e-5
 * of the largest gradient leaves a wide margin while an error in a formula (a missing dmean
 * term, a wrong power of rstd) is of order 1e-1 and fails.
 */
class NormReferenceTest {

    @Test
    void handExamples() {
        // LayerNorm of [1, 2, 3, 4]: mean 2.5, variance 1.25.
        NormReference.Units row = NormReference.Units.rows(1, 1, 4, 4);
        float[] x = {1, 2, 3, 4};
        NormReference.Statistics st = NormReference.statistics(row, x, false);
        assertEquals(2.5, st.mean()[0]);
        assertEquals(1.25, st.variance()[0]);
        double[] y = NormReference.forward(row, x, null, null, st, 0, false, 4);
        assertEquals(-1.5 / Math.sqrt(1.25), y[0], 1e-15);
        // RMSNorm of [3, 4] with weight [2, 0.5]: mean square 12.5.
        NormReference.Units pair = NormReference.Units.rows(1, 1, 2, 2);
        float[] v = {3, 4};
        NormReference.Statistics ms = NormReference.statistics(pair, v, true);
        assertEquals(12.5, ms.variance()[0]);
        double[] r = NormReference.forward(pair, v, new float[] {2, 0.5f}, null, ms, 0, false, 2);
        assertEquals(6 / Math.sqrt(12.5), r[0], 1e-15);
        assertEquals(2 / Math.sqrt(12.5), r[1], 1e-15);
        // Gemma's unit offset: weight 1 acts as 2.
        double[] g = NormReference.forward(pair, v, new float[] {1, 1}, null, ms, 0, true, 2);
        assertEquals(6 / Math.sqrt(12.5), g[0], 1e-15);
        // GroupNorm NHWC, 1 image, 2 pixels, 2 channels in one group: values 1, 2, 3, 4.
        TensorShape shape = TensorShape.nhwc(1, 2, 1, 2);
        NormReference.Units group = NormReference.Units.groups(shape, 1);
        NormReference.Statistics gs = NormReference.statistics(group, x, false);
        assertEquals(2.5, gs.mean()[0]);
        assertEquals(1.25, gs.variance()[0]);
    }

    @Test
    void layerNormBackwardIsTheDerivative() {
        NormReference.Units units = NormReference.Units.rows(3, 2, 5, 13);
        int floats = 2 * 13 + 10;
        check(units, floats, 5, TestData.gaussian(5, 3, 1), TestData.gaussian(5, 4, 1), false, false);
    }

    @Test
    void rmsNormBackwardIsTheDerivative() {
        NormReference.Units units = NormReference.Units.rows(3, 1, 7, 7);
        check(units, 21, 7, TestData.gaussian(7, 5, 1), null, true, false);
        check(units, 21, 7, TestData.gaussian(7, 6, 0.3), null, true, true);
    }

    @Test
    void groupNormBackwardIsTheDerivative() {
        for (Layout layout : Layout.values()) {
            TensorShape shape = new TensorShape(2, 6, 5, layout);
            NormReference.Units units = NormReference.Units.groups(shape, 3);
            check(units, 60, 6, TestData.gaussian(6, 7, 1), TestData.gaussian(6, 8, 1), false, false);
        }
    }

    private static void check(NormReference.Units units, int floats, int params, float[] weight,
                              float[] bias, boolean rms, boolean unitOffset) {
        double eps = 1e-3;
        float[] x = TestData.gaussian(floats, 11, 1);
        float[] dy = TestData.gaussian(floats, 12, 1);
        NormReference.Statistics st = NormReference.statistics(units, x, rms);
        double[] rstd = new double[units.count()];
        for (int u = 0; u < rstd.length; u++) {
            rstd[u] = 1 / Math.sqrt(st.variance()[u] + eps);
        }
        double[] dx = rms
                ? NormReference.rmsBackward(units, x, dy, weight, unitOffset, rstd, floats, params).dx()
                : NormReference.backward(units, x, dy, weight, st.mean(), rstd, floats, params).dx();
        double largest = 0;
        for (double d : dx) {
            largest = Math.max(largest, Math.abs(d));
        }
        assertTrue(largest > 0.01, "gradients of a size the check can see");
        double[] xd = new double[floats];
        for (int i = 0; i < floats; i++) {
            xd[i] = x[i];
        }
        for (int[] idx : units.index()) {
            for (int i : idx) {
                double h = 1e-4 * Math.max(1, Math.abs(xd[i]));
                double keep = xd[i];
                xd[i] = keep + h;
                double up = NormReference.loss(units, xd, weight, bias, dy, eps, rms, unitOffset);
                xd[i] = keep - h;
                double down = NormReference.loss(units, xd, weight, bias, dy, eps, rms, unitOffset);
                xd[i] = keep;
                assertEquals((up - down) / (2 * h), dx[i], 1e-5 * largest, "dx[" + i + "]");
            }
        }
    }
}
