package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The paper's headline on the kernels: a small network trains faster with BatchNorm between its
 * layers. Regression of a smooth function of 8 badly scaled, off-centre inputs with a two-layer
 * network (Linear 8 -> 32, [BatchNorm], ReLU, Linear 32 -> 1) and plain full-batch gradient
 * descent, the same initial weights and learning rate for both networks. Everything is seeded and
 * the kernels are deterministic, so the outcome is the same on every run and every kernel choice.
 */
class TrainingConvergenceTest {

    static final int BATCH = 128, IN = 8, HIDDEN = 32, STEPS = 300;
    static final float LEARNING_RATE = 0.05f;

    @Test
    void batchNormTrainsFasterThanThePlainNetwork() {
        SplittableRandom r = new SplittableRandom(42);
        float[] x = new float[BATCH * IN];
        float[] target = new float[BATCH];
        for (int n = 0; n < BATCH; n++) {
            double t = 0;
            for (int i = 0; i < IN; i++) {
                // Feature i: mean 3 + i, scale 1 + 2 i: far from zero and unequal scales.
                double u = r.nextDouble(-1, 1);
                x[n * IN + i] = (float) (3 + i + (1 + 2 * i) * u);
                t += Math.sin(2 * u + i);
            }
            target[n] = (float) (t / 2);
        }
        float[] w1 = new float[IN * HIDDEN], w2 = new float[HIDDEN];
        for (int i = 0; i < w1.length; i++) {
            w1[i] = (float) (r.nextDouble(-1, 1) / Math.sqrt(IN));
        }
        for (int i = 0; i < w2.length; i++) {
            w2[i] = (float) (r.nextDouble(-1, 1) / Math.sqrt(HIDDEN));
        }
        double[] withBn = train(x, target, w1.clone(), w2.clone(), true);
        double[] plain = train(x, target, w1.clone(), w2.clone(), false);
        String report = "BatchNorm loss " + withBn[0] + " -> " + withBn[1] + ", plain " + plain[0]
                + " -> " + plain[1];
        assertTrue(withBn[1] < 0.1 * withBn[0], "BatchNorm network did not learn: " + report);
        assertTrue(withBn[1] < plain[1] || Double.isNaN(plain[1]), "no faster than plain: " + report);
    }

    /** Returns {initial loss, final loss}. */
    private static double[] train(float[] x, float[] target, float[] w1, float[] w2, boolean bn) {
        float[] b1 = new float[HIDDEN], gamma = new float[HIDDEN], beta = new float[HIDDEN];
        java.util.Arrays.fill(gamma, 1f);
        float b2 = 0;
        BatchNorm norm = BatchNorm.builder(TensorShape.nc(BATCH, HIDDEN)).build();
        float[] h = new float[BATCH * HIDDEN], z = new float[BATCH * HIDDEN], mean = new float[HIDDEN];
        float[] var = new float[HIDDEN], dz = new float[BATCH * HIDDEN], dh = new float[BATCH * HIDDEN];
        float[] dgamma = new float[HIDDEN], dbeta = new float[HIDDEN], out = new float[BATCH];
        double first = Double.NaN, loss = Double.NaN;
        for (int step = 0; step <= STEPS; step++) {
            for (int n = 0; n < BATCH; n++) {
                for (int j = 0; j < HIDDEN; j++) {
                    float s = b1[j];
                    for (int i = 0; i < IN; i++) {
                        s += x[n * IN + i] * w1[i * HIDDEN + j];
                    }
                    h[n * HIDDEN + j] = s;
                }
            }
            if (bn) {
                norm.forwardTraining(MemorySegment.ofArray(h), MemorySegment.ofArray(gamma),
                        MemorySegment.ofArray(beta), MemorySegment.ofArray(z), MemorySegment.ofArray(mean),
                        MemorySegment.ofArray(var));
            } else {
                System.arraycopy(h, 0, z, 0, h.length);
            }
            loss = 0;
            float[] dout = new float[BATCH];
            for (int n = 0; n < BATCH; n++) {
                float o = b2;
                for (int j = 0; j < HIDDEN; j++) {
                    o += Math.max(0, z[n * HIDDEN + j]) * w2[j];
                }
                out[n] = o;
                double e = o - target[n];
                loss += e * e / BATCH;
                dout[n] = (float) (2 * e / BATCH);
            }
            if (step == 0) {
                first = loss;
            }
            if (step == STEPS || !Double.isFinite(loss)) {
                break;
            }
            float db2 = 0;
            float[] dw2 = new float[HIDDEN];
            for (int n = 0; n < BATCH; n++) {
                db2 += dout[n];
                for (int j = 0; j < HIDDEN; j++) {
                    float a = z[n * HIDDEN + j];
                    dw2[j] += Math.max(0, a) * dout[n];
                    dz[n * HIDDEN + j] = a > 0 ? dout[n] * w2[j] : 0;
                }
            }
            if (bn) {
                norm.backward(MemorySegment.ofArray(h), MemorySegment.ofArray(dz), MemorySegment.ofArray(gamma),
                        MemorySegment.ofArray(mean), MemorySegment.ofArray(var), MemorySegment.ofArray(dh),
                        MemorySegment.ofArray(dgamma), MemorySegment.ofArray(dbeta));
                for (int j = 0; j < HIDDEN; j++) {
                    gamma[j] -= LEARNING_RATE * dgamma[j];
                    beta[j] -= LEARNING_RATE * dbeta[j];
                }
            } else {
                System.arraycopy(dz, 0, dh, 0, dz.length);
            }
            for (int i = 0; i < IN; i++) {
                for (int j = 0; j < HIDDEN; j++) {
                    float g = 0;
                    for (int n = 0; n < BATCH; n++) {
                        g += x[n * IN + i] * dh[n * HIDDEN + j];
                    }
                    w1[i * HIDDEN + j] -= LEARNING_RATE * g;
                }
            }
            for (int j = 0; j < HIDDEN; j++) {
                float g = 0;
                for (int n = 0; n < BATCH; n++) {
                    g += dh[n * HIDDEN + j];
                }
                b1[j] -= LEARNING_RATE * g;
                w2[j] -= LEARNING_RATE * dw2[j];
            }
            b2 -= LEARNING_RATE * db2;
        }
        return new double[] {first, loss};
    }
}
