package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * Folds an inference-mode BatchNorm into the convolution or linear layer before it, as ONNX
 * Runtime does at session creation and PyTorch's {@code fuse_conv_bn_eval}: the layer
 * {@code z = W x + b} followed by {@code y = gamma (z - mean) / sqrt(var + eps) + beta} is the
 * single layer {@code y = W' x + b'} with, per output channel o,
 * <pre>
 *   a[o]  = gamma[o] / sqrt(var[o] + eps)
 *   W'[o] = W[o] * a[o]                          (every weight of output channel o)
 *   b'[o] = (b[o] - mean[o]) * a[o] + beta[o]
 * </pre>
 * computed in double from the float inputs and rounded to float once per element, so each folded
 * value is within half an ulp of the exact one. {@link BatchNormLayer#fold} does the same with a
 * layer's own parameters and running statistics.
 */
public final class BatchNormFolding {

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    /** Where the output channel sits in a weight tensor of C output channels and K weights each. */
    public enum WeightLayout {
        /**
         * Output channels first: PyTorch's convolution OIHW {@code [out, in, kh, kw]} and linear
         * {@code [out, in]}, ONNX's Conv and Gemm with {@code transB=1}. Weight i belongs to
         * output channel {@code i / K}.
         */
        OUTPUT_CHANNELS_FIRST,
        /**
         * Output channels last: TensorFlow / Keras convolution HWIO {@code [kh, kw, in, out]} and
         * Dense kernels {@code [in, out]}. Weight i belongs to output channel {@code i % C}.
         */
        OUTPUT_CHANNELS_LAST
    }

    private BatchNormFolding() {
    }

    /**
     * Folds BatchNorm's {@code gamma}, {@code beta}, {@code mean}, {@code variance} and
     * {@code epsilon} into {@code weights} and {@code bias} (formulas in the class comment). The
     * number of output channels C is {@code mean}'s size in floats; {@code weights} holds C x K
     * floats for some K >= 1 (the fan-in: in * kh * kw, or in), laid out as {@code layout} says.
     * {@code bias}, {@code gamma} and {@code beta} may be null (0, 1 and 0). In place is allowed:
     * {@code foldedWeights} may be {@code weights} and {@code foldedBias} may be {@code bias}; any
     * other overlap is rejected. A variance below {@code -epsilon} gives NaN in that channel.
     *
     * @param layout        where the output channel is in {@code weights}
     * @param weights       the layer's weights, C x K floats
     * @param bias          the layer's bias, C floats, or null for none
     * @param gamma         BatchNorm's scale, C floats, or null for 1
     * @param beta          BatchNorm's shift, C floats, or null for 0
     * @param mean          BatchNorm's (running) mean, C floats
     * @param variance      BatchNorm's (running) variance, C floats
     * @param epsilon       BatchNorm's epsilon, positive and finite
     * @param foldedWeights output, C x K floats
     * @param foldedBias    output, C floats (written even when {@code bias} is null)
     * @throws IllegalArgumentException if {@code mean} is empty or not whole floats, the weights are
     *                                  not a positive multiple of C floats, a size is wrong, an
     *                                  output is read-only or overlaps another argument, a segment
     *                                  is closed, or epsilon is not positive and finite
     * @throws NullPointerException     if layout, weights, mean, variance, foldedWeights or
     *                                  foldedBias is null
     */
    public static void fold(WeightLayout layout, MemorySegment weights, MemorySegment bias,
                            MemorySegment gamma, MemorySegment beta, MemorySegment mean,
                            MemorySegment variance, float epsilon, MemorySegment foldedWeights,
                            MemorySegment foldedBias) {
        Objects.requireNonNull(layout, "layout: expected OUTPUT_CHANNELS_FIRST or OUTPUT_CHANNELS_LAST, got null");
        Objects.requireNonNull(mean, "mean: expected a segment of one float per output channel, got null");
        Objects.requireNonNull(weights, "weights: expected a segment of output channels x fan-in floats, got null");
        if (mean.byteSize() == 0 || mean.byteSize() % Float.BYTES != 0) {
            throw new IllegalArgumentException("mean: expected a positive whole number of floats (one per"
                    + " output channel), got " + mean.byteSize() + " bytes");
        }
        if (!(epsilon > 0) || !Float.isFinite(epsilon)) {
            throw new IllegalArgumentException("epsilon: expected a positive finite number, got " + epsilon);
        }
        long channelsLong = mean.byteSize() / Float.BYTES;
        if (channelsLong > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("mean: expected at most " + Integer.MAX_VALUE
                    + " channels, got " + channelsLong);
        }
        int channels = (int) channelsLong;
        long rowBytes = (long) channels * Float.BYTES;
        if (weights.byteSize() == 0 || weights.byteSize() % rowBytes != 0) {
            throw new IllegalArgumentException("weights: expected a positive multiple of " + channels
                    + " floats (" + channels + " output channels x the fan-in), got "
                    + weights.byteSize() + " bytes");
        }
        long count = weights.byteSize() / Float.BYTES;
        long fanIn = count / channels;
        String c = channels + " output channels";
        // Three passes over the checks because an Arguments round allows one in-place pair: this
        // call has two (weights, bias), and every pair of segments is still compared once.
        Arguments.start()
                .input("weights", weights, count, "output channels x fan-in " + fanIn, false)
                .input("bias", bias, channels, c, true)
                .input("gamma", gamma, channels, c, true)
                .input("beta", beta, channels, c, true)
                .input("mean", mean, channels, c, false)
                .input("variance", variance, channels, c, false)
                .output("foldedWeights", foldedWeights, count, "output channels x fan-in " + fanIn, false)
                .finish("foldedWeights", "weights");
        Arguments.start()
                .input("bias", bias, channels, c, true)
                .input("gamma", gamma, channels, c, true)
                .input("beta", beta, channels, c, true)
                .input("mean", mean, channels, c, false)
                .input("variance", variance, channels, c, false)
                .output("foldedBias", foldedBias, channels, c, false)
                .output("foldedWeights", foldedWeights, count, "output channels x fan-in " + fanIn, false)
                .finish("foldedBias", "bias");
        Arguments.start()
                .input("weights", weights, count, "output channels x fan-in " + fanIn, false)
                .output("foldedBias", foldedBias, channels, c, false)
                .finish(null, null);

        double[] scale = new double[channels];
        for (int o = 0; o < channels; o++) {
            double g = gamma == null ? 1.0 : gamma.getAtIndex(F32, o);
            scale[o] = g / Math.sqrt((double) variance.getAtIndex(F32, o) + epsilon);
            double b = bias == null ? 0.0 : bias.getAtIndex(F32, o);
            double shift = beta == null ? 0.0 : beta.getAtIndex(F32, o);
            foldedBias.setAtIndex(F32, o, (float) ((b - mean.getAtIndex(F32, o)) * scale[o] + shift));
        }
        if (layout == WeightLayout.OUTPUT_CHANNELS_FIRST) {
            for (long i = 0; i < count; i++) {
                foldedWeights.setAtIndex(F32, i, (float) (weights.getAtIndex(F32, i) * scale[(int) (i / fanIn)]));
            }
        } else {
            for (long i = 0; i < count; i++) {
                foldedWeights.setAtIndex(F32, i, (float) (weights.getAtIndex(F32, i) * scale[(int) (i % channels)]));
            }
        }
    }
}
