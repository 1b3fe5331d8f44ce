package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** Hand-computed examples of the fused calls, and the edge values of ReLU's definition. */
class FusedExamplesTest {

    static final TensorShape NC = TensorShape.nc(4, 1);
    static final float[] X = {1, 3, 5, 7};                  // mean 4, biased variance 5

    @Test
    void reluOfBatchNormPlusResidualByHand() {
        BatchNorm bn = BatchNorm.builder(NC).epsilon(1e-5f).activation(Activation.RELU).build();
        double invstd = 1 / Math.sqrt(5 + 1e-5);
        float[] r = {1, 1, -1, -2};
        // bn(x) = (x - 4) invstd = {-3, -1, 1, 3} invstd; + r = {-0.342, 0.553, -0.553, -0.658}.
        float[] y = Runs.fusedTraining(bn, X, r, null, null).y();
        double[] expected = {0, 1 - invstd, 0, 0};
        for (int i = 0; i < 4; i++) {
            // One transform and one add, each within a few ulps of values below 2: 1e-6.
            assertEquals(expected[i], y[i], 1e-6, "y[" + i + "]");
        }
        assertEquals(0, Float.floatToRawIntBits(y[0]), "ReLU gives +0");
        float[] relu = Runs.fusedTraining(bn, X, null, null, null).y();
        assertArrayEquals(new float[] {0, 0, (float) invstd, (float) (3 * invstd)}, relu, 1e-6f);

        // Backward: g = dy where y > 0 (only element 1), dbeta = sum(g), dresidual = g.
        float[] dy = {10, 20, 30, 40};
        Runs.Training fwd = Runs.fusedTraining(bn, X, r, null, null);
        Runs.FusedBackward g = Runs.fusedBackward(bn, false, X, dy, fwd.y(), null, fwd.mean(), fwd.variance());
        assertArrayEquals(new float[] {0, 20, 0, 0}, g.dresidual());
        assertEquals(20f, g.dbeta()[0]);
        // dgamma = invstd * (3 - 4) * 20; dx = invstd (g - 20/4 - xhat * (-20 invstd) / 4).
        assertEquals(-20 * invstd, g.dgamma()[0], 1e-5);
        for (int i = 0; i < 4; i++) {
            double xhat = (X[i] - 4) * invstd;
            double want = invstd * ((i == 1 ? 20 : 0) - 5 - xhat * (-20 * invstd) / 4);
            assertEquals(want, g.dx()[i], 1e-5, "dx[" + i + "]");
        }
    }

    /**
     * -0 becomes +0 and NaN stays NaN: inference with x = mean, gamma = -1 and beta = -0 gives
     * fma(0, -a, -0) = -0, which NONE keeps and RELU turns into +0; a NaN input stays NaN.
     */
    @Test
    void reluTurnsMinusZeroIntoZeroAndKeepsNaN() {
        TensorShape shape = TensorShape.nc(3, 1);
        float[] x = {2, Float.NaN, 5};
        float[] gamma = {-1}, beta = {-0f}, mean = {2}, var = {1};
        float[] none = Runs.inference(BatchNorm.builder(shape).build(), x, gamma, beta, mean, var);
        float[] relu = Runs.inference(BatchNorm.builder(shape).activation(Activation.RELU).build(), x, gamma,
                beta, mean, var);
        assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(none[0]), "plain: -0");
        assertEquals(0, Float.floatToRawIntBits(relu[0]), "relu: +0");
        assertTrue(Float.isNaN(none[1]) && Float.isNaN(relu[1]), "NaN stays NaN");
        assertEquals(0f, relu[2], "negative: 0");
        // The residual's add rounds once: -0 + -0 = -0, then ReLU gives +0 again.
        float[] added = Runs.fusedInference(BatchNorm.builder(shape).activation(Activation.RELU).build(), x,
                new float[] {-0f, 0, 10}, gamma, beta, mean, var);
        assertEquals(0, Float.floatToRawIntBits(added[0]));
        assertEquals((float) (10 - 3 / Math.sqrt(1 + 1e-5)), added[2], 1e-6f);
    }
}
