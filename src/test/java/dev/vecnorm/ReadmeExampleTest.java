package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The README's API tour, on a smaller shape, with its outputs checked. */
class ReadmeExampleTest {

    @Test
    void theApiTourRuns() {
        TensorShape shape = TensorShape.nchw(4, 8, 5, 5);
        BatchNorm bn = BatchNorm.builder(shape).epsilon(1e-5f).momentum(0.1f).build();
        try (Arena arena = Arena.ofConfined()) {
            long e = shape.elements();
            int c = shape.channels();
            MemorySegment x = Segments.of(arena, TestData.gaussian((int) e, 9, 2));
            MemorySegment y = arena.allocate(4 * e, 64);
            MemorySegment gamma = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});
            MemorySegment beta = arena.allocate(4L * c);
            MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
            MemorySegment runningMean = arena.allocate(4L * c);
            MemorySegment runningVar = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});

            bn.forwardTraining(x, gamma, beta, y, mean, var);
            bn.updateRunningStatistics(mean, var, runningMean, runningVar);

            MemorySegment dy = Segments.of(arena, TestData.gaussian((int) e, 10, 1));
            MemorySegment dx = arena.allocate(4 * e);
            MemorySegment dgamma = arena.allocate(4L * c), dbeta = arena.allocate(4L * c);
            bn.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta);

            bn.forwardInference(x, gamma, beta, runningMean, runningVar, y);

            float m0 = mean.getAtIndex(ValueLayout.JAVA_FLOAT, 0);
            assertEquals(0.1f * m0, runningMean.getAtIndex(ValueLayout.JAVA_FLOAT, 0), 1e-6f);
            assertTrue(dgamma.getAtIndex(ValueLayout.JAVA_FLOAT, 0) != 0f);

            // The fused call of the tour: relu(bn(x) + residual), and its backward.
            MemorySegment residual = Segments.of(arena, TestData.gaussian((int) e, 11, 1));
            MemorySegment dresidual = arena.allocate(4 * e);
            BatchNorm block = BatchNorm.builder(shape).activation(Activation.RELU).build();
            block.forwardTraining(x, residual, gamma, beta, y, mean, var);
            block.backward(x, dy, y, gamma, mean, var, dx, dresidual, dgamma, dbeta);
            for (long i = 0; i < e; i++) {
                float out = y.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                assertTrue(out >= 0f, "relu output");
                assertEquals(out > 0 ? dy.getAtIndex(ValueLayout.JAVA_FLOAT, i) : 0f,
                        dresidual.getAtIndex(ValueLayout.JAVA_FLOAT, i), "dresidual = dy where y > 0");
            }
            // The workspace form: the same call writes the mask, and its backward gives the same bits.
            float[] dxFromY = Segments.toArray(dx), dresFromY = Segments.toArray(dresidual);
            MemorySegment mask = arena.allocate(block.workspaceBytes(), 8);
            block.forwardTraining(x, residual, gamma, beta, y, mean, var, mask);
            block.backwardWithWorkspace(x, dy, mask, gamma, mean, var, dx, dresidual, dgamma, dbeta);
            Expect.bitwiseEqual("dx", dxFromY, Segments.toArray(dx), "workspace");
            Expect.bitwiseEqual("dresidual", dresFromY, Segments.toArray(dresidual), "workspace");
        }
        assertTrue(BatchNorm.kernels().equals("scalar") || BatchNorm.kernels().startsWith("vector "));
    }

    /**
     * The README's layer snippet, 8 channels instead of 64: the loaded state is used (eval output
     * within the inference bound) and the fold wrote w * a, rounded once.
     */
    @Test
    void theLayerTourRuns() {
        int channels = 8;
        TensorShape shape = TensorShape.nchw(2, channels, 5, 5);
        try (Arena arena = Arena.ofConfined();
             BatchNormLayer bn1 = BatchNormLayer.builder(channels).build()) {
            MemorySegment gamma = Segments.of(arena, TestData.gaussian(channels, 1, 1));
            MemorySegment beta = Segments.of(arena, TestData.gaussian(channels, 2, 1));
            MemorySegment runningMean = Segments.of(arena, TestData.gaussian(channels, 3, 1));
            MemorySegment runningVar = Segments.of(arena, new float[] {1, 2, 3, 4, 0.5f, 0.25f, 1, 1});
            MemorySegment count = arena.allocate(8);
            count.set(ValueLayout.JAVA_LONG, 0, 42L);
            float[] xs = TestData.gaussian((int) shape.elements(), 4, 2);
            MemorySegment x = Segments.of(arena, xs), y = arena.allocate(4 * shape.elements());
            float[] weights = TestData.gaussian(channels * channels * 9, 5, 0.3);
            MemorySegment convWeight = Segments.of(arena, weights);

            bn1.loadStateDict(Map.of("weight", gamma, "bias", beta, "running_mean", runningMean,
                    "running_var", runningVar, "num_batches_tracked", count));
            bn1.eval();
            bn1.forward(shape, x, y);
            MemorySegment foldedBias = arena.allocate(4L * channels);
            bn1.fold(BatchNormFolding.WeightLayout.OUTPUT_CHANNELS_FIRST, convWeight, null, convWeight, foldedBias);

            assertEquals(42L, bn1.numBatchesTracked());
            float g = gamma.getAtIndex(ValueLayout.JAVA_FLOAT, 7), b = beta.getAtIndex(ValueLayout.JAVA_FLOAT, 7);
            float m = runningMean.getAtIndex(ValueLayout.JAVA_FLOAT, 7);
            double a = g / Math.sqrt(1 + (double) 1e-5f);
            int last = (int) shape.elements() - 1;                  // n 1, channel 7, last position
            Expect.within("y", y.getAtIndex(ValueLayout.JAVA_FLOAT, last), a * (xs[last] - m) + b,
                    Bounds.inferenceOutput(a, xs[last] - m, b), "channel 7");
            int w = 7 * channels * 9;                               // first weight of output channel 7
            assertEquals((float) (weights[w] * a), convWeight.getAtIndex(ValueLayout.JAVA_FLOAT, w));
            assertEquals((float) (-m * a + b), foldedBias.getAtIndex(ValueLayout.JAVA_FLOAT, 7));
        }
    }
    /**
     * The README's norm snippet on small sizes. Checked: LayerNorm's rows have mean 0 (|sum y|
     * of 64 values of size about 1 is below 64 x 4u, four roundings each, and its own sum's
     * error); the fused residual call wrote hidden = x + hidden and gave the bits of a plain call
     * on it; the per-head norm left the QKV row's other floats alone; GroupNorm's mean is the
     * group's (a float sum of 4 x 25 values within 100u of its magnitude sum, and the kernel's
     * mean within half an ulp of the exact one).
     */
    @Test
    void theNormTourRuns() {
        int tokens = 3, hidden = 64;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment x = Segments.of(arena, TestData.gaussian(tokens * hidden, 21, 3));
            MemorySegment weight = Segments.of(arena, TestData.gaussian(hidden, 22, 1));
            MemorySegment bias = arena.allocate(4L * hidden), y = arena.allocate(4L * tokens * hidden);
            MemorySegment mean = arena.allocate(4L * tokens), rstd = arena.allocate(4L * tokens);
            LayerNorm ln = LayerNorm.builder(tokens, hidden).epsilon(1e-5f).build();
            ln.forward(x, null, bias, y, mean, rstd);
            for (int r = 0; r < tokens; r++) {
                double sum = 0, abs = 0;
                for (int f = 0; f < hidden; f++) {
                    float v = y.getAtIndex(ValueLayout.JAVA_FLOAT, (long) r * hidden + f);
                    sum += v;
                    abs += Math.abs(v);
                }
                assertTrue(Math.abs(sum) <= 4 * Bounds.U * abs + 64 * Bounds.U * abs, "row " + r + " mean " + sum);
            }
            MemorySegment dy = Segments.of(arena, TestData.gaussian(tokens * hidden, 23, 1));
            MemorySegment dx = arena.allocate(4L * tokens * hidden);
            MemorySegment dweight = arena.allocate(4L * hidden), dbias = arena.allocate(4L * hidden);
            ln.backward(x, dy, weight, mean, rstd, dx, dweight, dbias);

            RMSNorm rms = RMSNorm.builder(tokens, hidden).epsilon(1e-6f).build();
            float[] h0 = TestData.gaussian(tokens * hidden, 24, 1);
            MemorySegment state = Segments.of(arena, h0);
            MemorySegment fused = arena.allocate(4L * tokens * hidden), plain = arena.allocate(4L * tokens * hidden);
            rms.forwardWithResidual(x, state, weight, fused, null);
            rms.forward(state, weight, plain, null);
            for (int i = 0; i < tokens * hidden; i++) {
                assertEquals(x.getAtIndex(ValueLayout.JAVA_FLOAT, i) + h0[i], state.getAtIndex(ValueLayout.JAVA_FLOAT, i));
                assertEquals(plain.getAtIndex(ValueLayout.JAVA_FLOAT, i), fused.getAtIndex(ValueLayout.JAVA_FLOAT, i));
            }

            int heads = 2, headDim = 16, qkvWidth = 3 * heads * headDim;  // Q's heads first in each row
            float[] qkv0 = TestData.gaussian(tokens * qkvWidth, 25, 1);
            MemorySegment qkv = Segments.of(arena, qkv0);
            RMSNorm qk = RMSNorm.builder(tokens, headDim).heads(heads).rowStride(qkvWidth).build();
            MemorySegment q = qkv.asSlice(0, 4 * qk.tensorFloats());
            qk.forward(q, null, q, null);
            for (int i = 0; i < tokens * qkvWidth; i++) {
                if (i % qkvWidth >= heads * headDim) {
                    assertEquals(qkv0[i], qkv.getAtIndex(ValueLayout.JAVA_FLOAT, i), "K and V untouched at " + i);
                }
            }

            TensorShape shape = TensorShape.nhwc(2, 8, 5, 5);
            float[] gx = TestData.gaussian((int) shape.elements(), 26, 2);
            MemorySegment gy = arena.allocate(4 * shape.elements());
            MemorySegment gmean = arena.allocate(4L * 2 * 2), grstd = arena.allocate(4L * 2 * 2);
            GroupNorm gn = GroupNorm.builder(shape, 2).build();
            gn.forward(Segments.of(arena, gx), null, null, gy, gmean, grstd);
            double sum = 0, abs = 0;                         // image 1, group 0: channels 0..3
            for (int p = 0; p < 25; p++) {
                for (int c = 0; c < 4; c++) {
                    float v = gx[(25 + p) * 8 + c];
                    sum += v;
                    abs += Math.abs(v);
                }
            }
            assertEquals(sum / 100, gmean.getAtIndex(ValueLayout.JAVA_FLOAT, 2), 100 * Bounds.U * abs / 100 + Math.ulp((float) (sum / 100)));
        }
    }
}
