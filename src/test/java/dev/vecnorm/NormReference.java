package dev.vecnorm;

/**
 * The test-scope reference of the norm family: different code from the kernels on purpose,
 * double precision, two passes (the mean, then the squared deviations from it), and the
 * step-by-step backward (dL/dxhat, dL/dvar, dL/dmean, then dL/dx, as the BatchNorm paper's), itself
 * checked against central finite differences by {@link NormReferenceTest}.
 *
 * <p>Every norm is a set of units (a row or a head's part of a row; an image's group) given by
 * {@link Units}: the float indices of each unit's values and, for each value, the index of its
 * weight and bias (the feature or the channel).
 */
final class NormReference {

    private NormReference() {
    }

    /** Units: {@code index[u][j]} is value j of unit u, {@code param[u][j]} its weight's index. */
    record Units(int[][] index, int[][] param) {

        int count() {
            return index.length;
        }

        /** LayerNorm's and RMSNorm's units: rows x heads runs of features floats. */
        static Units rows(long rows, int heads, int features, long rowStride) {
            int units = Math.toIntExact(rows * heads);
            int[][] index = new int[units][features], param = new int[units][features];
            for (int u = 0; u < units; u++) {
                long base = (u / heads) * rowStride + (long) (u % heads) * features;
                for (int j = 0; j < features; j++) {
                    index[u][j] = Math.toIntExact(base + j);
                    param[u][j] = j;
                }
            }
            return new Units(index, param);
        }

        /** GroupNorm's units: (image, group), channels of the group in order, then spatial. */
        static Units groups(TensorShape shape, int groups) {
            int per = shape.channels() / groups;
            int m = Math.toIntExact(per * shape.spatial());
            int[][] index = new int[shape.batch() * groups][m], param = new int[shape.batch() * groups][m];
            for (int n = 0; n < shape.batch(); n++) {
                for (int g = 0; g < groups; g++) {
                    int u = n * groups + g, j = 0;
                    for (int c = g * per; c < (g + 1) * per; c++) {
                        for (long s = 0; s < shape.spatial(); s++, j++) {
                            index[u][j] = Reference.index(shape, n, c, s);
                            param[u][j] = c;
                        }
                    }
                }
            }
            return new Units(index, param);
        }
    }

    /** Per unit: the mean and the biased variance (two passes); RMS: mean 0 and the mean square. */
    record Statistics(double[] mean, double[] variance) {
    }

    static Statistics statistics(Units units, float[] x, boolean rms) {
        int count = units.count();
        double[] mean = new double[count], var = new double[count];
        for (int u = 0; u < count; u++) {
            int[] idx = units.index()[u];
            double m = 0;
            if (!rms) {
                for (int i : idx) {
                    m += x[i];
                }
                m /= idx.length;
            }
            double v = 0;
            for (int i : idx) {
                v += (x[i] - m) * (x[i] - m);
            }
            mean[u] = m;
            var[u] = v / idx.length;
        }
        return new Statistics(mean, var);
    }

    /** The weight as applied: 1 where absent, 1 + w with the unit offset. */
    static double weightOf(float[] weight, int p, boolean unitOffset) {
        double w = weight == null ? 1 : weight[p];
        return unitOffset && weight != null ? 1 + w : w;
    }

    /** y = (x - mean) / sqrt(var + eps) w + b per unit (RMS: mean 0, var the mean square, no b). */
    static double[] forward(Units units, float[] x, float[] weight, float[] bias, Statistics st,
                            double eps, boolean unitOffset, int floats) {
        double[] y = new double[floats];
        for (int u = 0; u < units.count(); u++) {
            double r = 1 / Math.sqrt(st.variance()[u] + eps);
            int[] idx = units.index()[u], par = units.param()[u];
            for (int j = 0; j < idx.length; j++) {
                double xhat = (x[idx[j]] - st.mean()[u]) * r;
                y[idx[j]] = xhat * weightOf(weight, par[j], unitOffset) + (bias == null ? 0 : bias[par[j]]);
            }
        }
        return y;
    }

    /** The reference's gradients: dx over the tensor, dw and db over the parameters. */
    record Gradients(double[] dx, double[] dw, double[] db) {
    }

    /**
     * LayerNorm's and GroupNorm's backward, step by step, for given per-unit mean and rstd
     * (1 / sqrt(var + eps)):
     * <pre>
     *   dxhat = dy w,   dvar = sum(dxhat (x - mean)) (-1/2) rstd^3,
     *   dmean = -rstd sum(dxhat) + dvar sum(-2 (x - mean)) / m,
     *   dx = dxhat rstd + dvar 2 (x - mean) / m + dmean / m
     * </pre>
     */
    static Gradients backward(Units units, float[] x, float[] dy, float[] weight, double[] mean,
                              double[] rstd, int floats, int params) {
        double[] dx = new double[floats], dw = new double[params], db = new double[params];
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            int m = idx.length;
            double r = rstd[u], mu = mean[u];
            double dvar = 0, sumDxhat = 0, sumDev = 0;
            for (int j = 0; j < m; j++) {
                double dxhat = dy[idx[j]] * weightOf(weight, par[j], false);
                dvar += dxhat * (x[idx[j]] - mu);
                sumDxhat += dxhat;
                sumDev += x[idx[j]] - mu;
            }
            dvar *= -0.5 * r * r * r;
            double dmean = -r * sumDxhat + dvar * (-2 * sumDev) / m;
            for (int j = 0; j < m; j++) {
                double dxhat = dy[idx[j]] * weightOf(weight, par[j], false);
                dx[idx[j]] = dxhat * r + dvar * 2 * (x[idx[j]] - mu) / m + dmean / m;
                dw[par[j]] += dy[idx[j]] * (x[idx[j]] - mu) * r;
                db[par[j]] += dy[idx[j]];
            }
        }
        return new Gradients(dx, dw, db);
    }

    /** dvar of {@link #backward} per unit (its term appears in the bound for a rounded mean). */
    static double[] dVariance(Units units, float[] x, float[] dy, float[] weight, double[] mean,
                              double[] rstd) {
        double[] out = new double[units.count()];
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            double dvar = 0;
            for (int j = 0; j < idx.length; j++) {
                dvar += dy[idx[j]] * weightOf(weight, par[j], false) * (x[idx[j]] - mean[u]);
            }
            out[u] = dvar * -0.5 * rstd[u] * rstd[u] * rstd[u];
        }
        return out;
    }

    /**
     * RMSNorm's backward, step by step, for a given rrms = (ms + eps)^(-1/2), ms = sum(x^2) / m:
     * <pre>
     *   dxhat = dy w',   drrms = sum(dxhat x),   dms = drrms (-1/2) rrms^3,
     *   dx = dxhat rrms + dms 2 x / m,   dw = sum dy x rrms
     * </pre>
     */
    static Gradients rmsBackward(Units units, float[] x, float[] dy, float[] weight,
                                 boolean unitOffset, double[] rrms, int floats, int params) {
        double[] dx = new double[floats], dw = new double[params];
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            int m = idx.length;
            double r = rrms[u], drrms = 0;
            for (int j = 0; j < m; j++) {
                drrms += dy[idx[j]] * weightOf(weight, par[j], unitOffset) * x[idx[j]];
            }
            double dms = drrms * -0.5 * r * r * r;
            for (int j = 0; j < m; j++) {
                dx[idx[j]] = dy[idx[j]] * weightOf(weight, par[j], unitOffset) * r + dms * 2 * x[idx[j]] / m;
                dw[par[j]] += (double) dy[idx[j]] * x[idx[j]] * r;
            }
        }
        return new Gradients(dx, dw, new double[params]);
    }

    /** The loss sum(y dy) of {@link #forward} at x (double x values), for finite differences. */
    static double loss(Units units, double[] x, float[] weight, float[] bias, float[] dy, double eps,
                       boolean rms, boolean unitOffset) {
        double total = 0;
        for (int u = 0; u < units.count(); u++) {
            int[] idx = units.index()[u], par = units.param()[u];
            double m = 0;
            if (!rms) {
                for (int i : idx) {
                    m += x[i];
                }
                m /= idx.length;
            }
            double v = 0;
            for (int i : idx) {
                v += (x[i] - m) * (x[i] - m);
            }
            double r = 1 / Math.sqrt(v / idx.length + eps);
            for (int j = 0; j < idx.length; j++) {
                double y = (x[idx[j]] - m) * r * weightOf(weight, par[j], unitOffset)
                        + (bias == null || rms ? 0 : bias[par[j]]);
                total += y * dy[idx[j]];
            }
        }
        return total;
    }
}
