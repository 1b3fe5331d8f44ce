package dev.vecnorm;

import dev.vecnorm.BatchNormFolding.WeightLayout;

/**
 * Naive convolution and linear layers in double, for the folding tests: every output is the sum
 * of K = in * 3 * 3 (or in) products and the bias, added in double. Activations are in a
 * {@link TensorShape}'s layout (spatial = h * w); weights in either {@link WeightLayout}. Called
 * with absolute values of x and w, the same code gives sum |w x|, the size the bounds need.
 */
final class Convolution {

    private Convolution() {
    }

    /** Index of weight (o, i, kh, kw) of a 3x3 convolution: OIHW or HWIO. */
    static int weightIndex(WeightLayout layout, int outChannels, int inChannels, int o, int i,
                           int kh, int kw) {
        return layout == WeightLayout.OUTPUT_CHANNELS_FIRST
                ? ((o * inChannels + i) * 3 + kh) * 3 + kw
                : ((kh * 3 + kw) * inChannels + i) * outChannels + o;
    }

    /**
     * 3x3 convolution, stride 1, zero padding 1:
     * {@code out[n, o, r, c] = bias[o] + sum_{i, kh, kw} w[o, i, kh, kw] x[n, i, r + kh - 1, c + kw - 1]}.
     * {@code bias} may be null (0).
     */
    static double[] conv3x3(TensorShape in, int h, int w, double[] x, int outChannels,
                            WeightLayout layout, double[] weights, double[] bias) {
        TensorShape out = new TensorShape(in.batch(), outChannels, in.spatial(), in.layout());
        double[] y = new double[Math.toIntExact(out.elements())];
        for (int n = 0; n < in.batch(); n++) {
            for (int o = 0; o < outChannels; o++) {
                for (int r = 0; r < h; r++) {
                    for (int c = 0; c < w; c++) {
                        double sum = bias == null ? 0 : bias[o];
                        for (int i = 0; i < in.channels(); i++) {
                            for (int kh = 0; kh < 3; kh++) {
                                for (int kw = 0; kw < 3; kw++) {
                                    int rr = r + kh - 1, cc = c + kw - 1;
                                    if (rr < 0 || rr >= h || cc < 0 || cc >= w) {
                                        continue;
                                    }
                                    sum += weights[weightIndex(layout, outChannels, in.channels(), o, i, kh, kw)]
                                            * x[Reference.index(in, n, i, (long) rr * w + cc)];
                                }
                            }
                        }
                        y[Reference.index(out, n, o, (long) r * w + c)] = sum;
                    }
                }
            }
        }
        return y;
    }

    /**
     * Linear layer on x [n, in]: {@code out[n, o] = bias[o] + sum_i w[o, i] x[n, i]}, weights
     * [out, in] (output channels first) or [in, out] (last). {@code bias} may be null.
     */
    static double[] linear(int batch, int inFeatures, double[] x, int outFeatures,
                           WeightLayout layout, double[] weights, double[] bias) {
        double[] y = new double[batch * outFeatures];
        for (int n = 0; n < batch; n++) {
            for (int o = 0; o < outFeatures; o++) {
                double sum = bias == null ? 0 : bias[o];
                for (int i = 0; i < inFeatures; i++) {
                    int wi = layout == WeightLayout.OUTPUT_CHANNELS_FIRST ? o * inFeatures + i : i * outFeatures + o;
                    sum += weights[wi] * x[n * inFeatures + i];
                }
                y[n * outFeatures + o] = sum;
            }
        }
        return y;
    }

    static double[] abs(double[] v) {
        double[] a = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            a[i] = Math.abs(v[i]);
        }
        return a;
    }

    static double[] abs(float[] v) {
        return abs(Reference.widen(v));
    }

    static float[] round(double[] v) {
        float[] f = new float[v.length];
        for (int i = 0; i < v.length; i++) {
            f[i] = (float) v[i];
        }
        return f;
    }
}
