package dev.vecnorm;

import dev.vecnorm.kernel.BatchNormEngine;
import dev.vecnorm.kernel.BatchNormKernels;
import dev.vecnorm.kernel.KernelProvider;
import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.ForkJoinPool;

/**
 * Batch normalization (Ioffe and Szegedy, 2015) for one tensor shape: forward in training and
 * inference mode, backward, and the running-statistics update, over off-heap or heap
 * {@link MemorySegment}s of float32 in native byte order.
 *
 * <p>With M = {@code shape.perChannel()} values per channel, training normalises each channel
 * with the batch statistics
 * <pre>
 *   mean = sum(x) / M,   var = sum((x - mean)^2) / M   (biased),
 *   y = gamma * (x - mean) / sqrt(var + eps) + beta
 * </pre>
 * computed in one pass over x (shifted sums in double per chunk, chunks merged with Chan's
 * formula), so the variance stays accurate when |mean| is many standard deviations from zero;
 * inference uses given (population) statistics instead.
 *
 * <p>Conventions of every call:
 * <ul>
 *   <li>Tensors hold exactly {@code shape.elements()} floats, channel vectors exactly
 *       {@code shape.channels()}; {@code gamma} and {@code beta} may be null (1 and 0),
 *       {@code dgamma} and {@code dbeta} may be null (not computed).</li>
 *   <li>{@code y} may be the same segment as {@code x}, and {@code dx} the same as {@code dy};
 *       any other overlap of an output with an input or another output is rejected.</li>
 *   <li>Wrong sizes, nulls where not allowed, read-only outputs, closed segments and overlaps
 *       throw {@link IllegalArgumentException} or {@link NullPointerException} naming the
 *       argument, before anything is written.</li>
 *   <li>NaN or infinity in a channel poisons that channel's statistics and outputs only.</li>
 *   <li>A call returns when every output is written and keeps no reference to any segment.</li>
 * </ul>
 *
 * <p>With {@link Builder#activation(Activation) activation} {@link Activation#RELU} the forward
 * calls write {@code relu(bn(x))}, and the overloads with a {@code residual} write
 * {@code act(bn(x) + residual)} for either activation (a ResNet block's add and ReLU), in the
 * same pass over memory; backward is then the gradient of that composition, and takes the
 * forward output y for the ReLU's mask. Rounding, in every kernel and layout:
 * <pre>
 *   t = fma(x - mean', scale, offset)    (as without fusion; see the Numerics of the README)
 *   s = t + residual                     (one float addition, rounded once; s = t without one)
 *   y = s &lt;= 0 ? +0 : s                  (RELU: exact; NaN stays NaN, -0 becomes +0; NONE: y = s)
 * </pre>
 *
 * <p>Instances are immutable and thread-safe. With {@code parallelism > 1} a call splits its work
 * across the executor; results are bitwise identical for every parallelism (the reductions are cut
 * into chunks that depend on the shape only and merged in a fixed order), and also between the
 * vector kernels of every width and the scalar kernels. Segments confined to the calling thread
 * ({@code Arena.ofConfined()}) are processed on the calling thread alone.
 */
public final class BatchNorm {

    private final TensorShape shape;
    private final float epsilon;
    private final float momentum;
    private final RunningStatistics runningStatistics;
    private final int parallelism;
    private final Activation activation;
    private final boolean relu;
    private final BatchNormEngine engine;
    private final BatchNormEngine serial;
    /** The geometry of x and dx, and of y, dy and the residual (dense, or strided views). */
    private final Arguments.View inView, outView;
    private final long inputStride, outputStride;

    private BatchNorm(Builder b) {
        this.shape = b.shape;
        this.epsilon = b.epsilon;
        this.runningStatistics = b.runningStatistics;
        this.momentum = b.momentumOrDefault();
        this.parallelism = b.parallelism;
        this.activation = b.activation;
        this.relu = activation == Activation.RELU;
        BatchNormKernels kernels = b.kernels != null ? b.kernels : KernelProvider.kernels();
        ExecutorService executor = b.executor != null ? b.executor : ForkJoinPool.commonPool();
        long units = shape.layout() == Layout.NCHW ? shape.batch() : shape.perChannel();
        long unitFloats = shape.elements() / units;
        this.inputStride = b.inputStride == 0 ? unitFloats : b.inputStride;
        this.outputStride = b.outputStride == 0 ? unitFloats : b.outputStride;
        this.inView = new Arguments.View(units, 4 * unitFloats, 4 * inputStride);
        this.outView = new Arguments.View(units, 4 * unitFloats, 4 * outputStride);
        this.serial = new BatchNormEngine(kernels, shape, epsilon, 1, executor, inputStride, outputStride);
        this.engine = parallelism == 1 ? serial
                : new BatchNormEngine(kernels, shape, epsilon, parallelism, executor, inputStride, outputStride);
    }

    /**
     * A builder for {@code shape}: epsilon 1e-5, running statistics {@link RunningStatistics#PYTORCH}
     * with momentum 0.1, parallelism 1.
     */
    public static Builder builder(TensorShape shape) {
        return new Builder(Objects.requireNonNull(shape, "shape: expected a TensorShape, got null"));
    }

    /** The shape every call's tensors must have. */
    public TensorShape shape() {
        return shape;
    }

    /** The epsilon added to the variance before the square root. */
    public float epsilon() {
        return epsilon;
    }

    /**
     * The momentum of {@link #updateRunningStatistics}, in the convention of
     * {@link #runningStatistics()}: the weight of the batch value for PyTorch, of the old running
     * value for ONNX, Keras and DJL; NaN for {@link RunningStatistics#CUMULATIVE_AVERAGE}.
     */
    public float momentum() {
        return momentum;
    }

    /** The rule {@link #updateRunningStatistics} follows (default {@link RunningStatistics#PYTORCH}). */
    public RunningStatistics runningStatistics() {
        return runningStatistics;
    }

    /** The number of threads a call may use (1: the calling thread only). */
    public int parallelism() {
        return parallelism;
    }

    /** The activation fused into the forward output (default {@link Activation#NONE}). */
    public Activation activation() {
        return activation;
    }

    /**
     * Floats from one image (NCHW) or pixel (NHWC, [N, C]) of x and dx to the next: C * H * W
     * (NCHW) or C (NHWC) when dense, more for a view (see {@link Builder#inputStride}).
     */
    public long inputStride() {
        return inputStride;
    }

    /** As {@link #inputStride()}, for y, dy, the residual and its gradient. */
    public long outputStride() {
        return outputStride;
    }

    /** The kernels this JVM uses, e.g. {@code "vector 512-bit, FMA"} or {@code "scalar"}. */
    public static String kernels() {
        return KernelProvider.kernels().description();
    }

    /** The kernels this instance calls (the JVM's, unless a test gave others). */
    String instanceKernels() {
        return engine.kernels().description();
    }

    /**
     * Training-mode forward: normalises each channel with this batch's statistics.
     * <pre>
     *   mean[c] = sum(x[., c, .]) / M,   variance[c] = sum((x - mean[c])^2) / M   (biased)
     *   y = gamma[c] * (x - mean[c]) / sqrt(variance[c] + eps) + beta[c]
     * </pre>
     * {@code mean} and {@code variance} are written for {@link #backward} and
     * {@link #updateRunningStatistics}. {@code y} may be {@code x}. With activation
     * {@link Activation#RELU}, y is {@code relu} of the above (see the class comment).
     *
     * @param x        input, {@code shape.elements()} floats
     * @param gamma    scale per channel, or null for 1
     * @param beta     shift per channel, or null for 0
     * @param y        output, {@code shape.elements()} floats
     * @param mean     output, the batch mean per channel
     * @param variance output, the biased batch variance per channel
     * @throws IllegalArgumentException if a size is wrong, an output is read-only or overlaps
     *                                  another argument, or M = 1 (the variance of one value is
     *                                  not an estimate of anything)
     * @throws NullPointerException     if x, y, mean or variance is null
     */
    public void forwardTraining(MemorySegment x, MemorySegment gamma, MemorySegment beta,
                                MemorySegment y, MemorySegment mean, MemorySegment variance) {
        requireBatchOfMany("forwardTraining");
        boolean shareable = trainingArguments(x, null, true, gamma, beta, y, mean, variance, false, null);
        engineFor(shareable).forwardTraining(x, null, gamma, beta, y, mean, variance, relu);
    }

    /**
     * Training-mode forward with a residual added before the activation (a ResNet block's
     * {@code relu(bn(x) + residual)}): as {@link #forwardTraining(MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment)}, then
     * <pre>
     *   y = act(fl(bn(x) + residual))     act = identity (NONE) or v &lt;= 0 ? +0 : v (RELU)
     * </pre>
     * where {@code bn(x)} is the float the plain call writes and the add is rounded once. The
     * statistics are those of x alone. {@code y} may be {@code x} or {@code residual}.
     *
     * @param residual the tensor added to the normalised x, {@code shape.elements()} floats
     * @throws IllegalArgumentException as the plain call, and if residual has another size or
     *                                  overlaps an output other than as {@code y == residual}
     * @throws NullPointerException     if x, residual, y, mean or variance is null
     */
    public void forwardTraining(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                MemorySegment beta, MemorySegment y, MemorySegment mean,
                                MemorySegment variance) {
        requireBatchOfMany("forwardTraining");
        boolean shareable = trainingArguments(x, residual, false, gamma, beta, y, mean, variance, false, null);
        engineFor(shareable).forwardTraining(x, residual, gamma, beta, y, mean, variance, relu);
    }

    /**
     * Bytes of the ReLU's mask workspace of this shape: one bit per element of y in 64-bit
     * words, and one spare word that the kernels' 8-byte reads may touch
     * ({@code 8 * (ceil(elements / 64) + 1)}). Allocate it aligned to 8 bytes, e.g.
     * {@code arena.allocate(bn.workspaceBytes(), 8)}.
     */
    public long workspaceBytes() {
        return BatchNormEngine.workspaceBytes(shape.elements());
    }

    /**
     * {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment) The fused training forward} (residual null
     * for none) that also writes the ReLU's mask into {@code workspace}, for
     * {@link #backwardWithWorkspace}: the same y, mean and variance, and one bit per element
     * (1/32 of y's bytes; the spare word is left zero). As oneDNN's {@code fuse_norm_relu} workspace, it spares the backward
     * reading y: that backward reads x, dy and the bits, as the plain one reads x and dy. Bit e
     * is element e in dense order (NCHW {@code ((n C + c) H W + s)}, NHWC {@code (row C + c)}),
     * bit {@code e % 64} of 64-bit native word {@code e / 64}: 1 where {@code y > 0} or y is
     * NaN (the gradient passes), 0 where the ReLU gave 0.
     *
     * @param workspace output, {@link #workspaceBytes()} bytes aligned to 8
     * @throws IllegalStateException    if the activation is not {@link Activation#RELU}
     * @throws IllegalArgumentException as the call without it, and for a workspace of another
     *                                  size or alignment, read-only, or overlapping
     * @throws NullPointerException     as the call without it, or if workspace is null
     */
    public void forwardTraining(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                MemorySegment beta, MemorySegment y, MemorySegment mean,
                                MemorySegment variance, MemorySegment workspace) {
        requireRelu("forwardTraining");
        requireBatchOfMany("forwardTraining");
        boolean shareable = trainingArguments(x, residual, true, gamma, beta, y, mean, variance,
                true, workspace);
        engineFor(shareable).forwardTraining(x, residual, gamma, beta, null, y, mean, variance,
                true, workspace);
    }

    /**
     * {@link #backward(MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment) The fused
     * backward} with the ReLU's mask taken from the {@code workspace} that
     * {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment) forwardTraining} wrote, in
     * place of its output y: {@code g = bit ? dy : 0}, the same values, so the same bits as the
     * y form given that forward's y. It reads x, dy and the bits in each of its two passes, and
     * writes dx (and dresidual): the traffic of the plain backward, plus 1/32 of a tensor per
     * pass. {@code dx} or {@code dresidual} (not both) may be {@code dy}.
     *
     * @param workspace the mask, {@link #workspaceBytes()} bytes aligned to 8
     * @throws IllegalStateException    if the activation is not {@link Activation#RELU}
     * @throws IllegalArgumentException as the y form, and for a workspace of another size or
     *                                  alignment, or overlapping an output
     * @throws NullPointerException     if x, dy, workspace, mean, variance or dx is null
     */
    public void backwardWithWorkspace(MemorySegment x, MemorySegment dy, MemorySegment workspace,
                                      MemorySegment gamma, MemorySegment mean,
                                      MemorySegment variance, MemorySegment dx,
                                      MemorySegment dresidual, MemorySegment dgamma,
                                      MemorySegment dbeta) {
        requireRelu("backwardWithWorkspace");
        requireBatchOfMany("backward");
        boolean shareable = fusedBackwardArguments(x, dy, workspace, true, gamma, mean, variance,
                dx, dresidual, dgamma, dbeta);
        engineFor(shareable).backwardMasked(x, dy, workspace, gamma, mean, variance, dx, dresidual,
                dgamma, dbeta);
    }

    private void requireRelu(String call) {
        if (!relu) {
            throw new IllegalStateException(call + ": expected activation RELU (the workspace holds"
                    + " a ReLU's mask), got " + activation);
        }
    }

    /**
     * The forward-training calls' checks; {@code residualOptional} allows a null residual, and
     * {@code withWorkspace} checks {@code workspace} as the mask's output.
     */
    private boolean trainingArguments(MemorySegment x, MemorySegment residual,
                                      boolean residualOptional, MemorySegment gamma,
                                      MemorySegment beta, MemorySegment y, MemorySegment mean,
                                      MemorySegment variance, boolean withWorkspace,
                                      MemorySegment workspace) {
        int c = shape.channels();
        Arguments a = Arguments.start()
                .input("x", x, inView, "the input tensor", false)
                .input("residual", residual, outView, "the tensor added before the activation", residualOptional)
                .input("gamma", gamma, c, "one scale per channel", true)
                .input("beta", beta, c, "one shift per channel", true)
                .output("y", y, outView, "the output tensor", false)
                .output("mean", mean, c, "one mean per channel", false)
                .output("variance", variance, c, "one variance per channel", false);
        if (withWorkspace) {
            a = a.workspace("workspace", workspace, workspaceBytes(), true);
        }
        return a.finish("y", "x", "y", "residual");
    }

    /**
     * Training-mode forward with the batch statistics given rather than computed from x: the
     * step after accumulate, exchange and merge (see {@link ChannelStatistics}). Normalises x
     * with {@code statistics}' mean and biased variance exactly as
     * {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment) forwardTraining} does with its own, and writes them rounded
     * to float into {@code mean} and {@code variance}: given
     * {@code new ChannelStatistics(c).accumulate(this, x)}, the same bits as that call. The
     * statistics may be of a larger batch than x (synchronized BatchNorm: every worker
     * normalises its shard with the merged statistics of all shards). x is read once.
     *
     * @param statistics the merged statistics, of at least 2 values per channel
     * @throws IllegalArgumentException as the plain call, and if statistics has other channels
     *                                  or fewer than 2 values
     * @throws NullPointerException     if x, statistics, y, mean or variance is null
     */
    public void forwardTraining(ChannelStatistics statistics, MemorySegment x, MemorySegment gamma,
                                MemorySegment beta, MemorySegment y, MemorySegment mean,
                                MemorySegment variance) {
        forwardTraining(statistics, x, null, gamma, beta, y, mean, variance);
    }

    /**
     * {@link #forwardTraining(ChannelStatistics, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment)} with a residual added before the activation,
     * as {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment)}; residual may be null (none).
     */
    public void forwardTraining(ChannelStatistics statistics, MemorySegment x,
                                MemorySegment residual, MemorySegment gamma, MemorySegment beta,
                                MemorySegment y, MemorySegment mean, MemorySegment variance) {
        requireStatistics("statistics", statistics == null ? -1 : statistics.channels(),
                statistics == null ? 0 : statistics.count());
        boolean shareable = trainingArguments(x, residual, true, gamma, beta, y, mean, variance, false, null);
        engineFor(shareable).forwardTraining(x, residual, gamma, beta, statistics.moments(), y,
                mean, variance, relu);
    }

    /**
     * The chunks this instance's statistics are reduced in: chunk k is images (NCHW) or rows
     * (NHWC: N * H * W rows of C floats) [b[k], b[k + 1]). They depend on the shape only (not
     * on the parallelism). Accumulating them in order into {@link ChannelStatistics} (or
     * {@link GradientStatistics}) reproduces {@link #forwardTraining}'s statistics (backward's
     * sums) bit for bit, however the chunks are spread over objects, threads or machines, as
     * long as the merges are in chunk order.
     *
     * @return chunks + 1 boundaries, from 0 to the images (NCHW) or rows (NHWC)
     */
    public long[] statisticsChunks() {
        return serial.chunkBoundaries();
    }

    /** Units of {@link #statisticsChunks()}: images (NCHW) or rows (NHWC). */
    long statisticsUnits() {
        return serial.units();
    }

    /** Values per channel in one unit of {@link #statisticsChunks()}. */
    long valuesPerUnit() {
        return shape.perChannel() / serial.units();
    }

    Arguments.View inView() {
        return inView;
    }

    Arguments.View outView() {
        return outView;
    }

    BatchNormEngine statisticsEngine() {
        return serial;
    }

    void checkRange(long from, long to) {
        long units = statisticsUnits();
        if (from < 0 || from > to || to > units) {
            throw new IllegalArgumentException("from, to: expected 0 <= from <= to <= " + units
                    + " (the " + (shape.layout() == Layout.NCHW ? "images" : "rows of C floats")
                    + " of " + shape + "), got " + from + ", " + to);
        }
    }

    private void requireStatistics(String name, int channels, long count) {
        if (channels < 0) {
            throw new NullPointerException(name + ": expected merged statistics, got null");
        }
        if (channels != shape.channels()) {
            throw new IllegalArgumentException(name + ": expected statistics of " + shape.channels()
                    + " channels, got " + channels);
        }
        if (count < 2) {
            throw new IllegalArgumentException(name + ": expected statistics of at least 2 values"
                    + " per channel, got " + count);
        }
    }

    /**
     * Inference-mode forward with given statistics (the paper's Algorithm 2):
     * {@code y = gamma[c] * (x - mean[c]) / sqrt(variance[c] + eps) + beta[c]}. {@code y} may be
     * {@code x}. A negative variance below {@code -eps} gives NaN in that channel. With activation
     * {@link Activation#RELU}, y is {@code relu} of the above.
     *
     * @throws IllegalArgumentException if a size is wrong or an output is read-only or overlaps
     * @throws NullPointerException     if x, mean, variance or y is null
     */
    public void forwardInference(MemorySegment x, MemorySegment gamma, MemorySegment beta,
                                 MemorySegment mean, MemorySegment variance, MemorySegment y) {
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, inView, "the input tensor", false)
                .input("gamma", gamma, c, "one scale per channel", true)
                .input("beta", beta, c, "one shift per channel", true)
                .input("mean", mean, c, "one mean per channel", false)
                .input("variance", variance, c, "one variance per channel", false)
                .output("y", y, outView, "the output tensor", false)
                .finish("y", "x");
        engineFor(shareable).forwardInference(x, null, gamma, beta, mean, variance, y, relu);
    }

    /**
     * Inference-mode forward with a residual added before the activation:
     * {@code y = act(fl(bn(x) + residual))}, {@code bn(x)} the float of the plain call, the add
     * rounded once, act as in {@link #forwardTraining(MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment)}. {@code y} may be {@code x} or
     * {@code residual}.
     *
     * @throws IllegalArgumentException if a size is wrong, or an output is read-only or overlaps
     *                                  an input other than as {@code y == x} or
     *                                  {@code y == residual}
     * @throws NullPointerException     if x, residual, mean, variance or y is null
     */
    public void forwardInference(MemorySegment x, MemorySegment residual, MemorySegment gamma,
                                 MemorySegment beta, MemorySegment mean, MemorySegment variance,
                                 MemorySegment y) {
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, inView, "the input tensor", false)
                .input("residual", residual, outView, "the tensor added before the activation", false)
                .input("gamma", gamma, c, "one scale per channel", true)
                .input("beta", beta, c, "one shift per channel", true)
                .input("mean", mean, c, "one mean per channel", false)
                .input("variance", variance, c, "one variance per channel", false)
                .output("y", y, outView, "the output tensor", false)
                .finish("y", "x", "y", "residual");
        engineFor(shareable).forwardInference(x, residual, gamma, beta, mean, variance, y, relu);
    }

    /**
     * Gradients of {@link #forwardTraining} given the {@code mean} and {@code variance} it wrote
     * (M = {@code shape.perChannel()}, invstd = 1 / sqrt(variance + eps)):
     * <pre>
     *   dbeta  = sum(dy)
     *   dgamma = invstd * sum((x - mean) * dy)
     *   dx     = gamma * invstd * (dy - dbeta / M - (x - mean) * invstd * dgamma / M)
     * </pre>
     * {@code dx} may be {@code dy}; {@code dgamma} and {@code dbeta} may be null.
     *
     * @throws IllegalArgumentException if a size is wrong, an output is read-only or overlaps,
     *                                  or M = 1
     * @throws NullPointerException     if x, dy, mean, variance or dx is null
     * @throws IllegalStateException    if the activation is {@link Activation#RELU}: its gradient
     *                                  needs the forward output, which the overload with
     *                                  {@code y} and {@code dresidual} takes
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment gamma, MemorySegment mean,
                         MemorySegment variance, MemorySegment dx, MemorySegment dgamma,
                         MemorySegment dbeta) {
        requireNoActivation("backward");
        requireBatchOfMany("backward");
        boolean shareable = backwardArguments(x, dy, gamma, mean, variance, dx, dgamma, dbeta);
        engineFor(shareable).backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta, false);
    }

    /**
     * {@link #backward(MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment) backward} with the gradient sums given rather
     * than computed from x and dy (synchronized BatchNorm: the sums of every worker's shard,
     * merged): with M = {@code sums.count()},
     * <pre>
     *   dbeta  = sumDy,   dgamma = invstd * sumDyXmu
     *   dx     = gamma * invstd * (dy - sumDy / M - (x - mean) * invstd * dgamma / M)
     * </pre>
     * Given {@code new GradientStatistics(c).accumulate(this, x, dy, mean)}, the same bits as
     * that call; x and dy are read once. dgamma and dbeta are the merged sums' (the whole
     * batch's); pass null where the engine reduces parameter gradients itself.
     *
     * @throws IllegalArgumentException as the plain call, and if sums has other channels or
     *                                  fewer than 2 values
     * @throws NullPointerException     if x, dy, mean, variance, sums or dx is null
     * @throws IllegalStateException    if the activation is {@link Activation#RELU} (mask dy
     *                                  first and use an instance without activation)
     */
    public void backward(GradientStatistics sums, MemorySegment x, MemorySegment dy,
                         MemorySegment gamma, MemorySegment mean, MemorySegment variance,
                         MemorySegment dx, MemorySegment dgamma, MemorySegment dbeta) {
        requireNoActivation("backward");
        requireStatistics("sums", sums == null ? -1 : sums.channels(), sums == null ? 0 : sums.count());
        boolean shareable = backwardArguments(x, dy, gamma, mean, variance, dx, dgamma, dbeta);
        engineFor(shareable).backward(x, dy, gamma, mean, variance, sums.sumDyArray(),
                sums.sumDyXmuArray(), sums.count(), dx, dgamma, dbeta);
    }

    /**
     * Backward when the statistics were inputs rather than functions of x (PyTorch in eval mode,
     * oneDNN's use_global_stats), e.g. to fine-tune with frozen BatchNorm:
     * {@code dx = gamma * invstd * dy}; {@code dgamma} and {@code dbeta} as in {@link #backward}.
     * When both are null, x is not read (it must still have the right size).
     *
     * @throws IllegalArgumentException if a size is wrong or an output is read-only or overlaps
     * @throws NullPointerException     if x, dy, mean, variance or dx is null
     * @throws IllegalStateException    if the activation is {@link Activation#RELU} (call the
     *                                  overload with {@code y} and {@code dresidual})
     */
    public void backwardWithFrozenStatistics(MemorySegment x, MemorySegment dy, MemorySegment gamma,
                                             MemorySegment mean, MemorySegment variance,
                                             MemorySegment dx, MemorySegment dgamma,
                                             MemorySegment dbeta) {
        requireNoActivation("backwardWithFrozenStatistics");
        boolean shareable = backwardArguments(x, dy, gamma, mean, variance, dx, dgamma, dbeta);
        engineFor(shareable).backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta, true);
    }

    /**
     * Gradients of the fused forward {@code y = act(bn(x) + residual)} (or {@code act(bn(x))}),
     * given the {@code mean} and {@code variance} that {@code forwardTraining} wrote and its
     * output {@code y}. With g the gradient at the activation's input,
     * <pre>
     *   g         = y &lt;= 0 ? 0 : dy   (RELU; a NaN y passes dy)     g = dy   (NONE; y not read)
     *   dresidual = g
     *   dbeta     = sum(g),   dgamma = invstd * sum((x - mean) * g)
     *   dx        = gamma * invstd * (g - dbeta / M - (x - mean) * invstd * dgamma / M)
     * </pre>
     * that is {@link #backward(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment) backward} with dy replaced by g:
     * g is written once into {@code dresidual} (else into {@code dx}), and the plain backward's
     * two passes run over it. {@code dresidual} may be null (a
     * forward without a residual); {@code dx} or {@code dresidual} (not both) may be {@code dy};
     * {@code dgamma} and {@code dbeta} may be null.
     *
     * @param y         the forward output; may be null with activation NONE
     * @param dresidual output, the gradient of the residual, or null
     * @throws IllegalArgumentException if a size is wrong, an output is read-only or overlaps an
     *                                  argument other than as {@code dx == dy} or
     *                                  {@code dresidual == dy}, or M = 1
     * @throws NullPointerException     if x, dy, mean, variance or dx is null, or y with RELU
     */
    public void backward(MemorySegment x, MemorySegment dy, MemorySegment y, MemorySegment gamma,
                         MemorySegment mean, MemorySegment variance, MemorySegment dx,
                         MemorySegment dresidual, MemorySegment dgamma, MemorySegment dbeta) {
        requireBatchOfMany("backward");
        boolean shareable = fusedBackwardArguments(x, dy, y, false, gamma, mean, variance, dx,
                dresidual, dgamma, dbeta);
        engineFor(shareable).backward(x, dy, relu ? y : null, gamma, mean, variance, dx, dresidual,
                dgamma, dbeta, false);
    }

    /**
     * {@link #backwardWithFrozenStatistics(MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment)} of the fused
     * forward: g and {@code dresidual = g} as in {@link #backward(MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment) the fused backward}, then {@code dx = gamma * invstd * g},
     * {@code dbeta = sum(g)}, {@code dgamma = invstd * sum((x - mean) * g)}.
     *
     * @throws IllegalArgumentException if a size is wrong or an output is read-only or overlaps
     * @throws NullPointerException     if x, dy, mean, variance or dx is null, or y with RELU
     */
    public void backwardWithFrozenStatistics(MemorySegment x, MemorySegment dy, MemorySegment y,
                                             MemorySegment gamma, MemorySegment mean,
                                             MemorySegment variance, MemorySegment dx,
                                             MemorySegment dresidual, MemorySegment dgamma,
                                             MemorySegment dbeta) {
        boolean shareable = fusedBackwardArguments(x, dy, y, false, gamma, mean, variance, dx,
                dresidual, dgamma, dbeta);
        engineFor(shareable).backward(x, dy, relu ? y : null, gamma, mean, variance, dx, dresidual,
                dgamma, dbeta, true);
    }

    /** The fused backward's checks; {@code mask} is y, or the workspace when {@code workspace}. */
    private boolean fusedBackwardArguments(MemorySegment x, MemorySegment dy, MemorySegment mask,
                                           boolean workspace, MemorySegment gamma,
                                           MemorySegment mean, MemorySegment variance,
                                           MemorySegment dx, MemorySegment dresidual,
                                           MemorySegment dgamma, MemorySegment dbeta) {
        int c = shape.channels();
        Arguments a = Arguments.start()
                .input("x", x, inView, "the forward input tensor", false)
                .input("dy", dy, outView, "the gradient of the output", false);
        a = workspace ? a.workspace("workspace", mask, workspaceBytes(), false)
                : a.input("y", mask, outView, "the forward output, for the ReLU's mask", !relu);
        return a.input("gamma", gamma, c, "one scale per channel", true)
                .input("mean", mean, c, "one mean per channel", false)
                .input("variance", variance, c, "one variance per channel", false)
                .output("dx", dx, inView, "the gradient of the input", false)
                .output("dresidual", dresidual, outView, "the gradient of the residual", true)
                .output("dgamma", dgamma, c, "one gradient per channel", true)
                .output("dbeta", dbeta, c, "one gradient per channel", true)
                .finish("dx", "dy", "dresidual", "dy");
    }

    private void requireNoActivation(String call) {
        if (relu) {
            throw new IllegalStateException(call + ": this BatchNorm fuses activation RELU, whose"
                    + " gradient needs the forward output; call " + call + "(x, dy, y, gamma, mean,"
                    + " variance, dx, dresidual, dgamma, dbeta)");
        }
    }

    private boolean backwardArguments(MemorySegment x, MemorySegment dy, MemorySegment gamma,
                                      MemorySegment mean, MemorySegment variance,
                                      MemorySegment dx, MemorySegment dgamma,
                                      MemorySegment dbeta) {
        int c = shape.channels();
        boolean shareable = Arguments.start()
                .input("x", x, inView, "the forward input tensor", false)
                .input("dy", dy, outView, "the gradient of the output", false)
                .input("gamma", gamma, c, "one scale per channel", true)
                .input("mean", mean, c, "one mean per channel", false)
                .input("variance", variance, c, "one variance per channel", false)
                .output("dx", dx, inView, "the gradient of the input", false)
                .output("dgamma", dgamma, c, "one gradient per channel", true)
                .output("dbeta", dbeta, c, "one gradient per channel", true)
                .finish("dx", "dy");
        return shareable;
    }

    /**
     * The running-statistics update of {@link #runningStatistics()}, in place on
     * {@code runningMean} and {@code runningVariance}, with {@code m} = {@link #momentum()},
     * {@code variance} the biased batch variance that {@link #forwardTraining} wrote and
     * M = {@code shape.perChannel()}:
     * <pre>
     *   PYTORCH           runningMean     = (1 - m) * runningMean     + m * mean
     *                     runningVariance = (1 - m) * runningVariance + m * variance * M / (M - 1)
     *   ONNX, KERAS, DJL  runningMean     = m * runningMean     + (1 - m) * mean
     *                     runningVariance = m * runningVariance + (1 - m) * variance
     * </pre>
     * Computed in double, rounded once. {@link RunningStatistics#CUMULATIVE_AVERAGE} needs the
     * batch count: use the overload that takes {@code numBatchesTracked}.
     *
     * @throws IllegalArgumentException if a size is wrong, an output is read-only or overlaps
     *                                  another argument, or M = 1
     * @throws NullPointerException     if any argument is null
     * @throws IllegalStateException    if the rule is {@link RunningStatistics#CUMULATIVE_AVERAGE}
     */
    public void updateRunningStatistics(MemorySegment mean, MemorySegment variance,
                                        MemorySegment runningMean, MemorySegment runningVariance) {
        if (runningStatistics == RunningStatistics.CUMULATIVE_AVERAGE) {
            throw new IllegalStateException("updateRunningStatistics: the CUMULATIVE_AVERAGE rule"
                    + " averages over the batch count; call the overload that takes numBatchesTracked");
        }
        updateRunningStatistics(mean, variance, runningMean, runningVariance, 1);
    }

    /**
     * {@link #updateRunningStatistics(MemorySegment, MemorySegment, MemorySegment, MemorySegment)}
     * for every rule, cumulative included: {@code numBatchesTracked} = n is PyTorch's
     * {@code num_batches_tracked} after counting this batch (1 for the first), and
     * {@link RunningStatistics#CUMULATIVE_AVERAGE} computes
     * <pre>
     *   runningMean     = (1 - 1/n) * runningMean     + (1/n) * mean
     *   runningVariance = (1 - 1/n) * runningVariance + (1/n) * variance * M / (M - 1)
     * </pre>
     * i.e. {@code running += (batch - running) / n}, in double, rounded once. The momentum rules
     * ignore n (PyTorch also counts batches when it has a momentum).
     *
     * @throws IllegalArgumentException if {@code numBatchesTracked < 1}, a size is wrong, an output
     *                                  is read-only or overlaps another argument, or M = 1
     * @throws NullPointerException     if a segment is null
     */
    public void updateRunningStatistics(MemorySegment mean, MemorySegment variance,
                                        MemorySegment runningMean, MemorySegment runningVariance,
                                        long numBatchesTracked) {
        requireBatchOfMany("updateRunningStatistics");
        if (numBatchesTracked < 1) {
            throw new IllegalArgumentException("numBatchesTracked: expected >= 1 (the batches seen,"
                    + " this one included), got " + numBatchesTracked);
        }
        int c = shape.channels();
        Arguments.start()
                .input("mean", mean, c, "the batch mean per channel", false)
                .input("variance", variance, c, "the biased batch variance per channel", false)
                .output("runningMean", runningMean, c, "one running mean per channel", false)
                .output("runningVariance", runningVariance, c, "one running variance per channel", false)
                .finish(null, null);
        runningStatistics.update(momentum, shape.perChannel(), numBatchesTracked, c, mean, variance,
                runningMean, runningVariance);
    }

    private void requireBatchOfMany(String call) {
        if (shape.perChannel() < 2) {
            throw new IllegalArgumentException("shape: " + call + " expected at least 2 values per"
                    + " channel (batch * spatial), got " + shape.perChannel());
        }
    }

    private BatchNormEngine engineFor(boolean shareable) {
        return shareable ? engine : serial;
    }

    @Override
    public String toString() {
        return "BatchNorm[" + shape + ", epsilon=" + epsilon + ", momentum=" + momentum
                + ", parallelism=" + parallelism + ", activation=" + activation + ", kernels="
                + instanceKernels() + "]";
    }

    /** Configures a {@link BatchNorm}; not thread-safe, reusable. */
    public static final class Builder {
        private final TensorShape shape;
        private float epsilon = 1e-5f;
        private float momentum = Float.NaN;          // NaN: the rule's default
        private RunningStatistics runningStatistics = RunningStatistics.PYTORCH;
        private int parallelism = 1;
        private Activation activation = Activation.NONE;
        private ExecutorService executor;
        private BatchNormKernels kernels;
        private long inputStride, outputStride;        // 0: dense

        private Builder(TensorShape shape) {
            this.shape = shape;
        }

        /**
         * The epsilon added to the variance (default 1e-5, PyTorch's).
         *
         * @throws IllegalArgumentException unless positive and finite
         */
        public Builder epsilon(float epsilon) {
            if (!(epsilon > 0) || !Float.isFinite(epsilon)) {
                throw new IllegalArgumentException("epsilon: expected a positive finite number, got " + epsilon);
            }
            this.epsilon = epsilon;
            return this;
        }

        /**
         * The running-statistics momentum, in the convention of the rule
         * ({@link #runningStatistics}): the weight of the batch value for PyTorch, of the old
         * running value for ONNX, Keras and DJL. Default: the rule's
         * {@link RunningStatistics#defaultMomentum()} (0.1 for PyTorch).
         *
         * @throws IllegalArgumentException unless in [0, 1]
         */
        public Builder momentum(float momentum) {
            if (!(momentum >= 0 && momentum <= 1)) {
                throw new IllegalArgumentException("momentum: expected a number in [0, 1], got " + momentum);
            }
            this.momentum = momentum;
            return this;
        }

        /**
         * The running-statistics rule of {@link #updateRunningStatistics} (default
         * {@link RunningStatistics#PYTORCH}). {@link RunningStatistics#CUMULATIVE_AVERAGE} takes no
         * momentum: {@link #build()} rejects one given with it.
         *
         * @throws NullPointerException if null
         */
        public Builder runningStatistics(RunningStatistics rule) {
            this.runningStatistics = Objects.requireNonNull(rule,
                    "runningStatistics: expected a RunningStatistics rule, got null");
            return this;
        }

        private float momentumOrDefault() {
            return Float.isNaN(momentum) ? runningStatistics.defaultMomentum() : momentum;
        }

        /**
         * The number of threads a call may use (default 1: the calling thread). Results do not
         * depend on it. Problems under 65 536 elements always run on the calling thread, where
         * the hand-off would cost more than it saves.
         *
         * @throws IllegalArgumentException unless at least 1
         */
        public Builder parallelism(int parallelism) {
            if (parallelism < 1) {
                throw new IllegalArgumentException("parallelism: expected >= 1, got " + parallelism);
            }
            this.parallelism = parallelism;
            return this;
        }

        /**
         * The executor that runs the extra threads' work when {@code parallelism > 1} (default:
         * the common ForkJoinPool). A call never waits for a free executor thread: the calling
         * thread runs all work that no executor thread has started (all of it if the executor
         * refuses work), so a call made on one of the executor's own threads cannot deadlock.
         * The library never shuts it down.
         *
         * @throws NullPointerException if null
         */
        public Builder executor(ExecutorService executor) {
            this.executor = Objects.requireNonNull(executor, "executor: expected an ExecutorService, got null");
            return this;
        }

        /**
         * The activation fused into the forward output (default {@link Activation#NONE}): with
         * {@link Activation#RELU} the forward calls write {@code relu(bn(x))} (or
         * {@code relu(bn(x) + residual)}), and backward takes the overloads with {@code y}.
         *
         * @throws NullPointerException if null
         */
        public Builder activation(Activation activation) {
            this.activation = Objects.requireNonNull(activation,
                    "activation: expected NONE or RELU, got null");
            return this;
        }

        /**
         * Makes x and dx views of a larger buffer, as oneDNN's memory descriptors give strides:
         * {@code floats} from one image to the next (NCHW: at least C * H * W, e.g. a channel
         * slice of an Inception or DenseNet concatenation) or from one pixel to the next (NHWC
         * and [N, C]: at least C, a channel slice of a wider NHWC buffer). A view's segment
         * starts at its first value and ends after its last: (N - 1) * stride + C * H * W floats
         * (NCHW), (N * H * W - 1) * stride + C (NHWC). Default: dense. Results are the same
         * bits as on the same data made dense.
         *
         * @throws IllegalArgumentException (by {@link #build()}) if smaller than dense
         */
        public Builder inputStride(long floats) {
            this.inputStride = floats;
            return this;
        }

        /** As {@link #inputStride}, for y, dy, the residual and its gradient. */
        public Builder outputStride(long floats) {
            this.outputStride = floats;
            return this;
        }

        /** Tests only: run these kernels instead of the JVM's choice. */
        Builder kernels(BatchNormKernels kernels) {
            this.kernels = kernels;
            return this;
        }

        /**
         * A new immutable {@link BatchNorm}.
         *
         * @throws IllegalArgumentException if a momentum was given with
         *                                  {@link RunningStatistics#CUMULATIVE_AVERAGE}
         */
        public BatchNorm build() {
            boolean nchw = shape.layout() == Layout.NCHW;
            long dense = nchw ? shape.elements() / shape.batch() : shape.channels();
            String unit = nchw ? "C * H * W = " + dense + " floats (a dense image)"
                    : "C = " + dense + " floats (a dense pixel)";
            if (inputStride != 0 && inputStride < dense) {
                throw new IllegalArgumentException("inputStride: expected at least " + unit + ", got " + inputStride);
            }
            if (outputStride != 0 && outputStride < dense) {
                throw new IllegalArgumentException("outputStride: expected at least " + unit + ", got " + outputStride);
            }
            if (runningStatistics == RunningStatistics.CUMULATIVE_AVERAGE && !Float.isNaN(momentum)) {
                throw new IllegalArgumentException("momentum: expected none with CUMULATIVE_AVERAGE"
                        + " (PyTorch's momentum=None), got " + momentum);
            }
            return new BatchNorm(this);
        }
    }
}
