package dev.vecnorm.kernel;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.ExecutorService;
import java.util.function.ObjIntConsumer;

/**
 * Drives BatchNorm's kernels for GroupNorm and InstanceNorm (one group per channel): statistics
 * per (image, group) over its channels' values, the transform and backward with per-(image,
 * channel) parameters. Arguments are validated by the public classes before any method here runs.
 *
 * <ul>
 *   <li>NCHW: a group of an image is one contiguous run of (channels / groups) x spatial floats:
 *       its statistics are {@link BatchNormKernels#channelMoments} over that run (one plane), its
 *       transform {@link BatchNormKernels#planesNormalize} over its planes with parameter arrays
 *       indexed by plane (the kernels' "channels" is then batch x channels). One task does a
 *       whole group, so no bit depends on the tasks.</li>
 *   <li>NHWC: an image's pixels are cut into chunks that depend on the shape only; each chunk's
 *       per-channel shifted sums ({@link BatchNormKernels#rowMoments}) are merged in chunk order
 *       by {@link ChannelMoments}, and a group's channels then by Chan's formula in channel
 *       order. The transform is {@link BatchNormKernels#rowNormalize} with each image's arrays.</li>
 * </ul>
 * Rounding is BatchNorm's: y = fma(x - hi, fl(gamma rstd), fl(beta - lo gamma rstd)) with
 * hi + lo the group's double mean; backward dx = fma(x - mean, b, fma(dy, a, c)).
 */
public final class GroupNormEngine {

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private final BatchNormKernels kernels;
    private final int n, channels, groups, perGroup;
    private final long spatial, groupValues;
    private final boolean nchw;
    private final double epsilon;
    private final Workers workers;
    /** NHWC: chunks per image (see the class comment). */
    private final int chunks;
    /** NHWC: x streams from memory, and the row reductions take one row at a time. */
    private final boolean fromMemory;

    public GroupNormEngine(BatchNormKernels kernels, TensorShape shape, int groups, float epsilon,
                           int parallelism, ExecutorService executor) {
        if ((long) shape.batch() * shape.channels() > Integer.MAX_VALUE / 2) {
            throw new IllegalArgumentException("shape: expected batch * channels <= "
                    + Integer.MAX_VALUE / 2 + ", got " + shape.batch() + " * " + shape.channels());
        }
        this.kernels = kernels;
        this.n = shape.batch();
        this.channels = shape.channels();
        this.groups = groups;
        this.perGroup = channels / groups;
        this.spatial = shape.spatial();
        this.groupValues = perGroup * spatial;
        this.nchw = shape.layout() == Layout.NCHW || spatial == 1;
        this.epsilon = epsilon;
        this.workers = new Workers(shape.elements() < BatchNormEngine.PARALLEL_MIN_ELEMENTS ? 1
                : parallelism, executor);
        long wanted = Math.ceilDiv(spatial * channels, BatchNormEngine.CHUNK_ELEMENTS);
        this.chunks = nchw ? 1 : (int) Math.max(1, Math.min(Math.min(wanted, BatchNormEngine.MAX_CHUNKS), spatial));
        this.fromMemory = !nchw && BatchNormEngine.streamsFromMemory(4 * shape.elements());
    }

    /** The kernels this engine calls. */
    public BatchNormKernels kernels() {
        return kernels;
    }

    private final ObjIntConsumer<Scratch> groupForward = this::groupForward;
    private final ObjIntConsumer<Scratch> chunkMoments = this::chunkMoments;
    private final ObjIntConsumer<Scratch> imageStatistics = this::imageStatistics;
    private final ObjIntConsumer<Scratch> chunkNormalize = this::chunkNormalize;
    private final ObjIntConsumer<Scratch> groupBackward = this::groupBackward;
    private final ObjIntConsumer<Scratch> chunkGradientSums = this::chunkGradientSums;
    private final ObjIntConsumer<Scratch> imageGradientCoefficients = this::imageGradientCoefficients;
    private final ObjIntConsumer<Scratch> chunkGradientInput = this::chunkGradientInput;

    // -------------------------------------------------------------------------------- forward

    /**
     * Forward; {@code mean} and {@code rstd} (batch x groups floats) may be null. With
     * {@code runningMean} and {@code runningVar} (channels floats, InstanceNorm only) they are
     * updated as PyTorch's track_running_stats: running = (1 - momentum) running + momentum
     * avg_n(stat), the unbiased variance, in double and rounded once.
     */
    public void forward(MemorySegment x, MemorySegment gamma, MemorySegment beta, MemorySegment y,
                        MemorySegment mean, MemorySegment rstd, MemorySegment runningMean,
                        MemorySegment runningVar, float momentum) {
        Scratch w = scratch.acquire();
        try {
            vector(gamma, 1f, w.g);
            vector(beta, 0f, w.b);
            w.x = x;
            w.y = y;
            if (nchw) {
                workers.run(taskCount(n * groups), w, groupForward);
            } else {
                for (int img = 0; img < n; img++) {     // each channel's first value of the image
                    MemorySegment.copy(x, F32, 4L * img * spatial * channels, w.shiftF, 0, channels);
                    for (int c = 0; c < channels; c++) {
                        w.shift[img][c] = w.shiftF[c];
                    }
                }
                workers.run(n * chunks, w, chunkMoments);
                workers.run(n, w, imageStatistics);
                workers.run(n * chunks, w, chunkNormalize);
            }
            for (int u = 0; u < n * groups; u++) {
                if (mean != null) {
                    mean.setAtIndex(F32, u, w.hi[u]);
                }
                if (rstd != null) {
                    rstd.setAtIndex(F32, u, w.rstd[u]);
                }
            }
            if (runningMean != null) {
                updateRunning(w, runningMean, runningVar, momentum);
            }
        } finally {
            scratch.release(w);
        }
    }

    private int taskCount(int units) {
        return Math.min(units, workers.parallelism());
    }

    /** NCHW task t: groups [u0, u1) of {@link #taskCount}, statistics then transform each. */
    private void groupForward(Scratch w, int t) {
        int units = n * groups, tasks = taskCount(units);
        for (int u = (int) ((long) units * t / tasks), end = (int) ((long) units * (t + 1) / tasks); u < end; u++) {
            int img = u / groups, g = u % groups;
            int p0 = img * channels + g * perGroup;
            long off = 4L * p0 * spatial;
            float shift = w.x.get(F32, off);
            kernels.channelMoments(w.x, off, 0, 1, groupValues, shift, null, w.s1, w.s2, u);
            double perValue = w.s1[u] / groupValues;
            double m = shift + perValue;
            double var = Math.max(0.0, w.s2[u] - w.s1[u] * perValue) / groupValues;
            groupParameters(w, u, m, var, w.mu, w.scale, w.offset, p0);
            kernels.planesNormalize(w.x, null, w.y, false, n * channels, spatial, p0, p0 + perGroup,
                    w.mu, w.scale, w.offset);
        }
    }

    /**
     * Group u's statistics (double mean m, biased variance var) and its channels' transform
     * parameters, BatchNorm's: hi = (float) m, scale = fl(gamma rstd), offset = fl(beta - lo
     * gamma rstd); into the arrays from index {@code at} (the group's first plane or channel).
     */
    private void groupParameters(Scratch w, int u, double m, double var, float[] mu, float[] scale,
                                 float[] offset, int at) {
        double r = 1.0 / Math.sqrt(var + epsilon);
        float hi = (float) m;
        double lo = m - hi;
        w.meanD[u] = m;
        w.varD[u] = var;
        w.hi[u] = hi;
        w.rstd[u] = (float) r;
        int c0 = (u % groups) * perGroup;
        for (int j = 0; j < perGroup; j++) {
            double a = w.g[c0 + j] * r;
            mu[at + j] = hi;
            scale[at + j] = (float) a;
            offset[at + j] = (float) (w.b[c0 + j] - lo * a);
        }
    }

    /** NHWC task (image, chunk): each channel's shifted sums over the chunk's pixels. */
    private void chunkMoments(Scratch w, int t) {
        int img = t / chunks, k = t % chunks;
        kernels.rowMoments(w.x, channels, 4L * channels, row(img, k), row(img, k + 1), 0, channels,
                w.shift[img], w.cs1[t], w.cs2[t], fromMemory);
    }

    /** NHWC task: image img's chunks merged per channel, then its groups, then its parameters. */
    private void imageStatistics(Scratch w, int img) {
        ChannelMoments moments = w.moments[img];
        moments.reset();
        for (int k = 0; k < chunks; k++) {
            int t = img * chunks + k;
            moments.mergeShiftedSums(0, channels, row(img, k + 1) - row(img, k), w.shift[img],
                    w.cs1[t], w.cs2[t]);
        }
        for (int g = 0; g < groups; g++) {
            // Chan's formula over the group's channels in order, each of `spatial` values.
            double mean = 0, m2 = 0, count = 0;
            for (int c = g * perGroup; c < (g + 1) * perGroup; c++) {
                double nb = spatial, total = count + nb;
                double delta = moments.mean(c) - mean;
                mean += delta * (nb / total);
                m2 += moments.m2(c) + delta * delta * (count * nb / total);
                count = total;
            }
            groupParameters(w, img * groups + g, mean, m2 / count, w.imu[img], w.iscale[img],
                    w.ioffset[img], g * perGroup);
        }
    }

    private void chunkNormalize(Scratch w, int t) {
        int img = t / chunks, k = t % chunks;
        kernels.rowNormalize(w.x, null, w.y, false, channels, row(img, k), row(img, k + 1), 0,
                channels, w.imu[img], w.iscale[img], w.ioffset[img]);
    }

    /** NHWC: the first row (pixel) of chunk k of image img; k = chunks gives the image's end. */
    private long row(int img, int k) {
        return img * spatial + spatial * k / chunks;
    }

    private void updateRunning(Scratch w, MemorySegment runningMean, MemorySegment runningVar,
                               float momentum) {
        double unbiased = (double) spatial / (spatial - 1);
        for (int c = 0; c < channels; c++) {
            double m = 0, v = 0;
            for (int img = 0; img < n; img++) {
                int u = img * groups + c / perGroup;
                m += w.meanD[u];
                v += w.varD[u] * unbiased;
            }
            double rm = runningMean.getAtIndex(F32, c), rv = runningVar.getAtIndex(F32, c);
            runningMean.setAtIndex(F32, c, (float) ((1 - (double) momentum) * rm + momentum * (m / n)));
            runningVar.setAtIndex(F32, c, (float) ((1 - (double) momentum) * rv + momentum * (v / n)));
        }
    }

    // ------------------------------------------------------------------------------- backward

    /**
     * Backward given the forward's float mean and rstd per (image, group), with m values per
     * group and g = dy gamma[c]:
     * <pre>
     *   dx = rstd gamma dy - rstd sum(g) / m - (x - mean) rstd^3 sum(g (x - mean)) / m
     *   dgamma[c] = sum_n rstd sum(dy (x - mean)),   dbeta[c] = sum_n sum(dy)
     * </pre>
     * the per-(image, channel) sums from BatchNorm's gradient-sum kernels, the coefficients in
     * double rounded once. dx may be dy: every sum is taken before the dx of its values is written.
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment mean,
                         MemorySegment rstd, MemorySegment dx, MemorySegment dgamma,
                         MemorySegment dbeta) {
        Scratch w = scratch.acquire();
        try {
            vector(gamma, 1f, w.g);
            for (int u = 0; u < n * groups; u++) {
                w.hi[u] = mean.getAtIndex(F32, u);
                w.rstd[u] = rstd.getAtIndex(F32, u);
            }
            w.x = x;
            w.dy = dy;
            w.dx = dx;
            if (nchw) {
                workers.run(taskCount(n * groups), w, groupBackward);
            } else {
                for (int img = 0; img < n; img++) {     // each channel's group mean
                    for (int c = 0; c < channels; c++) {
                        w.shift[img][c] = w.hi[img * groups + c / perGroup];
                    }
                }
                workers.run(n * chunks, w, chunkGradientSums);
                workers.run(n, w, imageGradientCoefficients);
                workers.run(n * chunks, w, chunkGradientInput);
                w.passedThrough = true;              // far groups' dx hold dy (see gradientCoefficients)
                for (int u = 0; u < n * groups; u++) {
                    for (int j = 0; w.far[u] && j < perGroup; j++) {
                        int img = u / groups, c = (u % groups) * perGroup + j;
                        for (long s = 0; s < spatial; s++) {
                            gradientInDouble(w, u, c, 4L * ((img * spatial + s) * channels + c));
                        }
                    }
                }
                w.passedThrough = false;
            }
            for (int c = 0; c < channels && (dgamma != null || dbeta != null); c++) {
                double dg = 0, db = 0;
                for (int img = 0; img < n; img++) {
                    int p = img * channels + c;
                    dg += (double) w.rstd[img * groups + c / perGroup] * w.sumDyXmu[p];
                    db += w.sumDy[p];
                }
                if (dgamma != null) {
                    dgamma.setAtIndex(F32, c, (float) dg);
                }
                if (dbeta != null) {
                    dbeta.setAtIndex(F32, c, (float) db);
                }
            }
        } finally {
            scratch.release(w);
        }
    }

    /** NCHW task t: groups of {@link #taskCount}, their sums, coefficients and dx. */
    private void groupBackward(Scratch w, int t) {
        int units = n * groups, tasks = taskCount(units);
        for (int u = (int) ((long) units * t / tasks), end = (int) ((long) units * (t + 1) / tasks); u < end; u++) {
            int img = u / groups, g = u % groups;
            int p0 = img * channels + g * perGroup;
            double mu = w.hi[u];
            for (int p = p0; p < p0 + perGroup; p++) {
                kernels.channelGradientSums(w.x, w.dy, 4L * p * spatial, 0, 1, spatial, mu, null,
                        w.sumDy, w.sumDyXmu, p);
            }
            if (gradientCoefficients(w, u, w.sumDy, w.sumDyXmu, p0, w.mu, w.a, w.bb, w.cc, p0)) {
                for (int p = p0; p < p0 + perGroup; p++) {
                    for (long s = 0; s < spatial; s++) {
                        gradientInDouble(w, u, p % channels, 4L * (p * spatial + s));
                    }
                }
            } else {
                kernels.planesGradientInput(w.x, w.dy, null, w.dx, null, n * channels, spatial,
                        p0, p0 + perGroup, w.mu, w.a, w.bb, w.cc);
            }
        }
    }

    /**
     * Group u's dx coefficients from its channels' sums (at {@code from} in sumDy and sumDyXmu),
     * into the arrays from index {@code at}: a = fl(gamma rstd), b = fl(-rstd^3 sum(g (x - mean))
     * / m), c = fl(-rstd sum(g) / m), the group sums added in channel order. Returns whether the
     * group's dx is computed in double instead ({@link RowNormEngine#lossy} b, c or a, for a
     * standard deviation above about 1e18); its coefficients are then the pass-through a = 1,
     * b = c = 0 and mean 0 (dx = dy), and the double ones are kept in the scratch.
     */
    private boolean gradientCoefficients(Scratch w, int u, double[] sumDy, double[] sumDyXmu, int from,
                                         float[] mu, float[] a, float[] b, float[] cc, int at) {
        int c0 = (u % groups) * perGroup;
        double sg = 0, sgx = 0;
        for (int j = 0; j < perGroup; j++) {
            sg += w.g[c0 + j] * sumDy[from + j];
            sgx += w.g[c0 + j] * sumDyXmu[from + j];
        }
        double r = w.rstd[u];
        double bd = -r * r * r * sgx / groupValues, cd = -r * sg / groupValues;
        boolean lossy = RowNormEngine.lossy(bd) || RowNormEngine.lossy(cd);
        for (int j = 0; j < perGroup; j++) {
            lossy |= RowNormEngine.lossy(w.g[c0 + j] * r);
        }
        w.farB[u] = bd;
        w.farC[u] = cd;
        w.far[u] = lossy;
        for (int j = 0; j < perGroup; j++) {
            mu[at + j] = lossy ? 0f : w.hi[u];
            a[at + j] = lossy ? 1f : (float) (w.g[c0 + j] * r);
            b[at + j] = lossy ? 0f : (float) bd;
            cc[at + j] = lossy ? 0f : (float) cd;
        }
        return lossy;
    }

    /**
     * dx at byte offset {@code at} of group u, channel c, in double and rounded once:
     * fma(x - mean, b, fma(dy, gamma rstd, c)), dy read from dx where the pass-through put it.
     */
    private void gradientInDouble(Scratch w, int u, int c, long at) {
        double a = w.g[c] * (double) w.rstd[u];
        double dy = (w.passedThrough ? w.dx : w.dy).get(F32, at);
        double dx = Math.fma(w.x.get(F32, at) - (double) w.hi[u], w.farB[u], Math.fma(dy, a, w.farC[u]));
        w.dx.set(F32, at, (float) dx);
    }

    /** NHWC task (image, chunk): per-channel gradient sums about each channel's group mean. */
    private void chunkGradientSums(Scratch w, int t) {
        int img = t / chunks, k = t % chunks;
        kernels.rowGradientSums(w.x, w.dy, channels, 4L * channels, 4L * channels, row(img, k),
                row(img, k + 1), 0, channels, w.shift[img], w.cs1[t], w.cs2[t], fromMemory);
    }

    /** NHWC task: image img's chunk sums added in chunk order, then its groups' coefficients. */
    private void imageGradientCoefficients(Scratch w, int img) {
        int p0 = img * channels;
        for (int c = 0; c < channels; c++) {
            double sd = 0, sx = 0;
            for (int k = 0; k < chunks; k++) {
                sd += w.cs1[img * chunks + k][c];
                sx += w.cs2[img * chunks + k][c];
            }
            w.sumDy[p0 + c] = sd;
            w.sumDyXmu[p0 + c] = sx;
        }
        for (int g = 0; g < groups; g++) {
            gradientCoefficients(w, img * groups + g, w.sumDy, w.sumDyXmu, p0 + g * perGroup,
                    w.imu[img], w.iscale[img], w.ioffset[img], w.ic[img], g * perGroup);
        }
    }

    private void chunkGradientInput(Scratch w, int t) {
        int img = t / chunks, k = t % chunks;
        kernels.rowGradientInput(w.x, w.dy, null, w.dx, null, channels, row(img, k),
                row(img, k + 1), 0, channels, w.imu[img], w.iscale[img], w.ioffset[img], w.ic[img]);
    }

    private void vector(MemorySegment s, float absent, float[] v) {
        if (s == null) {
            java.util.Arrays.fill(v, absent);
        } else {
            MemorySegment.copy(s, F32, 0, v, 0, channels);
        }
    }

    // ---------------------------------------------------------------------------------- scratch

    /** The working arrays of one call, one set per thread (see {@link Scratches}). */
    private final Scratches<Scratch> scratch = new Scratches<>(this::newScratch);

    private Scratch newScratch() {
        return new Scratch(n, channels, groups, nchw ? 0 : chunks);
    }

    private static final class Scratch extends Scratches.Slot {
        MemorySegment x, y, dy, dx;
        final float[] g, b, shiftF;
        /** Per (image, group): the statistics. */
        final double[] s1, s2, meanD, varD;
        final float[] hi, rstd;
        /** Backward: groups whose dx is computed in double, and their double b and c. */
        final boolean[] far;
        final double[] farB, farC;
        boolean passedThrough;
        /** NCHW: per plane (image x channel) parameters; gradient sums per plane (both layouts). */
        final float[] mu, scale, offset, a, bb, cc;
        final double[] sumDy, sumDyXmu;
        /** NHWC: per image, per channel; per (image, chunk) sums. */
        final double[][] shift, cs1, cs2;
        final float[][] imu, iscale, ioffset, ic;
        final ChannelMoments[] moments;

        Scratch(int n, int channels, int groups, int chunks) {
            g = new float[channels];
            b = new float[channels];
            shiftF = new float[channels];
            int units = n * groups, planes = n * channels;
            s1 = new double[units];
            s2 = new double[units];
            meanD = new double[units];
            varD = new double[units];
            hi = new float[units];
            far = new boolean[units];
            farB = new double[units];
            farC = new double[units];
            rstd = new float[units];
            boolean rows = chunks > 0;
            int p = rows ? 0 : planes;
            mu = new float[p];
            scale = new float[p];
            offset = new float[p];
            a = new float[p];
            bb = new float[p];
            cc = new float[p];
            sumDy = new double[planes];
            sumDyXmu = new double[planes];
            int images = rows ? n : 0;
            shift = new double[images][channels];
            cs1 = new double[images * chunks][channels];
            cs2 = new double[images * chunks][channels];
            imu = new float[images][channels];
            iscale = new float[images][channels];
            ioffset = new float[images][channels];
            ic = new float[images][channels];
            moments = new ChannelMoments[images];
            for (int i = 0; i < images; i++) {
                moments[i] = new ChannelMoments(channels);
            }
        }

        @Override
        void endCall() {
            x = y = dy = dx = null;
        }
    }
}
