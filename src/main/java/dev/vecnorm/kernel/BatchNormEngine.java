package dev.vecnorm.kernel;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.ExecutorService;
import java.util.function.ObjIntConsumer;

/**
 * Drives the kernels for one shape: splits each reduction into fixed chunks, merges the chunks'
 * partial results in chunk order, and hands element-wise work to {@link Workers}. Arguments are
 * validated by {@code BatchNorm} before any method here runs.
 *
 * <p><b>Determinism.</b> The chunks depend only on the shape, never on the thread count: the
 * images (NCHW) or rows (NHWC) are cut into at most {@link #MAX_CHUNKS} contiguous chunks of
 * about {@link #CHUNK_ELEMENTS} tensor elements or more. Within a chunk each channel adds its
 * planes (rows) in order; the chunks' partial results are merged in chunk order. With kernels
 * that agree bit for bit (see {@link BatchNormKernels}), every output is therefore the same for
 * every parallelism and for both NCHW strategies (channel blocks or two passes).
 */
public final class BatchNormEngine {

    /** Tensor elements per reduction chunk, at least (fewer when there are fewer in all). */
    static final long CHUNK_ELEMENTS = 1L << 15;
    /**
     * Below this many elements a call runs on the calling thread whatever the parallelism: handing
     * work to another thread costs microseconds, more than such a problem takes (the results are
     * the same either way).
     */
    static final long PARALLEL_MIN_ELEMENTS = 1L << 16;
    static final int MAX_CHUNKS = 16;
    /**
     * A channel whose mean (the float subtracted from x) is at least this large in magnitude is
     * "far": x - mean can round to infinity there (|x| <= Float.MAX_VALUE, and a difference rounds
     * to infinity only from Float.MAX_VALUE + 2^103 on), e.g. values of +-3e38 whose mean is
     * -1.5e38. So is a channel whose float coefficient would be subnormal or zero while the exact
     * one is not ({@link #lossy}): the forward scale gamma / sqrt(var + eps) (a standard deviation
     * above about 8.5e37, or a tiny gamma), or backward's b = -a invstd^2 Sxdy / M (a standard
     * deviation above about 1e18). The coefficient would keep fewer than 24 bits, or none, while y
     * or dx can still be normal: several ulps off, or y = beta where the exact value differs from
     * beta. The kernels pass such a channel through unchanged and {@link #finishFar} then computes
     * its outputs in double, element by element. Values beyond 1e31 are outside anything a network
     * produces, so this costs nothing in practice: a comparison or two per channel.
     */
    static final float FAR_MEAN = 0x1p103f;
    private static final int FAR_MEAN_BITS = Float.floatToRawIntBits(FAR_MEAN);
    private static final int EXPONENT = 0x7f800000;
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final int LANE_SLOTS = BatchNormKernels.LANE_SLOTS;

    private final BatchNormKernels kernels;
    private final int n;
    private final int channels;
    private final long spatial;
    private final long m;
    private final boolean nchw;
    private final double epsilon;
    private final Workers workers;
    /** What a chunk is made of: images (NCHW) or rows (NHWC); chunk k is [units k / chunks, ...). */
    private final long units;
    private final int chunks;
    /**
     * NCHW only: the channels of a block, or 0 for two passes. A block runs its reduction and then
     * its transform while its slice of x (and dy) is still in the caches, so x is read once from
     * memory; blocks are the parallel tasks. A block's slices of x and y (or x and dy) fill at
     * most half the L2, and there is at least one block per thread. Where one channel's slices
     * exceed that, a channel still walks well when its planes are long (half the L1 or more: the
     * slice then comes back from the L3); shorter planes take two passes in memory order instead,
     * the statistics chunk by chunk and then the transform, since a channel's walk over short
     * planes far apart is a pattern the prefetchers follow poorly. Only the walk depends on it:
     * each channel's lanes add the same values in the same order for any block, or a plane at a
     * time.
     */
    private final int channelBlock;
    /**
     * Bytes from one unit (image for NCHW, row otherwise) to the next: {@code inUnit} in x and
     * dx, {@code outUnit} in y, dy, the residual and its gradient; {@code denseUnit} is a dense
     * tensor's. Views (a channel slice of a wider buffer) have more; dense stays the fast path,
     * where the NCHW transforms stream planes across images.
     */
    private final long inUnit, outUnit, denseUnit;
    private final boolean dense;
    /**
     * NHWC: x is over twice the L3, so no part of it is still cached from the call's previous
     * pass (or the producer's) and the row reductions read it from memory.
     */
    private final boolean fromMemory;
    /** Tests: forces {@link #fromMemory} and the choice for accumulated ranges (null: none). */
    private final Boolean fromMemoryOverride;

    public BatchNormEngine(BatchNormKernels kernels, TensorShape shape, float epsilon,
                           int parallelism, ExecutorService executor) {
        this(kernels, shape, epsilon, parallelism, executor, null, null, 0, 0);
    }

    /**
     * An engine for views: {@code inStride} and {@code outStride} floats between consecutive
     * images (NCHW) or rows (NHWC, [N, C]) of x and dx, and of y and dy (0: dense).
     */
    public BatchNormEngine(BatchNormKernels kernels, TensorShape shape, float epsilon,
                           int parallelism, ExecutorService executor, long inStride,
                           long outStride) {
        this(kernels, shape, epsilon, parallelism, executor, null, null, inStride, outStride);
    }

    /**
     * Tests: {@code blockOverride} forces the channels per NCHW block, 0 for two passes, and
     * {@code fromMemoryOverride} the NHWC row walk (null: from the cache sizes).
     */
    BatchNormEngine(BatchNormKernels kernels, TensorShape shape, float epsilon, int parallelism,
                    ExecutorService executor, Integer blockOverride, Boolean fromMemoryOverride) {
        this(kernels, shape, epsilon, parallelism, executor, blockOverride, fromMemoryOverride, 0, 0);
    }

    private BatchNormEngine(BatchNormKernels kernels, TensorShape shape, float epsilon,
                            int parallelism, ExecutorService executor, Integer blockOverride,
                            Boolean fromMemoryOverride, long inStride, long outStride) {
        if ((long) shape.batch() * shape.channels() > Integer.MAX_VALUE / 2) {
            // Planes and per-plane partial sums are counted and indexed with ints.
            throw new IllegalArgumentException("shape: expected batch * channels <= "
                    + Integer.MAX_VALUE / 2 + ", got " + shape.batch() + " * " + shape.channels());
        }
        this.kernels = kernels;
        this.n = shape.batch();
        this.channels = shape.channels();
        this.spatial = shape.spatial();
        this.m = shape.perChannel();
        // With spatial = 1 both layouts are the same [N, C] matrix; rows vectorise across channels.
        this.nchw = shape.layout() == Layout.NCHW && spatial > 1;
        this.epsilon = epsilon;
        this.workers = new Workers(shape.elements() < PARALLEL_MIN_ELEMENTS ? 1 : parallelism, executor);
        this.units = nchw ? n : m;
        this.denseUnit = 4L * channels * (nchw ? spatial : 1);
        this.inUnit = inStride == 0 ? denseUnit : 4 * inStride;
        this.outUnit = outStride == 0 ? denseUnit : 4 * outStride;
        this.dense = inUnit == denseUnit && outUnit == denseUnit;
        long wanted = Math.ceilDiv(shape.elements(), CHUNK_ELEMENTS);
        this.chunks = (int) Math.max(1, Math.min(Math.min(wanted, MAX_CHUNKS), units));
        int block = 0;
        if (nchw) {
            CacheSizes caches = CacheSizes.machine();
            long sliceBytes = 8L * n * spatial;          // a channel of x and of y (or dy)
            long fits = Math.min(channels, caches.l2() / 2 / sliceBytes);
            if (fits == 0 && 4 * spatial >= caches.l1() / 2) {
                fits = 1;
            }
            block = blockOverride != null ? Math.min(blockOverride, channels)
                    : (int) Math.min(fits, Math.ceilDiv(channels, this.workers.parallelism()));
        }
        this.channelBlock = block;
        this.fromMemoryOverride = fromMemoryOverride;
        this.fromMemory = fromMemory(units * inUnit);
    }

    /**
     * Whether NHWC rows of x spanning {@code bytes} stream from memory: more than twice the L3,
     * so no pass finds much of them still cached (PERFORMANCE.md, NHWC statistics from memory).
     */
    private boolean fromMemory(long bytes) {
        return fromMemoryOverride != null ? fromMemoryOverride : !nchw && streamsFromMemory(bytes);
    }

    /** Whether {@code bytes} of a tensor are over twice the L3: no pass finds much of them cached. */
    static boolean streamsFromMemory(long bytes) {
        return bytes > 2 * CacheSizes.machine().l3();
    }

    /** The kernels this engine calls. */
    public BatchNormKernels kernels() {
        return kernels;
    }

    // ------------------------------------------------------------------------- forward training

    /** {@code BatchNorm.forwardTraining}, arguments already validated. */
    public void forwardTraining(MemorySegment x, MemorySegment gamma, MemorySegment beta,
                                MemorySegment y, MemorySegment mean, MemorySegment variance) {
        forwardTraining(x, null, gamma, beta, y, mean, variance, false);
    }

    /**
     * {@code BatchNorm.forwardTraining} with the fused parts: y = act(bn(x) + residual), the
     * residual null for none, act ReLU when {@code relu} (see {@link BatchNormKernels}).
     */
    public void forwardTraining(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                MemorySegment beta, MemorySegment y, MemorySegment mean,
                                MemorySegment variance, boolean relu) {
        forwardTraining(x, residual, gamma, beta, null, y, mean, variance, relu);
    }

    /**
     * {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, boolean)} with the statistics given (merged
     * by the caller; null: computed from x): the same parameters and transform, so given the
     * moments that the call would compute it writes the same bits.
     */
    public void forwardTraining(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                MemorySegment beta, ChannelMoments given, MemorySegment y,
                                MemorySegment mean, MemorySegment variance, boolean relu) {
        forwardTraining(x, residual, gamma, beta, given, y, mean, variance, relu, null);
    }

    /**
     * {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * ChannelMoments, MemorySegment, MemorySegment, MemorySegment, boolean)} that also writes
     * the ReLU's mask into {@code ws} (see {@link ReluMask}; null: none), from the transform's
     * loops (a word of bits per 64 elements, kept in a register until complete).
     */
    public void forwardTraining(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                MemorySegment beta, ChannelMoments given, MemorySegment y,
                                MemorySegment mean, MemorySegment variance, boolean relu,
                                MemorySegment ws) {
        Scratch w = scratch.acquire();
        try {
            w.residual = residual;
            w.relu = relu;
            w.ws = ws;
            if (ws != null) {
                ws.fill((byte) 0);                 // the partial words are ORed into zeros
            }
            channelVector(gamma, 1f, w.g);
            channelVector(beta, 0f, w.b);
            w.x = x;
            w.y = y;
            w.mean = mean;
            w.variance = variance;
            if (given != null) {
                w.moments.copyFrom(given);
            } else {
                w.moments.reset();
                shifts(x, w.shift);
                if (channelBlock > 0) {
                    workers.run(Math.ceilDiv(channels, channelBlock), w, trainingBlock);
                    return;
                }
                statistics(w);
            }
            int far = trainingParameters(w, 0, channels);
            normalize(w, x, y, w.mu, w.scale, w.offset, far);
        } finally {
            scratch.release(w);
        }
    }

    /**
     * The tasks handed to {@link Workers}: made once per engine, and given the call's scratch
     * (its segments and arrays), so that a call allocates no lambda.
     */
    private final ObjIntConsumer<Scratch> trainingBlock = this::trainingBlock;
    private final ObjIntConsumer<Scratch> backwardBlock = this::backwardBlock;
    private final ObjIntConsumer<Scratch> rowMoments = this::rowMoments;
    private final ObjIntConsumer<Scratch> planeMoments = this::planeMoments;
    private final ObjIntConsumer<Scratch> planeGradientSums = this::planeGradientSums;
    private final ObjIntConsumer<Scratch> planeGradientInput = this::planeGradientInput;
    private final ObjIntConsumer<Scratch> planeNormalize = this::planeNormalize;
    private final ObjIntConsumer<Scratch> rowNormalize = this::rowNormalize;
    private final ObjIntConsumer<Scratch> rowGradientSums = this::rowGradientSums;
    private final ObjIntConsumer<Scratch> rowGradientInput = this::rowGradientInput;

    /** NCHW statistics of chunk k in memory order, a plane at a time (see {@link #channelBlock}). */
    private void planeMoments(Scratch w, int k) {
        double[] lanes = w.lanes[k];
        for (long img = start(k); img < start(k + 1); img++) {
            for (int c = 0; c < channels; c++) {
                kernels.channelMoments(w.x, plane(img, c, inUnit), 0, 1, spatial, w.shift[k][c], lanes,
                        null, null, c);
            }
        }
        finishLanes(lanes, 0, channels, w.s1[k], w.s2[k]);
    }

    /** NCHW gradient sums of chunk k in memory order, as {@link #planeMoments}. */
    private void planeGradientSums(Scratch w, int k) {
        double[] lanes = w.lanes[k];
        for (long img = start(k); img < start(k + 1); img++) {
            for (int c = 0; c < channels; c++) {
                kernels.channelGradientSums(w.x, w.dy, w.ws, plane(img, c, inUnit), 0,
                        plane(img, c, w.dyUnit), 0, (img * channels + c) * spatial, 0, 1, spatial,
                        w.meanD[c], lanes, null, null, c);
            }
        }
        finishLanes(lanes, 0, channels, w.s1[k], w.s2[k]);
    }

    /**
     * Channels [c0, c1) of a lanes array: each channel's two quantities combined by the lane
     * tree (see {@link BatchNormKernels}) into s1[c] and s2[c]; the lanes zeroed for the next run.
     */
    private static void finishLanes(double[] lanes, int c0, int c1, double[] s1, double[] s2) {
        for (int c = c0; c < c1; c++) {
            int at = c * LANE_SLOTS, tail = at + 2 * BatchNormKernels.VIRTUAL_LANES;
            s1[c] = LaneTree.combine(lanes, at, lanes[tail]);
            s2[c] = LaneTree.combine(lanes, at + BatchNormKernels.VIRTUAL_LANES, lanes[tail + 1]);
        }
        java.util.Arrays.fill(lanes, c0 * LANE_SLOTS, c1 * LANE_SLOTS, 0.0);
    }

    /** Statistics of chunk k: rows [start(k), start(k + 1)). */
    private void rowMoments(Scratch w, int k) {
        kernels.rowMoments(w.x, channels, inUnit, start(k), start(k + 1), 0, channels, w.shift[k], w.s1[k],
                w.s2[k], fromMemory);
    }

    /** Transform task t of {@link #planeTasks()}. */
    private void planeNormalize(Scratch w, int t) {
        int tasks = planeTasks(), p0 = planeBoundary(t, tasks), p1 = planeBoundary(t + 1, tasks);
        if (dense) {
            kernels.planesNormalize(w.in, w.residual, w.out, w.ws, w.relu, channels, spatial, 0, 0,
                    p0, p1, w.tMu, w.tScale, w.tOffset);
            return;
        }
        // A view: image by image, each shifted to where the view holds it.
        for (int p = p0; p < p1; ) {
            int img = p / channels, q = Math.min(p1, (img + 1) * channels);
            kernels.planesNormalize(w.in, w.residual, w.out, w.ws, w.relu, channels, spatial,
                    shift(img, w.tInUnit), shift(img, w.tOutUnit), p, q, w.tMu, w.tScale, w.tOffset);
            p = q;
        }
    }

    /** Bytes from a dense tensor's image {@code img} to a view's of {@code unit} bytes per image. */
    private long shift(long img, long unit) {
        return img * (unit - denseUnit);
    }

    /** Transform task t of {@link #rowTasks()}. */
    private void rowNormalize(Scratch w, int t) {
        int tasks = rowTasks();
        kernels.rowNormalize(w.in, w.residual, w.out, w.ws, w.relu, channels, w.tInUnit, w.tOutUnit,
                m * t / tasks, m * (t + 1) / tasks, 0, channels, w.tMu, w.tScale, w.tOffset);
    }

    private void rowGradientSums(Scratch w, int k) {
        kernels.rowGradientSums(w.x, w.dy, w.ws, channels, inUnit, w.dyUnit, start(k), start(k + 1), 0,
                channels, w.meanD, w.s1[k], w.s2[k], fromMemory);
    }

    /**
     * dx = fma(x - mu, b, fma(g, a, c)) with mu, a, b, c in tMu, tScale, tOffset and tC of the
     * scratch, g the masked dy; x is tIn (null: the frozen form, dx = fma(g, a, c)).
     */
    private void planeGradientInput(Scratch w, int t) {
        int tasks = planeTasks(), p0 = planeBoundary(t, tasks), p1 = planeBoundary(t + 1, tasks);
        if (dense) {
            kernels.planesGradientInput(w.in, w.dy, w.mask, w.ws, w.dx, w.dresidual, channels, spatial,
                    0, 0, p0, p1, w.tMu, w.tScale, w.tOffset, w.tC);
            return;
        }
        for (int p = p0; p < p1; ) {
            int img = p / channels, q = Math.min(p1, (img + 1) * channels);
            kernels.planesGradientInput(w.in, w.dy, w.mask, w.ws, w.dx, w.dresidual, channels, spatial,
                    shift(img, w.gxUnit), shift(img, w.gyUnit), p, q, w.tMu, w.tScale, w.tOffset, w.tC);
            p = q;
        }
    }

    private void rowGradientInput(Scratch w, int t) {
        int tasks = rowTasks();
        kernels.rowGradientInput(w.in, w.dy, w.mask, w.ws, w.dx, w.dresidual, channels, w.gxUnit,
                w.gyUnit, m * t / tasks, m * (t + 1) / tasks, 0, channels, w.tMu, w.tScale,
                w.tOffset, w.tC);
    }

    /** NCHW channel block {@code blk}: its statistics, then its transform (see {@link #channelBlock}). */
    private void trainingBlock(Scratch w, int blk) {
        int c0 = blk * channelBlock, c1 = Math.min(channels, c0 + channelBlock);
        for (int k = 0; k < chunks; k++) {
            int images = (int) (start(k + 1) - start(k));
            for (int c = c0; c < c1; c++) {
                kernels.channelMoments(w.x, plane(start(k), c, inUnit), inUnit, images, spatial,
                        w.shift[k][c], null, w.s1[k], w.s2[k], c);
            }
            w.moments.mergeShiftedSums(c0, c1, images * spatial, w.shift[k], w.s1[k], w.s2[k]);
        }
        normalizeBlock(w, c0, c1, trainingParameters(w, c0, c1));
    }

    /** The transform of NCHW channel block [c0, c1), image by image, and its far channels. */
    private void normalizeBlock(Scratch w, int c0, int c1, int far) {
        boolean fused = far > 0 && (w.residual != null || w.relu);
        if (fused) {
            computeFar(w, w.x, c0, c1);
        }
        for (int img = 0; img < n; img++) {
            kernels.planesNormalize(w.x, w.residual, w.y, w.ws, w.relu, channels, spatial,
                    shift(img, inUnit), shift(img, outUnit), img * channels + c0,
                    img * channels + c1, w.mu, w.scale, w.offset);
        }
        if (fused) {
            writeFar(w, w.y, c0, c1);
            if (w.ws != null) {
                maskFar(w, w.y, c0, c1);
            }
        } else if (far > 0) {
            finishFar(w, null, w.y, outUnit, c0, c1);
        }
    }

    /** Statistics of every channel, chunk partials computed in parallel and merged in order. */
    private void statistics(Scratch w) {
        // Chunks in memory order, every channel of a chunk in one pass (plane after plane, or
        // row after row); partial sums per chunk and channel, merged in chunk order.
        workers.run(chunks, w, nchw ? planeMoments : rowMoments);
        for (int k = 0; k < chunks; k++) {
            long values = (start(k + 1) - start(k)) * (nchw ? spatial : 1);
            w.moments.mergeShiftedSums(0, channels, values, w.shift[k], w.s1[k], w.s2[k]);
        }
    }

    /**
     * Writes channels [c0, c1)'s statistics and transform parameters; returns how many are far.
     * y = gamma * (x - mean) / sqrt(var + eps) + beta as {@code fma(x - hi, scale, offset)}: the
     * mean is split into hi = (float) mean and lo = mean - hi, and lo is folded into the offset.
     * x - hi is exact for x near the mean (Sterbenz), so a channel far from zero loses nothing
     * to the subtraction, and a constant channel gives exactly beta. The loops are free of
     * branches so that C2 vectorises their square roots and divisions; far channels (see
     * {@link #FAR_MEAN}) are found by a separate scan, as in {@link #forwardInference}, and get the
     * identity, their y computed by {@link #finishFar}.
     */
    private int trainingParameters(Scratch w, int c0, int c1) {
        double[] meanD = w.meanD, varD = w.varD, aD = w.aD;
        float[] b = w.b, mu = w.mu, var = w.var, scale = w.scale;
        w.moments.finish(c0, c1, meanD, varD);
        scales(w.g, varD, epsilon, aD, c0, c1);
        trainingFloats(meanD, varD, aD, b, mu, var, scale, w.offset, c0, c1);
        MemorySegment.copy(mu, c0, w.mean, F32, 4L * c0, c1 - c0);
        MemorySegment.copy(var, c0, w.variance, F32, 4L * c0, c1 - c0);
        if (suspects(scale, mu, c0, c1) == 0) {
            return 0;
        }
        int far = 0;
        for (int c = c0; c < c1; c++) {
            w.far[c] = false;
            if (isFar(mu[c]) || lossy(aD[c])) {            // aD: scale[c], unrounded
                far += far(w, c, meanD[c], aD[c], b[c], 0);
            }
        }
        return far;
    }

    /** aD[c] = g[c] / sqrt(varD[c] + epsilon), in double. */
    private static void scales(float[] g, double[] varD, double epsilon, double[] aD, int c0,
                               int c1) {
        for (int c = c0; c < c1; c++) {
            aD[c] = g[c] / Math.sqrt(varD[c] + epsilon);
        }
    }

    /** The float statistics and transform parameters of {@link #trainingParameters}. */
    private static void trainingFloats(double[] meanD, double[] varD, double[] aD, float[] b,
                                       float[] mu, float[] var, float[] scale, float[] offset,
                                       int c0, int c1) {
        for (int c = c0; c < c1; c++) {
            float hi = (float) meanD[c];
            mu[c] = hi;
            var[c] = (float) varD[c];
            scale[c] = (float) aD[c];
            offset[c] = (float) (b[c] - (meanD[c] - hi) * aD[c]);
        }
    }

    /**
     * How many of channels [c0, c1) may be far: a zero or subnormal scale, or |mu| >= FAR_MEAN
     * (NaN and infinities included), in a scan without branches.
     */
    private static int suspects(float[] scale, float[] mu, int c0, int c1) {
        int suspects = 0;
        for (int c = c0; c < c1; c++) {
            suspects += ((Float.floatToRawIntBits(scale[c]) & EXPONENT) - 1
                    | FAR_MEAN_BITS - 1 - (Float.floatToRawIntBits(mu[c]) & 0x7fffffff)) >>> 31;
        }
        return suspects;
    }

    // ------------------------------------------------------------------ statistics in parts

    /**
     * The images (NCHW) or rows (NHWC, and NCHW with one value per plane) the statistics are
     * reduced over: the units of {@link #chunkBoundaries} and {@link #accumulate}.
     */
    public long units() {
        return units;
    }

    /**
     * The chunks of the reductions: chunk k is units [b[k], b[k + 1]), {@code chunks + 1}
     * boundaries from 0 to {@link #units()}. They depend on the shape only.
     */
    public long[] chunkBoundaries() {
        long[] b = new long[chunks + 1];
        for (int k = 0; k <= chunks; k++) {
            b[k] = start(k);
        }
        return b;
    }

    /**
     * Merges the statistics of units [from, to) of x after those in {@code into}, part by part:
     * the range's intersections with the chunks, each reduced as {@link #forwardTraining} reduces
     * a chunk (shifted by its own first values) and merged in chunk order. Accumulating the whole
     * tensor, or its chunks in order, hence gives forwardTraining's statistics bit for bit. Runs
     * on the calling thread.
     */
    public void accumulate(MemorySegment x, long from, long to, ChannelMoments into) {
        Scratch w = scratch.acquire();
        try {
            double[] shift = w.shift[0], s1 = w.s1[0], s2 = w.s2[0];
            for (int k = 0; k < chunks; k++) {
                long a = Math.max(from, start(k)), b = Math.min(to, start(k + 1));
                if (a >= b) {
                    continue;
                }
                for (int c = 0; c < channels; c++) {
                    shift[c] = shiftOf(x, a, c);
                }
                if (nchw) {
                    for (int c = 0; c < channels; c++) {
                        kernels.channelMoments(x, plane(a, c, inUnit), inUnit, (int) (b - a),
                                spatial, shift[c], null, s1, s2, c);
                    }
                } else {
                    kernels.rowMoments(x, channels, inUnit, a, b, 0, channels, shift, s1, s2,
                            fromMemory((to - from) * inUnit));
                }
                w.part.reset();
                w.part.mergeShiftedSums(0, channels, (b - a) * (nchw ? spatial : 1), shift, s1, s2);
                into.merge(w.part);
            }
        } finally {
            scratch.release(w);
        }
    }

    /**
     * Adds the gradient sums of units [from, to) to {@code sumDy} and {@code sumDyXmu}, part by
     * part as {@link #accumulate}: each part's sums as {@link #backward} computes a chunk's, added
     * in chunk order, so the whole tensor's (or its chunks' in order) are backward's bit for bit.
     * {@code mean} is the forward's float mean per channel. Runs on the calling thread.
     */
    public void accumulateGradient(MemorySegment x, MemorySegment dy, MemorySegment mean, long from,
                                   long to, double[] sumDy, double[] sumDyXmu) {
        Scratch w = scratch.acquire();
        try {
            double[] meanD = widen(channelVector(mean, 0f, w.mu), w.meanD), s1 = w.s1[0], s2 = w.s2[0];
            for (int k = 0; k < chunks; k++) {
                long a = Math.max(from, start(k)), b = Math.min(to, start(k + 1));
                if (a >= b) {
                    continue;
                }
                if (nchw) {
                    for (int c = 0; c < channels; c++) {
                        kernels.channelGradientSums(x, dy, plane(a, c, inUnit), inUnit,
                                plane(a, c, outUnit), outUnit, (int) (b - a), spatial, meanD[c],
                                null, s1, s2, c);
                    }
                } else {
                    kernels.rowGradientSums(x, dy, channels, inUnit, outUnit, a, b, 0, channels,
                            meanD, s1, s2, fromMemory((to - from) * inUnit));
                }
                for (int c = 0; c < channels; c++) {
                    sumDy[c] += s1[c];
                    sumDyXmu[c] += s2[c];
                }
            }
        } finally {
            scratch.release(w);
        }
    }

    /**
     * {@link #backward(MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, boolean)} (not frozen) with the gradient sums
     * given, over {@code count} values per channel (the merged batch's), instead of computed.
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment mean,
                         MemorySegment variance, double[] sumDy, double[] sumDyXmu, long count,
                         MemorySegment dx, MemorySegment dgamma, MemorySegment dbeta) {
        Scratch w = scratch.acquire();
        try {
            w.givenSums = true;
            System.arraycopy(sumDy, 0, w.sumDy, 0, channels);
            System.arraycopy(sumDyXmu, 0, w.sumDyXmu, 0, channels);
            w.count = count;
            backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta, false, w);
        } finally {
            scratch.release(w);
        }
    }

    // ------------------------------------------------------------------------ forward inference

    /**
     * {@code BatchNorm.forwardInference}: y = fma(x - mean, gamma / sqrt(var + eps), beta), the
     * scale computed in double and rounded once. Arguments already validated.
     */
    public void forwardInference(MemorySegment x, MemorySegment gamma, MemorySegment beta,
                                 MemorySegment mean, MemorySegment variance, MemorySegment y) {
        forwardInference(x, null, gamma, beta, mean, variance, y, false);
    }

    /** {@link #forwardInference} with the fused parts, as {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, boolean)}. */
    public void forwardInference(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                 MemorySegment beta, MemorySegment mean, MemorySegment variance,
                                 MemorySegment y, boolean relu) {
        Scratch w = scratch.acquire();
        try {
            w.residual = residual;
            w.relu = relu;
            float[] g = channelVector(gamma, 1f, w.g);
            float[] b = channelVector(beta, 0f, w.b);
            float[] mu = channelVector(mean, 0f, w.mu);
            float[] var = channelVector(variance, 0f, w.var);
            float[] scale = w.scale;
            for (int c = 0; c < channels; c++) {
                scale[c] = (float) (g[c] / Math.sqrt((double) var[c] + epsilon));
            }
            // A separate scan, so that the loop above stays free of branches (C2 vectorises it).
            int suspects = suspects(scale, mu, 0, channels);
            int far = 0;
            for (int c = 0; suspects > 0 && c < channels; c++) {
                double a = g[c] / Math.sqrt((double) var[c] + epsilon);  // scale[c], unrounded
                w.far[c] = false;
                if (isFar(mu[c]) || lossy(a)) {      // y = fma(x - 0, 1, 0) = x, then finishFar
                    far += far(w, c, mu[c], a, b[c], 0);
                }
            }
            normalize(w, x, y, mu, scale, b, far);
        } finally {
            scratch.release(w);
        }
    }

    /**
     * The forward transform of the whole tensor and its {@code far} channels (see
     * {@link #FAR_MEAN}). Plain, the kernels pass a far channel through (y = x) and
     * {@link #finishFar} computes it from y; with fused parts y no longer holds x, and y may be
     * x or the residual, so the far channels' outputs are computed first, from intact inputs,
     * and written over the kernels' after the pass.
     */
    private void normalize(Scratch w, MemorySegment x, MemorySegment y, float[] mu, float[] scale,
                           float[] offset, int far) {
        boolean fused = far > 0 && (w.residual != null || w.relu);
        if (fused) {
            computeFar(w, x, 0, channels);
        }
        transform(w, x, inUnit, y, outUnit, mu, scale, offset);
        if (fused) {
            writeFar(w, y, 0, channels);
            if (w.ws != null) {
                maskFar(w, y, 0, channels);
            }
        } else if (far > 0) {
            finishFar(w, null, y, outUnit, 0, channels);
        }
    }

    /**
     * The mask bits of far channels in [c0, c1), from the y that {@link #writeFar} wrote over the
     * kernels' (whose bits the kernels had written); atomic, as other blocks write their words.
     */
    private void maskFar(Scratch w, MemorySegment y, int c0, int c1) {
        for (int c = c0; c < c1; c++) {
            for (long j = 0; w.far[c] && j < m; j++) {
                long e = nchw ? ((j / spatial) * channels + c) * spatial + j % spatial : j * channels + c;
                ReluMask.set(w.ws, e, !(y.get(F32, elementOffset(c, j, outUnit)) <= 0f));
            }
        }
    }

    /**
     * y = fma(x - mu[c], scale[c], offset[c]) over the whole tensor, split for the workers; x and
     * y {@code xUnit} and {@code yUnit} bytes per image (NCHW) or row.
     */
    private void transform(Scratch w, MemorySegment x, long xUnit, MemorySegment y, long yUnit,
                           float[] mu, float[] scale, float[] offset) {
        w.in = x;
        w.out = y;
        w.tInUnit = xUnit;
        w.tOutUnit = yUnit;
        w.tMu = mu;
        w.tScale = scale;
        w.tOffset = offset;
        // NCHW in memory order, plane after plane: one sequential stream for the prefetchers.
        workers.run(nchw ? planeTasks() : rowTasks(), w, nchw ? planeNormalize : rowNormalize);
    }

    // -------------------------------------------------------------------------------- backward

    /**
     * {@code BatchNorm.backward} ({@code frozen} false) and {@code backwardWithFrozenStatistics}:
     * dx = gamma * invstd * (dy - dbeta / M - (x - mean) * invstd * dgamma / M), or with frozen
     * statistics dx = gamma * invstd * dy; dbeta = sum(dy), dgamma = invstd * sum((x - mean) dy).
     * Arguments already validated.
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment mean,
                         MemorySegment variance, MemorySegment dx, MemorySegment dgamma,
                         MemorySegment dbeta, boolean frozen) {
        backward(x, dy, null, gamma, mean, variance, dx, null, dgamma, dbeta, frozen);
    }

    /**
     * Backward of the fused forward: dy is replaced by g = (mask <= 0 ? 0 : dy) where the forward
     * output {@code mask} is given (ReLU), in the gradient sums and in the dx pass, and
     * {@code dresidual = g} is written in the dx pass where given. Arguments already validated.
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment mask, MemorySegment gamma,
                         MemorySegment mean, MemorySegment variance, MemorySegment dx,
                         MemorySegment dresidual, MemorySegment dgamma, MemorySegment dbeta,
                         boolean frozen) {
        fusedBackward(x, dy, mask, null, gamma, mean, variance, dx, dresidual, dgamma, dbeta, frozen);
    }

    /** Bytes of the ReLU's mask workspace of {@code elements} outputs (see {@link ReluMask}). */
    public static long workspaceBytes(long elements) {
        return ReluMask.bytes(elements);
    }

    /**
     * Backward of the fused ReLU forward that wrote the mask workspace {@code ws}: g = mask ? dy
     * : +0 in place of dy, the values of {@link #backward(MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, boolean) the y form}, so the same bits, masked inside the
     * gradient sums' and the dx pass's loops: each pass reads x, dy and 1/32 of a tensor of bits,
     * as the plain backward's read x and dy (PERFORMANCE.md, the mask workspace).
     */
    public void backwardMasked(MemorySegment x, MemorySegment dy, MemorySegment ws,
                               MemorySegment gamma, MemorySegment mean, MemorySegment variance,
                               MemorySegment dx, MemorySegment dresidual, MemorySegment dgamma,
                               MemorySegment dbeta) {
        fusedBackward(x, dy, null, ws, gamma, mean, variance, dx, dresidual, dgamma, dbeta, false);
    }

    private void fusedBackward(MemorySegment x, MemorySegment dy, MemorySegment mask,
                               MemorySegment ws, MemorySegment gamma, MemorySegment mean,
                               MemorySegment variance, MemorySegment dx, MemorySegment dresidual,
                               MemorySegment dgamma, MemorySegment dbeta, boolean frozen) {
        Scratch w = scratch.acquire();
        try {
            w.mask = mask;
            w.ws = ws;
            w.dresidual = dresidual;
            backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta, frozen, w);
        } finally {
            scratch.release(w);
        }
    }

    private void backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment mean,
                          MemorySegment variance, MemorySegment dx, MemorySegment dgamma,
                          MemorySegment dbeta, boolean frozen, Scratch w) {
        channelVector(gamma, 1f, w.g);
        channelVector(variance, 0f, w.var);
        float[] mu = channelVector(mean, 0f, w.mu);
        boolean sums = !frozen || dgamma != null || dbeta != null;
        if (!w.givenSums) {
            w.clear(w.sumDy);
            w.clear(w.sumDyXmu);
            w.count = m;
        }
        widen(mu, w.meanD);
        w.x = x;
        w.dy = dy;
        w.dx = dx;
        w.dgamma = dgamma;
        w.dbeta = dbeta;
        w.dyUnit = outUnit;
        w.gxUnit = inUnit;
        w.gyUnit = outUnit;
        if (channelBlock > 0 && !w.givenSums) {
            w.frozen = frozen;
            w.sums = sums;
            workers.run(Math.ceilDiv(channels, channelBlock), w, backwardBlock);
            return;
        }
        if (sums && w.mask != null) {
            // Fused ReLU: g = (y <= 0 ? +0 : dy) written once where dresidual = g goes (else into
            // dx), then the plain passes over g; see maskedGradient.
            MemorySegment g = w.dresidual != null ? w.dresidual : dx;
            long gUnit = w.dresidual != null ? outUnit : inUnit;
            gradientInputParameters(w, null, w.zero, w.one, w.zero, w.negativeZero);
            w.dx = g;
            w.gxUnit = gUnit;
            w.dresidual = null;
            workers.run(nchw ? planeTasks() : rowTasks(), w, nchw ? planeGradientInput : rowGradientInput);
            w.dx = dx;
            w.dy = dy = g;
            w.dyUnit = gUnit;
            w.gxUnit = inUnit;
            w.gyUnit = gUnit;
            w.mask = null;
        }
        if (sums && !w.givenSums) {
            gradientSums(w);
        }
        int far = gradientCoefficients(w, 0, channels, !frozen);
        if (frozen && w.mask == null && w.dresidual == null) {
            transform(w, dy, w.dyUnit, dx, inUnit, w.zero, w.scale, w.zero);  // dx = fma(dy - 0, a, 0) = round(a dy)
        } else {
            // Frozen and fused: dx = fma(g, a, 0) without x, the same bits as above where g = dy.
            gradientInputParameters(w, frozen ? null : x, w.mu, w.scale, w.offset, frozen ? w.zero : w.b);
            workers.run(nchw ? planeTasks() : rowTasks(), w, nchw ? planeGradientInput : rowGradientInput);
        }
        if (far > 0) {
            finishFar(w, frozen ? null : x, dx, inUnit, 0, channels);
        }
    }

    /** The dx pass's x (null: frozen) and coefficients, for its tasks. */
    private static void gradientInputParameters(Scratch w, MemorySegment x, float[] mu, float[] a,
                                                float[] b, float[] c) {
        w.in = x;
        w.tMu = mu;
        w.tScale = a;
        w.tOffset = b;
        w.tC = c;
    }

    /**
     * NCHW channel block {@code blk}: its gradient sums (when wanted), then its dx (see
     * {@link #channelBlock}); with frozen statistics dx = fma(g, a, 0), without x.
     */
    private void backwardBlock(Scratch w, int blk) {
        int c0 = blk * channelBlock, c1 = Math.min(channels, c0 + channelBlock);
        double[] sumDy = w.sumDy, sumDyXmu = w.sumDyXmu;
        MemorySegment dy = w.dy, mask = w.mask, dresidual = w.dresidual, ws = w.ws;
        long dyUnit = outUnit;
        if (w.sums && (mask != null || ws != null)) {
            // The block is cached: g written once and read back by the plain (register) loops
            // costs less than masking inside both (PERFORMANCE.md, the mask workspace).
            dy = maskedGradient(w, c0, c1);
            dyUnit = dresidual != null ? outUnit : inUnit;
            mask = null;
            ws = null;
            dresidual = null;
        }
        for (int k = 0; w.sums && k < chunks; k++) {
            int images = (int) (start(k + 1) - start(k));
            double[] s1 = w.s1[k], s2 = w.s2[k];
            for (int c = c0; c < c1; c++) {
                kernels.channelGradientSums(w.x, dy, ws, plane(start(k), c, inUnit), inUnit,
                        plane(start(k), c, dyUnit), dyUnit, (start(k) * channels + c) * spatial,
                        (long) channels * spatial, images, spatial, w.meanD[c], null, s1, s2, c);
                sumDy[c] += s1[c];
                sumDyXmu[c] += s2[c];
            }
        }
        boolean withMean = !w.frozen;
        int far = gradientCoefficients(w, c0, c1, withMean);
        for (int img = 0; img < n; img++) {
            int p0 = img * channels + c0, p1 = img * channels + c1;
            kernels.planesGradientInput(withMean ? w.x : null, dy, mask, ws, w.dx, dresidual,
                    channels, spatial, shift(img, inUnit), shift(img, dyUnit), p0, p1, w.mu,
                    w.scale, w.offset, withMean ? w.b : w.zero);
        }
        if (far > 0) {
            finishFar(w, withMean ? w.x : null, w.dx, inUnit, c0, c1);
        }
    }

    /**
     * Fused ReLU's gradient with sums to compute: g = (y <= 0 ? +0 : dy), or g = bit ? dy : +0
     * from the workspace, of channels [c0, c1), written where dresidual = g goes (else into dx,
     * which the dx pass then overwrites in place; from y as fma(g, 1, -0) = g, bit for bit);
     * returns that segment. The gradient sums and dx then run the plain kernels over g: the
     * same values as masking inside them, and one loop per reduction instead of two.
     */
    private MemorySegment maskedGradient(Scratch w, int c0, int c1) {
        MemorySegment g = w.dresidual != null ? w.dresidual : w.dx;
        long gUnit = w.dresidual != null ? outUnit : inUnit;
        for (int img = 0; img < n; img++) {
            if (w.ws != null) {
                kernels.maskedGradient(w.dy, plane(img, c0, outUnit), w.ws,
                        ((long) img * channels + c0) * spatial, (c1 - c0) * spatial, g, plane(img, c0, gUnit));
            } else {
                kernels.planesGradientInput(null, w.dy, w.mask, g, null, channels, spatial,
                        shift(img, gUnit), shift(img, outUnit), img * channels + c0,
                        img * channels + c1, w.zero, w.one, w.zero, w.negativeZero);
            }
        }
        return g;
    }

    /**
     * Writes channels [c0, c1)'s dgamma and dbeta (when wanted) and the float coefficients of
     * dx = fma(x - mean, b, fma(dy, a, c)): a = gamma invstd, b = -a invstd^2 Sxdy / M,
     * c = -a Sdy / M, each computed in double and rounded once (into w.scale, w.offset and w.b).
     * The frozen case uses only a. Returns how many channels are far (see {@link #farGradients}).
     * The loop has no branch, so that C2 vectorises its square roots and divisions.
     */
    private int gradientCoefficients(Scratch w, int c0, int c1, boolean withMean) {
        float[] a = w.scale, b = w.offset, cc = w.b, dg = w.dg, db = w.db;
        gradientFloats(w.g, w.var, epsilon, w.count, w.sumDy, w.sumDyXmu, w.varD, w.aD, a, b, cc, dg, db,
                c0, c1);
        if (w.dgamma != null) {
            MemorySegment.copy(dg, c0, w.dgamma, F32, 4L * c0, c1 - c0);
        }
        if (w.dbeta != null) {
            MemorySegment.copy(db, c0, w.dbeta, F32, 4L * c0, c1 - c0);
        }
        // Branch-free: (bits & EXPONENT) - 1 is negative exactly for a zero or subnormal float.
        int suspects = 0;
        for (int c = c0; c < c1; c++) {
            int tiny = (Float.floatToRawIntBits(a[c]) & EXPONENT) - 1;
            if (withMean) {
                tiny |= (Float.floatToRawIntBits(b[c]) & EXPONENT) - 1 | (Float.floatToRawIntBits(cc[c]) & EXPONENT) - 1
                        | FAR_MEAN_BITS - 1 - (Float.floatToRawIntBits(w.mu[c]) & 0x7fffffff); // |mu| >= FAR_MEAN
            }
            suspects += tiny >>> 31;
        }
        return suspects == 0 ? 0 : farGradients(w, c0, c1, withMean);
    }

    /**
     * {@link #gradientCoefficients}' arithmetic in three static loops over arrays: as one loop C2
     * left it scalar (5 ns a channel), split it vectorises (1 ns).
     */
    private static void gradientFloats(float[] g, float[] var, double epsilon, double m,
                                       double[] sumDy, double[] sumDyXmu, double[] inv,
                                       double[] sc, float[] a, float[] b, float[] cc, float[] dg,
                                       float[] db, int c0, int c1) {
        for (int c = c0; c < c1; c++) {
            double invstd = invstd(var[c], epsilon);
            inv[c] = invstd;
            sc[c] = g[c] * invstd;
        }
        for (int c = c0; c < c1; c++) {
            b[c] = (float) gradientB(sc[c], inv[c], sumDyXmu[c], m);
            cc[c] = (float) gradientC(sc[c], sumDy[c], m);
        }
        for (int c = c0; c < c1; c++) {
            dg[c] = (float) (inv[c] * sumDyXmu[c]);
            db[c] = (float) sumDy[c];
            a[c] = (float) sc[c];
        }
    }

    private static double invstd(float variance, double epsilon) {
        return 1.0 / Math.sqrt((double) variance + epsilon);
    }

    private static double gradientB(double scale, double invstd, double sumDyXmu, double m) {
        return -scale * invstd * invstd * sumDyXmu / m;
    }

    private static double gradientC(double scale, double sumDy, double m) {
        return -scale * sumDy / m;
    }

    /**
     * Marks the far channels among [c0, c1) after {@link #gradientCoefficients} found suspects
     * (see {@link #FAR_MEAN}): with {@code withMean}, where dx uses x - mean, a far mean or a
     * lossy a, b or c; frozen, a lossy a. Such a channel gets the pass-through a = 1, b = c = 0,
     * mean 0 (dx = dy) and its dx is computed by {@link #finishFar}. Returns how many there are.
     */
    private int farGradients(Scratch w, int c0, int c1, boolean withMean) {
        int far = 0;
        for (int c = c0; c < c1; c++) {
            w.far[c] = false;
            far += farGradient(c, w, withMean);
        }
        return far;
    }

    /** {@link #farGradients}' rare case, with the coefficients again in double: 1 if far. */
    private int farGradient(int c, Scratch w, boolean withMean) {
        double invstd = invstd(w.var[c], epsilon), a = w.g[c] * invstd;
        if (withMean) {
            double b = gradientB(a, invstd, w.sumDyXmu[c], w.count), cc = gradientC(a, w.sumDy[c], w.count);
            if (isFar(w.mu[c]) || lossy(a) || lossy(b) || lossy(cc)) {
                return far(w, c, w.mu[c], a, b, cc);     // dx = fma(x - 0, 0, fma(dy, 1, 0)) = dy
            }
        } else if (lossy(a)) {                           // frozen: dx = fma(dy - 0, 1, 0) = dy,
            return far(w, c, 0, a, 0, 0);                // then finishFar's fma(dy - 0, a, 0)
        }
        return 0;
    }

    // ----------------------------------------------------------------------------- far channels

    private static boolean isFar(float mean) {
        return Math.abs(mean) >= FAR_MEAN && Math.abs(mean) <= Float.MAX_VALUE;
    }

    /** Whether the nonzero {@code exact} rounds to a subnormal float or to zero. */
    private static boolean lossy(double exact) {
        return Math.abs((float) exact) < Float.MIN_NORMAL && exact != 0;
    }

    /**
     * Marks channel c far and keeps its double coefficients: y = (x - mean) a + b, or
     * dx = (x - mean) b + (dy a + cc) for the gradient. Sets the kernels' float parameters so
     * that they pass the channel through: mean 0, scale 1, offsets 0 give y = fma(x, 1, 0) = x,
     * and dx = fma(x, 0, fma(dy, 1, 0)) = dy (scale, offset and b hold a, b and c there).
     * Returns 1.
     */
    private static int far(Scratch w, int c, double mean, double a, double b, double cc) {
        w.far[c] = true;
        w.farMean[c] = mean;
        w.farA[c] = a;
        w.farB[c] = b;
        w.farC[c] = cc;
        w.mu[c] = 0;
        w.scale[c] = 1;
        w.offset[c] = 0;
        w.b[c] = 0;
        return 1;
    }

    /**
     * The far channels in [c0, c1), after the kernels passed them through (out holds x, or dy
     * for the gradient): their outputs computed in double and rounded once, in element order by
     * the thread that ran the pass, so the bits do not depend on the kernels or the parallelism.
     * With {@code x} null, y = fma(x - mean, a, b); else dx = fma(x - mean, b, fma(dy, a, cc)).
     */
    private void finishFar(Scratch w, MemorySegment x, MemorySegment out, long outUnit, int c0,
                           int c1) {
        for (int c = c0; c < c1; c++) {
            if (!w.far[c]) {
                continue;
            }
            double mean = w.farMean[c], a = w.farA[c], b = w.farB[c], cc = w.farC[c];
            for (long j = 0; j < m; j++) {
                long o = elementOffset(c, j, outUnit);
                double v = out.get(F32, o);
                double r = x == null ? Math.fma(v - mean, a, b)
                        : Math.fma(x.get(F32, elementOffset(c, j, inUnit)) - mean, b, Math.fma(v, a, cc));
                out.set(F32, o, (float) r);
            }
        }
    }

    /**
     * The fused forward's far channels in [c0, c1), before the pass: y = act(fl(fma(x - mean, a,
     * b)) + residual) in element order, the transform in double rounded once, then the add and
     * ReLU in float as in the kernels, into the scratch (allocated here: far channels are rare).
     */
    private void computeFar(Scratch w, MemorySegment x, int c0, int c1) {
        for (int c = c0; c < c1; c++) {
            if (!w.far[c]) {
                continue;
            }
            float[] v = w.farValues[c] = new float[Math.toIntExact(m)];
            double mean = w.farMean[c], a = w.farA[c], b = w.farB[c];
            for (long j = 0; j < m; j++) {
                float t = (float) Math.fma(x.get(F32, elementOffset(c, j, inUnit)) - mean, a, b);
                v[(int) j] = ScalarKernels.activate(t, w.residual, elementOffset(c, j, outUnit), w.relu);
            }
        }
    }

    /** Writes what {@link #computeFar} computed over the kernels' outputs, and drops it. */
    private void writeFar(Scratch w, MemorySegment y, int c0, int c1) {
        for (int c = c0; c < c1; c++) {
            float[] v = w.farValues[c];
            if (!w.far[c] || v == null) {
                continue;
            }
            for (long j = 0; j < m; j++) {
                y.set(F32, elementOffset(c, j, outUnit), v[(int) j]);
            }
            w.farValues[c] = null;
        }
    }

    /** The float index of channel c's j-th value (image-major, then spatial). */
    private long elementOffset(int c, long j, long unit) {
        return nchw ? (j / spatial) * unit + 4 * (c * spatial + j % spatial) : j * unit + 4L * c;
    }

    /** The gradient sums of every channel: chunks as in {@link #statistics}, added in chunk order. */
    private void gradientSums(Scratch w) {
        double[][] s1 = w.s1, s2 = w.s2;
        double[] sumDy = w.sumDy, sumDyXmu = w.sumDyXmu;
        workers.run(chunks, w, nchw ? planeGradientSums : rowGradientSums);
        for (int k = 0; k < chunks; k++) {
            for (int c = 0; c < channels; c++) {
                sumDy[c] += s1[k][c];
                sumDyXmu[c] += s2[k][c];
            }
        }
    }

    // ---------------------------------------------------------------------------------- helpers

    /** Every chunk's shifts (see {@link #shiftOf}): shift[k][c] for chunk k and channel c. */
    private void shifts(MemorySegment x, double[][] shift) {
        for (int k = 0; k < chunks; k++) {
            for (int c = 0; c < channels; c++) {
                shift[k][c] = shiftOf(x, start(k), c);
            }
        }
    }

    private static double[] widen(float[] v, double[] d) {
        for (int i = 0; i < v.length; i++) {
            d[i] = v[i];
        }
        return d;
    }

    /**
     * The shift of a part's shifted sums (see {@link ChannelMoments}): the channel's first value
     * in the part that starts at image (NCHW) or row {@code unit}. A value of the part, so that
     * the part's |mean - shift| is a few of its standard deviations; and the part's own, so that
     * a part reduced alone ({@link #accumulate}) has the bits it has within a call.
     */
    private float shiftOf(MemorySegment x, long unit, int c) {
        return x.get(F32, nchw ? plane(unit, c, inUnit) : unit * inUnit + 4L * c);
    }

    /** NCHW: the byte offset of channel c's plane in image {@code img}, images {@code unit} bytes apart. */
    private long plane(long img, int c, long unit) {
        return img * unit + 4L * c * spatial;
    }

    /** The first image (NCHW) or row (NHWC) of chunk k; k = chunks gives the end. */
    private long start(int k) {
        return units * k / chunks;
    }

    private int planeTasks() {
        return Math.min(n * channels, workers.parallelism());
    }

    /** Plane tasks split the n * channels planes evenly: task t starts here. */
    private int planeBoundary(int t, int tasks) {
        return (int) ((long) n * channels * t / tasks);
    }

    private int rowTasks() {
        return (int) Math.min(m, workers.parallelism());
    }

    private float[] channelVector(MemorySegment s, float absent, float[] v) {
        if (s == null) {
            java.util.Arrays.fill(v, absent);
        } else {
            MemorySegment.copy(s, F32, 0, v, 0, channels);
        }
        return v;
    }

    // ---------------------------------------------------------------------------------- scratch

    /** The working arrays of one call, sized for this shape, one set per thread. */
    private final Scratches<Scratch> scratch = new Scratches<>(this::newScratch);

    private Scratch newScratch() {
        // NCHW two passes: lanes in an array per chunk (chunks run in parallel); blocks keep
        // theirs in registers.
        int laneArrays = nchw && channelBlock == 0 ? chunks : 0;
        return new Scratch(channels, chunks, laneArrays);
    }

    private static final class Scratch extends Scratches.Slot {
        /**
         * The backward in progress: with frozen statistics; with dgamma or dbeta wanted; with
         * the gradient sums given (merged by the caller) rather than computed.
         */
        boolean frozen, sums, givenSums;
        /** The values per channel that backward's sums are over: M, or the given sums' count. */
        double count;
        /**
         * Bytes per unit (image or row) of the tensors in progress: the transform's input and
         * output; dy (after a fused ReLU's mask, the gradient g); the dx pass's x-side (x, dx)
         * and dy-side (dy, y, dresidual) tensors.
         */
        long tInUnit, tOutUnit, dyUnit, gxUnit, gyUnit;
        /** One part's moments, before {@link #accumulate} merges them. */
        final ChannelMoments part;
        final float[] g, b, mu, var, scale, offset;
        /** Backward's dgamma and dbeta, before they are copied out. */
        final float[] dg, db;
        /** Far channels (see {@link #FAR_MEAN}) and their double coefficients. */
        final boolean[] far;
        final double[] farMean, farA, farB, farC;
        /** Never written: zeros for the frozen backward's transform; ones and -0 for g = fma(g, 1, -0). */
        final float[] zero, one, negativeZero;
        final double[] meanD, varD, aD, sumDy, sumDyXmu;
        /** The shifts of the statistics' chunks: shift[k][c]. */
        final double[][] shift;
        final double[][] s1, s2;
        /** NCHW: the lanes of the reductions in progress (see {@link BatchNormKernels}). */
        final double[][] lanes;
        final ChannelMoments moments;
        /**
         * The call in progress, for the tasks: its segments (dropped when it ends, so that the
         * scratch keeps no caller's memory reachable) and the transform's input, output and
         * parameter arrays.
         */
        MemorySegment x, y, dy, dx, mean, variance, dgamma, dbeta, in, out;
        float[] tMu, tScale, tOffset, tC;
        /**
         * The fused parts of the call: the residual added before the activation, ReLU or not;
         * backward's mask (the forward output; null without ReLU) and the residual's gradient.
         */
        MemorySegment residual, mask, dresidual;
        /** The ReLU's mask workspace (see {@link ReluMask}): written by forward, read by backward. */
        MemorySegment ws;
        boolean relu;
        /** The fused forward's far channels' outputs, between {@link #computeFar} and {@link #writeFar}. */
        final float[][] farValues;

        Scratch(int channels, int chunks, int laneArrays) {
            g = new float[channels];
            b = new float[channels];
            mu = new float[channels];
            var = new float[channels];
            scale = new float[channels];
            offset = new float[channels];
            dg = new float[channels];
            db = new float[channels];
            zero = new float[channels];
            one = new float[channels];
            negativeZero = new float[channels];
            java.util.Arrays.fill(one, 1f);
            java.util.Arrays.fill(negativeZero, -0f);
            far = new boolean[channels];
            farMean = new double[channels];
            farA = new double[channels];
            farB = new double[channels];
            farC = new double[channels];
            shift = new double[chunks][channels];
            meanD = new double[channels];
            varD = new double[channels];
            aD = new double[channels];
            sumDy = new double[channels];
            sumDyXmu = new double[channels];
            s1 = new double[chunks][channels];
            s2 = new double[chunks][channels];
            lanes = new double[laneArrays][channels * LANE_SLOTS];
            moments = new ChannelMoments(channels);
            part = new ChannelMoments(channels);
            farValues = new float[channels][];
        }

        @Override
        void endCall() {
            x = y = dy = dx = mean = variance = dgamma = dbeta = in = out = null;
            residual = mask = dresidual = ws = null;
            relu = false;
            givenSums = false;
            java.util.Arrays.fill(farValues, null);
        }

        double[] clear(double[] v) {
            java.util.Arrays.fill(v, 0.0);
            return v;
        }
    }
}
