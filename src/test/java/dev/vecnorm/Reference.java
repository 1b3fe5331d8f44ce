package dev.vecnorm;

/**
 * An independent BatchNorm in double precision, written from the paper rather than from the
 * kernels: two passes for the statistics (mean, then the mean of squared deviations), the
 * textbook transform, and the paper's step-by-step backward (dL/dxhat, dL/dvar, dL/dmean, dL/dx).
 * Tensors are plain float[] / double[] arrays in the shape's layout.
 */
final class Reference {

    private Reference() {
    }

    /** Float index of element (n, c, s) in the shape's layout. */
    static int index(TensorShape shape, int n, int c, long s) {
        long i = shape.layout() == Layout.NCHW
                ? ((long) n * shape.channels() + c) * shape.spatial() + s
                : ((long) n * shape.spatial() + s) * shape.channels() + c;
        return Math.toIntExact(i);
    }

    /** Mean and biased variance per channel, two passes in double. */
    record Moments(double[] mean, double[] variance) {
    }

    static Moments moments(TensorShape shape, float[] x) {
        return moments(shape, widen(x));
    }

    static Moments moments(TensorShape shape, double[] x) {
        int channels = shape.channels();
        double[] mean = new double[channels];
        double[] variance = new double[channels];
        double m = shape.perChannel();
        for (int c = 0; c < channels; c++) {
            double sum = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    sum += x[index(shape, n, c, s)];
                }
            }
            mean[c] = sum / m;
            double squares = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    double d = x[index(shape, n, c, s)] - mean[c];
                    squares += d * d;
                }
            }
            variance[c] = squares / m;
        }
        return new Moments(mean, variance);
    }

    /** y = gamma * (x - mean) / sqrt(variance + eps) + beta, per channel, in double. */
    static double[] transform(TensorShape shape, float[] x, double[] gamma, double[] beta,
                              double[] mean, double[] variance, double eps) {
        return transform(shape, widen(x), gamma, beta, mean, variance, eps);
    }

    static double[] transform(TensorShape shape, double[] x, double[] gamma, double[] beta,
                              double[] mean, double[] variance, double eps) {
        double[] y = new double[x.length];
        for (int c = 0; c < shape.channels(); c++) {
            double invstd = 1.0 / Math.sqrt(variance[c] + eps);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = index(shape, n, c, s);
                    y[i] = gamma[c] * ((x[i] - mean[c]) * invstd) + beta[c];
                }
            }
        }
        return y;
    }

    /** Gradients dx, dgamma, dbeta. */
    record Gradients(double[] dx, double[] dgamma, double[] dbeta) {
    }

    /**
     * The paper's backward, step by step, for given statistics (not assumed to be exactly the
     * statistics of x; with exact ones, dL/dmean's second term vanishes).
     */
    static Gradients backward(TensorShape shape, float[] x, float[] dy, double[] gamma,
                              double[] mean, double[] variance, double eps) {
        return backward(shape, widen(x), widen(dy), gamma, mean, variance, eps);
    }

    static Gradients backward(TensorShape shape, double[] x, double[] dy, double[] gamma,
                              double[] mean, double[] variance, double eps) {
        int channels = shape.channels();
        double m = shape.perChannel();
        double[] dx = new double[x.length];
        double[] dgamma = new double[channels];
        double[] dbeta = new double[channels];
        for (int c = 0; c < channels; c++) {
            double var = variance[c] + eps;
            double invstd = 1.0 / Math.sqrt(var);
            double dVar = 0;
            double dMeanDirect = 0;
            double sumDeviation = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = index(shape, n, c, s);
                    double dxhat = dy[i] * gamma[c];
                    double deviation = x[i] - mean[c];
                    dVar += dxhat * deviation * -0.5 * Math.pow(var, -1.5);
                    dMeanDirect += dxhat * -invstd;
                    sumDeviation += -2.0 * deviation;
                    dgamma[c] += dy[i] * (deviation * invstd);
                    dbeta[c] += dy[i];
                }
            }
            double dMean = dMeanDirect + dVar * sumDeviation / m;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = index(shape, n, c, s);
                    double dxhat = dy[i] * gamma[c];
                    dx[i] = dxhat * invstd + dVar * 2.0 * (x[i] - mean[c]) / m + dMean / m;
                }
            }
        }
        return new Gradients(dx, dgamma, dbeta);
    }

    /** dL/dvar of the paper, per channel: needed to bound how far given statistics are from exact. */
    static double[] dVariance(TensorShape shape, float[] x, float[] dy, double[] gamma,
                              double[] mean, double[] variance, double eps) {
        double[] out = new double[shape.channels()];
        for (int c = 0; c < shape.channels(); c++) {
            double var = variance[c] + eps;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = index(shape, n, c, s);
                    out[c] += dy[i] * gamma[c] * (x[i] - mean[c]) * -0.5 * Math.pow(var, -1.5);
                }
            }
        }
        return out;
    }

    /**
     * The fused forward's tail in double: {@code act(pre + residual)}, the residual null for
     * none, act the identity or ReLU {@code max(0, v)}.
     */
    static double[] activate(double[] pre, float[] residual, boolean relu) {
        double[] y = new double[pre.length];
        for (int i = 0; i < pre.length; i++) {
            double v = pre[i] + (residual == null ? 0 : residual[i]);
            y[i] = relu ? Math.max(0, v) : v;
        }
        return y;
    }

    /**
     * ReLU's backward, the chain rule through {@code y = max(0, s)} given its output: dL/ds =
     * dL/dy where y > 0, else 0 (the derivative at the kink taken as 0, as PyTorch does); a NaN
     * y passes dy, as PyTorch's threshold_backward (y <= 0 is false for NaN).
     */
    static double[] reluBackward(float[] dy, float[] y) {
        double[] g = new double[dy.length];
        for (int i = 0; i < dy.length; i++) {
            g[i] = y[i] <= 0 ? 0 : dy[i];
        }
        return g;
    }

    /** {@link #reluBackward} for outputs in double (the reference's own forward). */
    static double[] reluBackward(double[] dy, double[] y) {
        double[] g = new double[dy.length];
        for (int i = 0; i < dy.length; i++) {
            g[i] = y[i] <= 0 ? 0 : dy[i];
        }
        return g;
    }

    /** Gradients of {@code y = act(bn(x) + residual)}: BatchNorm's, and the residual's. */
    record FusedGradients(Gradients bn, double[] dresidual) {
    }

    /**
     * The fused backward, step by step: the activation's backward first (dL/ds = g from the
     * output y), then s = bn(x) + residual passes g to both terms unchanged (dL/dresidual = g,
     * dL/dbn = g), then the paper's backward of bn with dy = g.
     */
    static FusedGradients fusedBackward(TensorShape shape, double[] x, double[] dy, double[] y,
                                        boolean relu, double[] gamma, double[] mean,
                                        double[] variance, double eps) {
        double[] g = relu ? reluBackward(dy, y) : dy.clone();
        return new FusedGradients(backward(shape, x, g, gamma, mean, variance, eps), g);
    }

    static double[] widen(float[] v) {
        double[] d = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            d[i] = v[i];
        }
        return d;
    }

    static double[] filled(int n, double value) {
        double[] d = new double[n];
        java.util.Arrays.fill(d, value);
        return d;
    }
}
