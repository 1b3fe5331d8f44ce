package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * How training keeps the running (population) statistics that inference uses: the rule of the
 * framework a model comes from. Frameworks disagree on two things: whether {@code momentum}
 * weighs the new batch value or the old running value, and whether the running variance tracks
 * the biased batch variance {@code var} (divided by M) or the unbiased {@code var * M / (M - 1)}
 * (M = batch * spatial values per channel). With {@code batch} the batch mean or variance and
 * {@code m} the momentum:
 * <pre>
 *   PYTORCH             running = (1 - m) * running + m * batch          unbiased variance
 *   CUMULATIVE_AVERAGE  running = running + (batch - running) / n        unbiased variance
 *   ONNX, KERAS, DJL    running = m * running + (1 - m) * batch          biased variance
 * </pre>
 * where n ({@code numBatchesTracked}) counts the batches seen so far, this one included.
 * Every rule is computed in double from the float inputs and rounded to float once per step.
 *
 * <p>Choose one with {@link BatchNorm.Builder#runningStatistics} or
 * {@link BatchNormLayer.Builder#runningStatistics}; unless a momentum is given, the rule's own
 * default ({@link #defaultMomentum()}) applies. A momentum of the other convention converts as
 * {@code 1 - m}: PyTorch's 0.1 is ONNX's 0.9.
 */
public enum RunningStatistics {

    /**
     * PyTorch's {@code BatchNorm*d} (the default): momentum weighs the new value (default 0.1),
     * and the running variance tracks the unbiased batch variance.
     */
    PYTORCH(0.1f, false, true),

    /**
     * PyTorch with {@code momentum=None}: the cumulative moving average over
     * {@code num_batches_tracked}, {@code running = (1 - 1/n) * running + (1/n) * batch}, which
     * is {@code running + (batch - running) / n}; unbiased variance. The first batch (n = 1)
     * replaces the initial values. There is no momentum: the update needs n
     * ({@link BatchNorm#updateRunningStatistics(MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, long)}).
     */
    CUMULATIVE_AVERAGE(Float.NaN, false, true),

    /**
     * ONNX {@code BatchNormalization} (training mode, opset 14+): momentum weighs the old value
     * (default 0.9), biased batch variance.
     */
    ONNX(0.9f, true, false),

    /**
     * Keras / TensorFlow {@code BatchNormalization}: momentum weighs the old value (default
     * 0.99), biased batch variance ({@code ops.moments}). Keras's epsilon default is 1e-3, not
     * vecnorm's 1e-5: a Keras model's layer needs {@code epsilon(1e-3f)} as well (its value is
     * part of the model, not of this rule).
     */
    KERAS(0.99f, true, false),

    /**
     * DJL's {@code BatchNorm} block: momentum weighs the old value (default 0.9), biased batch
     * variance as in the MXNet operator that DJL's builder mirrors. (DJL's PyTorch engine hands
     * the update to libtorch, which uses the unbiased variance: for such a model use
     * {@link #PYTORCH} with momentum {@code 1 - m}.)
     */
    DJL(0.9f, true, false);

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private final float defaultMomentum;
    private final boolean momentumWeighsRunning;
    private final boolean unbiasedVariance;

    RunningStatistics(float defaultMomentum, boolean momentumWeighsRunning, boolean unbiasedVariance) {
        this.defaultMomentum = defaultMomentum;
        this.momentumWeighsRunning = momentumWeighsRunning;
        this.unbiasedVariance = unbiasedVariance;
    }

    /** The framework's default momentum; NaN for {@link #CUMULATIVE_AVERAGE}, which has none. */
    public float defaultMomentum() {
        return defaultMomentum;
    }

    /** True when the running variance tracks {@code var * M / (M - 1)} rather than {@code var}. */
    public boolean unbiasedVariance() {
        return unbiasedVariance;
    }

    /** True when the momentum is the weight of the old running value (ONNX, Keras, DJL). */
    public boolean momentumWeighsRunning() {
        return momentumWeighsRunning;
    }

    /** True for the rule that needs the batch count rather than a momentum. */
    boolean cumulative() {
        return this == CUMULATIVE_AVERAGE;
    }

    /**
     * Updates the running statistics in place, arguments already checked: {@code momentum} is the
     * rule's (unused when cumulative), {@code perChannel} is M >= 2, {@code numBatchesTracked} is
     * n >= 1 (used only when cumulative).
     */
    void update(float momentum, long perChannel, long numBatchesTracked, int channels,
                MemorySegment mean, MemorySegment variance,
                MemorySegment runningMean, MemorySegment runningVariance) {
        double batchWeight;
        if (cumulative()) {
            batchWeight = 1.0 / numBatchesTracked;
        } else {
            batchWeight = momentumWeighsRunning ? 1.0 - momentum : momentum;
        }
        // Each weight errs by at most one double rounding (1 - m is exact for a float m >= 2^-29),
        // far below the float rounding of the result.
        double runningWeight = 1.0 - batchWeight;
        double unbias = unbiasedVariance ? (double) perChannel / (perChannel - 1) : 1.0;
        for (int i = 0; i < channels; i++) {
            double rm = runningWeight * runningMean.getAtIndex(F32, i)
                    + batchWeight * (double) mean.getAtIndex(F32, i);
            double rv = runningWeight * runningVariance.getAtIndex(F32, i)
                    + batchWeight * (variance.getAtIndex(F32, i) * unbias);
            runningMean.setAtIndex(F32, i, (float) rm);
            runningVariance.setAtIndex(F32, i, (float) rv);
        }
    }
}
