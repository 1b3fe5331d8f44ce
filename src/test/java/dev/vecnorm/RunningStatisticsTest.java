package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;

/**
 * Each running-statistics rule against its framework's formula, written here in the framework's
 * own form (not the library's), over five training steps of varying batch size and data.
 *
 * <p>Error bound, derived from the recurrence. Let F_k be the library's float running value after
 * step k and T_k the test's value of the same recurrence carried in double from the same float
 * inputs (the batch mean / variance that forwardTraining wrote, the float momentum). A step is
 * r_k = c_k r_{k-1} + d_k b_k with c_k in [0, 1] the weight of the old value and d_k that of the
 * batch term b_k (the batch mean, or the variance times M / (M - 1) <= 2 times it for the unbiased
 * rules). The library evaluates it in double, each of at most 5 operations (c_k or d_k, the unbias
 * factor, two products, the sum) rounding with |delta| <= w = 2^-53 on intermediates no larger
 * than |r_{k-1}| + 2 |batch|, then rounds to float once: |fl32(z) - z| <= u |fl32(z)| with
 * u = 2^-24 (plus 2^-150 below the normal range). The test's form, algebraically equal, errs in
 * double by as much again. So, with E_0 = 0 (both start from the same floats),
 * <pre>
 *   |F_k - T_k| <= E_k = c_k E_{k-1} + 10 w (|T_{k-1}| + 2 |batch_k|) + u |F_k| + 2^-150
 * </pre>
 * which is about k half-units in the last place of the running value after k steps; |c_k| <= 1,
 * so earlier errors never grow. A wrong rule is off by far more: the biased instead of the unbiased
 * variance by var * d_k / (M - 1), at least a few percent here; swapping m and 1 - m by 80 % of the
 * step.
 */
class RunningStatisticsTest {

    static final int CHANNELS = 5;
    /** Five steps: batch sizes and spatial sizes vary, so M and the unbias factor vary. */
    static final TensorShape[] STEPS = {
            TensorShape.nchw(2, CHANNELS, 1, 3), TensorShape.nchw(3, CHANNELS, 2, 2),
            TensorShape.nhwc(5, CHANNELS, 1, 1), TensorShape.nchw(8, CHANNELS, 3, 1),
            TensorShape.nhwc(4, CHANNELS, 2, 3)};

    /** One framework's update of one running value, written the way that framework writes it. */
    interface Formula {
        /** The new running value from the old, the batch mean or biased variance, M and n. */
        double next(double running, double batch, boolean isVariance, long m, long n);

        /** c_k, the weight of the old value, for the bound. */
        double oldWeight(long n);
    }

    /** PyTorch's batch_norm: running = (1 - momentum) * running + momentum * unbiased batch. */
    static Formula pytorch(double momentum) {
        return new Formula() {
            public double next(double running, double batch, boolean isVariance, long m, long n) {
                double value = isVariance ? batch * m / (m - 1) : batch;
                return (1 - momentum) * running + momentum * value;
            }

            public double oldWeight(long n) {
                return 1 - momentum;
            }
        };
    }

    /** PyTorch with momentum=None: the cumulative average, running += (batch - running) / n. */
    static Formula cumulative() {
        return new Formula() {
            public double next(double running, double batch, boolean isVariance, long m, long n) {
                double value = isVariance ? batch * m / (m - 1) : batch;
                return running + (value - running) / n;
            }

            public double oldWeight(long n) {
                return 1 - 1.0 / n;
            }
        };
    }

    /**
     * ONNX BatchNormalization (training): running_mean = input_mean * momentum + current_mean *
     * (1 - momentum), the biased variance; Keras's moving-average assignment
     * (moving -= (moving - batch) * (1 - momentum)) and DJL's are the same rule.
     */
    static Formula oldValueWeighted(double momentum, boolean kerasForm) {
        return new Formula() {
            public double next(double running, double batch, boolean isVariance, long m, long n) {
                return kerasForm ? running - (running - batch) * (1 - momentum)
                        : running * momentum + batch * (1 - momentum);
            }

            public double oldWeight(long n) {
                return momentum;
            }
        };
    }

    @Test
    void pytorchWithItsDefaultMomentum() {
        checkFiveSteps(RunningStatistics.PYTORCH, Float.NaN, pytorch(0.1f));
    }

    @Test
    void pytorchWithAnotherMomentum() {
        checkFiveSteps(RunningStatistics.PYTORCH, 0.3f, pytorch(0.3f));
    }

    @Test
    void cumulativeAverageIsPyTorchsMomentumNone() {
        checkFiveSteps(RunningStatistics.CUMULATIVE_AVERAGE, Float.NaN, cumulative());
    }

    @Test
    void onnxWithItsDefaultMomentum() {
        checkFiveSteps(RunningStatistics.ONNX, Float.NaN, oldValueWeighted(0.9f, false));
    }

    @Test
    void kerasWithItsDefaultMomentum() {
        checkFiveSteps(RunningStatistics.KERAS, Float.NaN, oldValueWeighted(0.99f, true));
    }

    @Test
    void kerasWithAnotherMomentum() {
        checkFiveSteps(RunningStatistics.KERAS, 0.6f, oldValueWeighted(0.6f, true));
    }

    @Test
    void djlWithItsDefaultMomentum() {
        checkFiveSteps(RunningStatistics.DJL, Float.NaN, oldValueWeighted(0.9f, false));
    }

    /**
     * Five forwardTraining steps on varying data; after each, the library's running mean and
     * variance against the formula carried in double, within E_k of the class comment.
     */
    private static void checkFiveSteps(RunningStatistics rule, float momentum, Formula formula) {
        double[] expectedMean = new double[CHANNELS];
        double[] expectedVar = Reference.filled(CHANNELS, 1);
        double[] boundMean = new double[CHANNELS];
        double[] boundVar = new double[CHANNELS];
        try (Arena arena = Arena.ofConfined()) {
            // Non-trivial starting values, as after loading a checkpoint.
            float[] startMean = {0.5f, -2, 0, 1e3f, 3};
            float[] startVar = {1, 0.25f, 4, 1e2f, 7};
            for (int c = 0; c < CHANNELS; c++) {
                expectedMean[c] = startMean[c];
                expectedVar[c] = startVar[c];
            }
            MemorySegment runningMean = Segments.of(arena, startMean);
            MemorySegment runningVar = Segments.of(arena, startVar);
            for (int k = 0; k < STEPS.length; k++) {
                TensorShape shape = STEPS[k];
                long n = k + 1;
                long m = shape.perChannel();
                BatchNorm.Builder builder = BatchNorm.builder(shape).runningStatistics(rule);
                if (!Float.isNaN(momentum)) {
                    builder.momentum(momentum);
                }
                BatchNorm bn = builder.build();
                // Channel means from -3 to 3 plus one near 1e3, so the mean and variance terms
                // have different sizes.
                float[] data = TestData.tensor(shape, 100 + k, TestData.Distribution.NORMAL);
                for (int i = 0; i < data.length; i++) {
                    if (channelOf(shape, i) == 3) {
                        data[i] += 1e3f;
                    }
                }
                Runs.Training t = Runs.training(bn, data, null, null);
                MemorySegment mean = Segments.of(arena, t.mean());
                MemorySegment var = Segments.of(arena, t.variance());
                if (rule == RunningStatistics.CUMULATIVE_AVERAGE) {
                    bn.updateRunningStatistics(mean, var, runningMean, runningVar, n);
                } else if (k % 2 == 0) {
                    bn.updateRunningStatistics(mean, var, runningMean, runningVar);
                } else {
                    // The counting overload gives the same result for the momentum rules.
                    bn.updateRunningStatistics(mean, var, runningMean, runningVar, n);
                }
                float[] gotMean = Segments.toArray(runningMean);
                float[] gotVar = Segments.toArray(runningVar);
                for (int c = 0; c < CHANNELS; c++) {
                    boundMean[c] = nextBound(formula, boundMean[c], expectedMean[c], t.mean()[c],
                            n, gotMean[c]);
                    boundVar[c] = nextBound(formula, boundVar[c], expectedVar[c], t.variance()[c],
                            n, gotVar[c]);
                    expectedMean[c] = formula.next(expectedMean[c], t.mean()[c], false, m, n);
                    expectedVar[c] = formula.next(expectedVar[c], t.variance()[c], true, m, n);
                    String at = rule + ", step " + n + " (M = " + m + "), channel " + c;
                    Expect.within("running mean", gotMean[c], expectedMean[c], boundMean[c], at);
                    Expect.within("running variance", gotVar[c], expectedVar[c], boundVar[c], at);
                }
            }
        }
    }

    private static int channelOf(TensorShape shape, int i) {
        return shape.layout() == Layout.NCHW
                ? (int) ((i / shape.spatial()) % shape.channels())
                : i % shape.channels();
    }

    /** E_k = c_k E_{k-1} + 10 w (|T_{k-1}| + 2 |batch_k|) + u |F_k| + 2^-150. */
    private static double nextBound(Formula f, double previousBound, double previous, double batch,
                                    long n, float got) {
        return f.oldWeight(n) * previousBound + 10 * Bounds.W * (Math.abs(previous)
                + 2 * Math.abs(batch)) + Bounds.U * Math.abs(got) + Bounds.TINY;
    }

    /**
     * Worked by hand: M = 4, batch mean 4, biased variance 5 (unbiased 20/3), starting from
     * running 0 and 1. With the momentum at the value that keeps only the batch (PyTorch 1,
     * ONNX / Keras / DJL 0; the cumulative rule's first batch), the running variance is the
     * rule's batch variance itself: 20/3 rounded to float for PyTorch, exactly 5 for the others.
     */
    @Test
    void biasedOrUnbiasedVariancePerRule() {
        TensorShape shape = TensorShape.nchw(2, 1, 1, 2);
        assertEquals((float) (20.0 / 3), onlyTheBatch(shape, RunningStatistics.PYTORCH, 1f));
        assertEquals((float) (20.0 / 3), onlyTheBatch(shape, RunningStatistics.CUMULATIVE_AVERAGE, Float.NaN));
        assertEquals(5f, onlyTheBatch(shape, RunningStatistics.ONNX, 0f));
        assertEquals(5f, onlyTheBatch(shape, RunningStatistics.KERAS, 0f));
        assertEquals(5f, onlyTheBatch(shape, RunningStatistics.DJL, 0f));
        assertTrue(RunningStatistics.PYTORCH.unbiasedVariance());
        assertTrue(RunningStatistics.CUMULATIVE_AVERAGE.unbiasedVariance());
        for (RunningStatistics r : new RunningStatistics[] {RunningStatistics.ONNX,
                RunningStatistics.KERAS, RunningStatistics.DJL}) {
            assertTrue(!r.unbiasedVariance() && r.momentumWeighsRunning(), r.toString());
        }
    }

    private static float onlyTheBatch(TensorShape shape, RunningStatistics rule, float momentum) {
        BatchNorm.Builder b = BatchNorm.builder(shape).runningStatistics(rule);
        if (!Float.isNaN(momentum)) {
            b.momentum(momentum);
        }
        BatchNorm bn = b.build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mean = Segments.of(arena, new float[] {4});
            MemorySegment var = Segments.of(arena, new float[] {5});
            MemorySegment rm = Segments.of(arena, new float[] {0});
            MemorySegment rv = Segments.of(arena, new float[] {1});
            bn.updateRunningStatistics(mean, var, rm, rv, 1);
            assertEquals(4f, Segments.toArray(rm)[0], rule.toString());
            return Segments.toArray(rv)[0];
        }
    }

    /**
     * The cumulative rule's second step by hand: n = 2 averages the two batches. First batch mean
     * 4, variance 5 (unbiased 20/3); second mean 1, variance 2 (unbiased 8/3): the running mean is
     * 2.5 and the running variance (20/3 + 8/3) / 2 = 14/3.
     */
    @Test
    void cumulativeAverageOfTwoBatchesByHand() {
        BatchNorm bn = BatchNorm.builder(TensorShape.nchw(2, 1, 1, 2))
                .runningStatistics(RunningStatistics.CUMULATIVE_AVERAGE).build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment rm = Segments.of(arena, new float[] {123});
            MemorySegment rv = Segments.of(arena, new float[] {456});
            bn.updateRunningStatistics(Segments.of(arena, new float[] {4}),
                    Segments.of(arena, new float[] {5}), rm, rv, 1);
            bn.updateRunningStatistics(Segments.of(arena, new float[] {1}),
                    Segments.of(arena, new float[] {2}), rm, rv, 2);
            assertEquals(2.5f, Segments.toArray(rm)[0]);
            // 20/3 was rounded to float after step 1 (error <= u * 20/3); halved, plus a rounding.
            Expect.within("running variance", Segments.toArray(rv)[0], 14.0 / 3,
                    Bounds.U * 20.0 / 3 / 2 + Bounds.U * 14.0 / 3 + 1e-15, "step 2");
        }
    }

    @Test
    void eachRuleHasItsFrameworksDefaultMomentum() {
        TensorShape shape = TensorShape.nc(4, 2);
        assertEquals(0.1f, BatchNorm.builder(shape).build().momentum());
        assertEquals(RunningStatistics.PYTORCH, BatchNorm.builder(shape).build().runningStatistics());
        assertEquals(0.9f, BatchNorm.builder(shape).runningStatistics(RunningStatistics.ONNX).build().momentum());
        assertEquals(0.99f, BatchNorm.builder(shape).runningStatistics(RunningStatistics.KERAS).build().momentum());
        assertEquals(0.9f, BatchNorm.builder(shape).runningStatistics(RunningStatistics.DJL).build().momentum());
        assertTrue(Float.isNaN(BatchNorm.builder(shape)
                .runningStatistics(RunningStatistics.CUMULATIVE_AVERAGE).build().momentum()));
        // A given momentum wins over the rule's default, whatever the order of the calls.
        assertEquals(0.5f, BatchNorm.builder(shape).momentum(0.5f)
                .runningStatistics(RunningStatistics.ONNX).build().momentum());
        assertEquals(0.5f, BatchNorm.builder(shape).runningStatistics(RunningStatistics.KERAS)
                .momentum(0.5f).build().momentum());
    }

    @Test
    void badArgumentsAreRejectedBeforeAnythingIsWritten() {
        TensorShape shape = TensorShape.nc(4, 2);
        NullPointerException npe = assertThrows(NullPointerException.class,
                () -> BatchNorm.builder(shape).runningStatistics(null));
        assertTrue(npe.getMessage().startsWith("runningStatistics: expected"), npe.getMessage());
        IllegalArgumentException both = assertThrows(IllegalArgumentException.class,
                () -> BatchNorm.builder(shape).momentum(0.1f)
                        .runningStatistics(RunningStatistics.CUMULATIVE_AVERAGE).build());
        assertTrue(both.getMessage().startsWith("momentum: expected none with CUMULATIVE_AVERAGE"),
                both.getMessage());
        assertTrue(both.getMessage().endsWith("got 0.1"), both.getMessage());

        BatchNorm cumulative = BatchNorm.builder(shape)
                .runningStatistics(RunningStatistics.CUMULATIVE_AVERAGE).build();
        BatchNorm pytorch = BatchNorm.builder(shape).build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mean = Segments.of(arena, new float[] {1, 2});
            MemorySegment var = Segments.of(arena, new float[] {3, 4});
            MemorySegment rm = Segments.of(arena, new float[] {-7, -7});
            MemorySegment rv = Segments.of(arena, new float[] {-7, -7});
            IllegalStateException noCount = assertThrows(IllegalStateException.class,
                    () -> cumulative.updateRunningStatistics(mean, var, rm, rv));
            assertTrue(noCount.getMessage().contains("numBatchesTracked"), noCount.getMessage());
            for (BatchNorm bn : new BatchNorm[] {cumulative, pytorch}) {
                IllegalArgumentException zero = assertThrows(IllegalArgumentException.class,
                        () -> bn.updateRunningStatistics(mean, var, rm, rv, 0));
                assertEquals("numBatchesTracked: expected >= 1 (the batches seen, this one included),"
                        + " got 0", zero.getMessage());
                IllegalArgumentException size = assertThrows(IllegalArgumentException.class,
                        () -> bn.updateRunningStatistics(mean, var, rm.asSlice(4), rv, 3));
                assertTrue(size.getMessage().startsWith("runningMean: expected 8 bytes"), size.getMessage());
            }
            assertEquals(-7f, Segments.toArray(rm)[0]);
            assertEquals(-7f, Segments.toArray(rv)[1]);
        }
    }
}
