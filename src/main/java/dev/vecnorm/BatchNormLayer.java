package dev.vecnorm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.TreeSet;
import java.util.concurrent.ExecutorService;

/**
 * A BatchNorm layer with its state, as PyTorch's {@code BatchNorm1d/2d}: it owns the affine
 * parameters {@code weight} (gamma) and {@code bias} (beta), the running statistics
 * {@code running_mean} and {@code running_var}, the batch counter {@code num_batches_tracked},
 * their gradients and the batch statistics that backward needs, all off-heap in the layer's own
 * arena, freed by {@link #close()}. Initial state as in PyTorch: weight 1, bias 0, running mean 0,
 * running variance 1, counter 0; the layer starts in training mode.
 *
 * <p>With M = batch * spatial values per channel and eps = {@link #epsilon()}:
 * <ul>
 *   <li>Training ({@link #train()}), or any mode with {@code trackRunningStats(false)}:
 *       {@code y = weight * (x - mean_B) / sqrt(var_B + eps) + bias} with this batch's mean and
 *       biased variance, which the layer keeps for {@link #backward}. In training mode with
 *       running statistics it then counts the batch ({@code num_batches_tracked += 1}) and updates
 *       the running statistics by the layer's {@link RunningStatistics} rule.</li>
 *   <li>Evaluation ({@link #eval()}) with running statistics:
 *       {@code y = weight * (x - running_mean) / sqrt(running_var + eps) + bias}, and backward is
 *       the frozen-statistics backward ({@code dx = weight * dy / sqrt(running_var + eps)}).</li>
 * </ul>
 * {@link #forward} and {@link #backward} take the shape of each call: the batch (and spatial
 * size, and layout) may change from call to call. The layer keeps a {@link BatchNorm} for each of
 * the {@value #CACHED_SHAPES} shapes it used most recently, so a steady stream of a few shapes
 * costs no set-up per call. Every call follows {@link BatchNorm}'s conventions (sizes, nulls,
 * overlaps, errors before anything is written).
 *
 * <p>Threads: evaluation-mode {@link #forward} with running statistics only reads the layer's
 * state, and may be called from many threads at once on one layer. Every call that changes state
 * (forward in training mode or without running statistics, backward, which writes the
 * gradients, {@link #loadStateDict}, {@link #close()}) is {@code synchronized} on the layer, so
 * such calls from several threads run one after the other. {@link #train()}, {@link #eval()},
 * {@link #loadStateDict}, writes through {@link #weight()} / {@link #bias()} and {@link #close()}
 * must not overlap a forward that reads the state (the engine orders them, as it orders a
 * parameter update before the next step).
 */
public final class BatchNormLayer implements AutoCloseable {

    /** How many shapes keep their {@link BatchNorm}; a ninth evicts the least recently used. */
    public static final int CACHED_SHAPES = 8;

    static final String WEIGHT = "weight";
    static final String BIAS = "bias";
    static final String RUNNING_MEAN = "running_mean";
    static final String RUNNING_VAR = "running_var";
    static final String NUM_BATCHES_TRACKED = "num_batches_tracked";

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final ValueLayout.OfLong I64 = ValueLayout.JAVA_LONG_UNALIGNED;

    private final int channels;
    private final float epsilon;
    private final float momentum;
    private final RunningStatistics runningStatistics;
    private final boolean affine;
    private final boolean trackRunningStats;
    /** Applied after the normalisation (and the residual add), fused into the same pass. */
    private final Activation activation;
    private final int parallelism;
    private final ExecutorService executor;

    // A shared arena: worker threads of a parallel call and concurrent eval callers read it.
    private final Arena arena = Arena.ofShared();
    private final MemorySegment weight, bias, weightGradient, biasGradient;         // null: affine=false
    private final MemorySegment runningMean, runningVariance, numBatchesTracked;   // null: untracked
    private final MemorySegment savedMean, savedVariance;
    /** The shape of the last forward that computed batch statistics; guarded by this. */
    private TensorShape savedShape;
    /**
     * With activation RELU: the mask workspace (see {@link BatchNorm#workspaceBytes()}) that the
     * last forward with batch statistics wrote, for its backward, which then reads it instead of
     * y; {@code maskCapacity} is the allocation, grown to the largest shape seen (at least
     * doubling, so its garbage in the arena is at most its size), {@code mask} its slice for
     * {@code maskShape}. Guarded by this.
     */
    private MemorySegment maskCapacity, mask;
    private TensorShape maskShape;
    private boolean maskValid;
    private volatile boolean training = true;
    private volatile boolean closed;

    /** Access-ordered: iteration starts at the least recently used shape. Guarded by itself. */
    private final LinkedHashMap<TensorShape, BatchNorm> instances =
            new LinkedHashMap<>(16, 0.75f, true) {
                @Override
                protected boolean removeEldestEntry(Map.Entry<TensorShape, BatchNorm> eldest) {
                    return size() > CACHED_SHAPES;
                }
            };

    private BatchNormLayer(Builder b) {
        this.channels = b.channels;
        this.epsilon = b.epsilon;
        this.runningStatistics = b.runningStatistics;
        this.momentum = Float.isNaN(b.momentum) ? b.runningStatistics.defaultMomentum() : b.momentum;
        this.affine = b.affine;
        this.trackRunningStats = b.trackRunningStats;
        this.activation = b.activation;
        this.parallelism = b.parallelism;
        this.executor = b.executor;
        long bytes = (long) channels * Float.BYTES;
        if (affine) {
            weight = filled(bytes, 1f);
            bias = filled(bytes, 0f);
            weightGradient = filled(bytes, 0f);
            biasGradient = filled(bytes, 0f);
        } else {
            weight = bias = weightGradient = biasGradient = null;
        }
        if (trackRunningStats) {
            runningMean = filled(bytes, 0f);
            runningVariance = filled(bytes, 1f);
            numBatchesTracked = arena.allocate(I64);
        } else {
            runningMean = runningVariance = numBatchesTracked = null;
        }
        savedMean = filled(bytes, 0f);
        savedVariance = filled(bytes, 1f);
    }

    private MemorySegment filled(long bytes, float value) {
        MemorySegment s = arena.allocate(bytes, 64);
        for (long i = 0; i < bytes / Float.BYTES; i++) {
            s.setAtIndex(F32, i, value);
        }
        return s;
    }

    /**
     * A builder for a layer of {@code channels} channels: epsilon 1e-5, running statistics
     * {@link RunningStatistics#PYTORCH} with its momentum 0.1, affine, tracking running
     * statistics, parallelism 1 (PyTorch's defaults).
     *
     * @throws IllegalArgumentException if {@code channels < 1}
     */
    public static Builder builder(int channels) {
        if (channels < 1) {
            throw new IllegalArgumentException("channels: expected >= 1, got " + channels);
        }
        return new Builder(channels);
    }

    /** The number of channels C. */
    public int channels() {
        return channels;
    }

    /** The epsilon added to the variance. */
    public float epsilon() {
        return epsilon;
    }

    /** The momentum in the convention of {@link #runningStatistics()} (NaN when cumulative). */
    public float momentum() {
        return momentum;
    }

    /** The rule that updates the running statistics in training mode. */
    public RunningStatistics runningStatistics() {
        return runningStatistics;
    }

    /** Whether the layer has a weight and a bias (PyTorch's {@code affine}). */
    public boolean isAffine() {
        return affine;
    }

    /** Whether the layer keeps running statistics (PyTorch's {@code track_running_stats}). */
    public boolean tracksRunningStats() {
        return trackRunningStats;
    }

    /** Switches to training mode (batch statistics, running statistics updated); returns this. */
    public BatchNormLayer train() {
        training = true;
        return this;
    }

    /** Switches to evaluation mode (running statistics, if tracked); returns this. */
    public BatchNormLayer eval() {
        training = false;
        return this;
    }

    /** True in training mode, the initial mode. */
    public boolean isTraining() {
        return training;
    }

    /**
     * The batches counted in training mode ({@code num_batches_tracked}).
     *
     * @throws IllegalStateException if the layer does not track running statistics, or is closed
     */
    public long numBatchesTracked() {
        requireOpen();
        requireTracked("numBatchesTracked");
        return numBatchesTracked.get(I64, 0);
    }

    /**
     * Normalises {@code x} into {@code y} ({@code y} may be {@code x}), with the batch statistics
     * in training mode or without running statistics, else with the running statistics (formulas
     * in the class comment). In training mode with running statistics it also counts the batch
     * and updates the running statistics; batch statistics are kept for {@link #backward}.
     *
     * @param shape the shape of x and y: the layer's channel count, any batch, spatial size and
     *              layout
     * @param x     input, {@code shape.elements()} floats
     * @param y     output, {@code shape.elements()} floats
     * @throws IllegalArgumentException if the shape's channels are not the layer's, a size is
     *                                  wrong, y overlaps x other than being x, or batch statistics
     *                                  are needed and M = batch * spatial is 1
     * @throws NullPointerException     if an argument is null
     * @throws IllegalStateException    if the layer is closed
     */
    public void forward(TensorShape shape, MemorySegment x, MemorySegment y) {
        BatchNorm bn = instance(shape);
        if (!usesBatchStatistics()) {
            bn.forwardInference(x, weight, bias, runningMean, runningVariance, y);
            return;
        }
        synchronized (this) {
            requireOpen();
            if (activation == Activation.RELU) {
                bn.forwardTraining(x, null, weight, bias, y, savedMean, savedVariance, mask(bn, shape));
            } else {
                bn.forwardTraining(x, weight, bias, y, savedMean, savedVariance);
            }
            recordBatchStatistics(bn, shape);
        }
    }

    /**
     * {@link #forward} fused with a residual add and the layer's activation:
     * {@code y = act(bn(x) + residual)} in one pass ({@link BatchNorm#forwardTraining(
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment)}); {@code y} may be {@code x} or {@code residual}.
     *
     * @throws IllegalArgumentException as {@link #forward}, and for a residual of the wrong size
     * @throws NullPointerException     if an argument is null
     * @throws IllegalStateException    if the layer is closed
     */
    public void forward(TensorShape shape, MemorySegment x, MemorySegment residual, MemorySegment y) {
        BatchNorm bn = instance(shape);
        if (!usesBatchStatistics()) {
            bn.forwardInference(x, residual, weight, bias, runningMean, runningVariance, y);
            return;
        }
        synchronized (this) {
            requireOpen();
            if (activation == Activation.RELU) {
                Objects.requireNonNull(residual, "residual: expected a tensor of " + shape + ", got null");
                bn.forwardTraining(x, residual, weight, bias, y, savedMean, savedVariance, mask(bn, shape));
            } else {
                bn.forwardTraining(x, residual, weight, bias, y, savedMean, savedVariance);
            }
            recordBatchStatistics(bn, shape);
        }
    }

    /**
     * The mask workspace for a forward of {@code shape}, marked invalid until that forward has
     * written it (a forward that throws leaves no mask for backward to trust).
     */
    private MemorySegment mask(BatchNorm bn, TensorShape shape) {
        maskValid = false;
        if (!shape.equals(maskShape)) {
            long bytes = bn.workspaceBytes();
            if (maskCapacity == null || maskCapacity.byteSize() < bytes) {
                long grown = maskCapacity == null ? bytes : Math.max(bytes, 2 * maskCapacity.byteSize());
                maskCapacity = arena.allocate(grown, 64);
            }
            mask = maskCapacity.asSlice(0, bytes);
            maskShape = shape;
        }
        return mask;
    }

    /** After a forward with batch statistics: keep its shape for backward, count and update. */
    private void recordBatchStatistics(BatchNorm bn, TensorShape shape) {
        savedShape = shape;
        maskValid = activation == Activation.RELU;
        if (training && trackRunningStats) {
            long n = numBatchesTracked.get(I64, 0) + 1;
            bn.updateRunningStatistics(savedMean, savedVariance, runningMean, runningVariance, n);
            numBatchesTracked.set(I64, 0, n);
        }
    }

    /**
     * The gradient of {@link #forward}: writes {@code dx} ({@code dx} may be {@code dy}) and, for
     * an affine layer, WRITES (does not add to) {@link #weightGradient()} and
     * {@link #biasGradient()}; an engine that accumulates over micro-batches adds them up itself.
     * With batch statistics (training mode, or no running statistics) this is the full backward
     * of {@link BatchNorm#backward} with the statistics of the last such forward, which must have
     * had the same shape (and the same x); in evaluation mode with running statistics it is
     * {@link BatchNorm#backwardWithFrozenStatistics}:
     * <pre>
     *   dbias   = sum(dy),   dweight = invstd * sum((x - mean) * dy)
     *   dx      = weight * invstd * (dy - dbias / M - (x - mean) * invstd * dweight / M)   (batch)
     *   dx      = weight * invstd * dy                                                    (frozen)
     * </pre>
     *
     * @throws IllegalArgumentException if the shape's channels are not the layer's, a size is
     *                                  wrong, an output overlaps an input, or (batch statistics)
     *                                  the shape is not that of the last forward
     * @throws NullPointerException     if an argument is null
     * @throws IllegalStateException    if the layer is closed, or batch statistics are needed and no
     *                                  forward has computed them yet
     */
    public void backward(TensorShape shape, MemorySegment x, MemorySegment dy, MemorySegment dx) {
        BatchNorm bn = instance(shape);
        synchronized (this) {
            requireOpen();
            if (usesBatchStatistics()) {
                requireSavedShape(shape);
                bn.backward(x, dy, weight, savedMean, savedVariance, dx, weightGradient, biasGradient);
            } else {
                bn.backwardWithFrozenStatistics(x, dy, weight, runningMean, runningVariance, dx,
                        weightGradient, biasGradient);
            }
        }
    }

    /**
     * The gradient of a forward with the layer's activation (and a residual): {@code y} is that
     * forward's output (the ReLU's mask is {@code y > 0}); {@code dresidual}, which may be null,
     * gets the gradient of the residual. Otherwise as {@link #backward(TensorShape,
     * MemorySegment, MemorySegment, MemorySegment)}, through the ten-argument
     * {@link BatchNorm#backward(MemorySegment, MemorySegment, MemorySegment, MemorySegment,
     * MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment, MemorySegment)}.
     * With batch statistics and activation RELU the layer keeps the mask that its last forward
     * wrote ({@link BatchNorm#backwardWithWorkspace}, 1/32 of y's bytes) and reads that instead
     * of y, which is then only checked for its size: the same bits as the y form given that
     * forward's output, for less traffic.
     *
     * @throws IllegalArgumentException as the four-argument backward, and for a wrong y size
     * @throws NullPointerException     if x, dy, y or dx is null
     * @throws IllegalStateException    as the four-argument backward
     */
    public void backward(TensorShape shape, MemorySegment x, MemorySegment dy, MemorySegment y,
                         MemorySegment dx, MemorySegment dresidual) {
        BatchNorm bn = instance(shape);
        synchronized (this) {
            requireOpen();
            if (usesBatchStatistics()) {
                requireSavedShape(shape);
                if (maskValid && shape.equals(maskShape)) {
                    // The forward's mask, 1/32 of y's bytes, read in place of y.
                    Arguments.start().input("y", y, bn.outView(), "the forward output", false).finish(null, null);
                    bn.backwardWithWorkspace(x, dy, mask, weight, savedMean, savedVariance, dx,
                            dresidual, weightGradient, biasGradient);
                } else {
                    bn.backward(x, dy, y, weight, savedMean, savedVariance, dx, dresidual,
                            weightGradient, biasGradient);
                }
            } else {
                bn.backwardWithFrozenStatistics(x, dy, y, weight, runningMean, runningVariance,
                        dx, dresidual, weightGradient, biasGradient);
            }
        }
    }

    private void requireSavedShape(TensorShape shape) {
        if (savedShape == null) {
            throw new IllegalStateException("backward: expected a forward with batch statistics"
                    + " first (training mode, or trackRunningStats(false)), got none");
        }
        if (!savedShape.equals(shape)) {
            throw new IllegalArgumentException("shape: expected " + savedShape + ", the shape of the"
                    + " last forward with batch statistics, got " + shape);
        }
    }

    private boolean usesBatchStatistics() {
        return training || !trackRunningStats;
    }

    /**
     * The weight (gamma), C floats, writable: an optimizer updates it in place between calls. A
     * view of the layer's memory, valid until {@link #close()}.
     *
     * @throws IllegalStateException if the layer is not affine, or is closed
     */
    public MemorySegment weight() {
        requireOpen();
        requireAffine("weight");
        return weight;
    }

    /**
     * The bias (beta), C floats, writable, as {@link #weight()}.
     *
     * @throws IllegalStateException if the layer is not affine, or is closed
     */
    public MemorySegment bias() {
        requireOpen();
        requireAffine("bias");
        return bias;
    }

    /**
     * The weight's gradient written by the last {@link #backward} (zeros before the first), C
     * floats, a read-only view valid until {@link #close()}.
     *
     * @throws IllegalStateException if the layer is not affine, or is closed
     */
    public MemorySegment weightGradient() {
        requireOpen();
        requireAffine("weightGradient");
        return weightGradient.asReadOnly();
    }

    /**
     * The bias's gradient written by the last {@link #backward}, as {@link #weightGradient()}.
     *
     * @throws IllegalStateException if the layer is not affine, or is closed
     */
    public MemorySegment biasGradient() {
        requireOpen();
        requireAffine("biasGradient");
        return biasGradient.asReadOnly();
    }

    /**
     * The state under PyTorch's names, in PyTorch's order: {@code weight}, {@code bias} (if
     * affine), {@code running_mean}, {@code running_var} (C floats each) and
     * {@code num_batches_tracked} (one int64, native byte order) if running statistics are
     * tracked. The values are read-only VIEWS of the layer's memory, not copies: they show later
     * updates (copy them to keep a snapshot) and are valid until {@link #close()}. The map is
     * unmodifiable.
     *
     * @throws IllegalStateException if the layer is closed
     */
    public Map<String, MemorySegment> stateDict() {
        requireOpen();
        Map<String, MemorySegment> state = new LinkedHashMap<>();
        if (affine) {
            state.put(WEIGHT, weight.asReadOnly());
            state.put(BIAS, bias.asReadOnly());
        }
        if (trackRunningStats) {
            state.put(RUNNING_MEAN, runningMean.asReadOnly());
            state.put(RUNNING_VAR, runningVariance.asReadOnly());
            state.put(NUM_BATCHES_TRACKED, numBatchesTracked.asReadOnly());
        }
        return Collections.unmodifiableMap(state);
    }

    /**
     * Copies a state in: exactly the keys of {@link #stateDict()} (PyTorch's strict loading),
     * each float tensor C floats in native byte order and {@code num_batches_tracked} one int64
     * >= 0 (8 bytes). Every key, size and value is checked before anything is copied, so on an
     * exception the layer is unchanged. The segments may be heap or native, and may be the
     * layer's own views.
     *
     * @throws IllegalArgumentException naming the key, what was expected and what was given: for a
     *                                  missing or unexpected key, a wrong byte size, a negative
     *                                  count, a closed segment or one confined to another thread
     * @throws NullPointerException     if the map, or a value, is null
     * @throws IllegalStateException    if the layer is closed
     */
    public synchronized void loadStateDict(Map<String, MemorySegment> state) {
        requireOpen();
        Objects.requireNonNull(state, "state: expected a map from PyTorch's names to segments, got null");
        List<String> expected = new ArrayList<>(stateDict().keySet());
        for (String key : expected) {
            if (!state.containsKey(key)) {
                throw new IllegalArgumentException(key + ": missing from the state (expected keys "
                        + expected + ", got " + new TreeSet<>(state.keySet()) + ")");
            }
        }
        for (String key : new TreeSet<>(state.keySet())) {
            if (!expected.contains(key)) {
                throw new IllegalArgumentException(key + ": unexpected key in the state (expected keys "
                        + expected + unexpectedHint(key) + ")");
            }
        }
        for (String key : expected) {
            MemorySegment s = state.get(key);
            boolean count = key.equals(NUM_BATCHES_TRACKED);
            String what = count ? "8 bytes (one int64)"
                    : channels * Float.BYTES + " bytes (" + channels + " floats, one per channel)";
            if (s == null) {
                throw new NullPointerException(key + ": expected a segment of " + what + ", got null");
            }
            if (!s.scope().isAlive()) {
                throw new IllegalArgumentException(key + ": expected a live segment, got one whose arena is closed");
            }
            if (!s.isAccessibleBy(Thread.currentThread())) {
                throw new IllegalArgumentException(key + ": expected a segment this thread can read,"
                        + " got one confined to another thread");
            }
            long bytes = count ? Long.BYTES : (long) channels * Float.BYTES;
            if (s.byteSize() != bytes) {
                throw new IllegalArgumentException(key + ": expected " + what + ", got " + s.byteSize() + " bytes");
            }
            if (count && s.get(I64, 0) < 0) {
                throw new IllegalArgumentException(key + ": expected a count >= 0, got " + s.get(I64, 0));
            }
        }
        if (affine) {
            MemorySegment.copy(state.get(WEIGHT), 0, weight, 0, weight.byteSize());
            MemorySegment.copy(state.get(BIAS), 0, bias, 0, bias.byteSize());
        }
        if (trackRunningStats) {
            MemorySegment.copy(state.get(RUNNING_MEAN), 0, runningMean, 0, runningMean.byteSize());
            MemorySegment.copy(state.get(RUNNING_VAR), 0, runningVariance, 0, runningVariance.byteSize());
            MemorySegment.copy(state.get(NUM_BATCHES_TRACKED), 0, numBatchesTracked, 0, Long.BYTES);
        }
    }

    private String unexpectedHint(String key) {
        if (!affine && (key.equals(WEIGHT) || key.equals(BIAS))) {
            return "; the layer was built with affine(false)";
        }
        if (!trackRunningStats && (key.equals(RUNNING_MEAN) || key.equals(RUNNING_VAR)
                || key.equals(NUM_BATCHES_TRACKED))) {
            return "; the layer was built with trackRunningStats(false)";
        }
        return "";
    }

    /**
     * Folds this layer, as it computes in evaluation mode, into the preceding convolution or
     * linear layer: {@link BatchNormFolding#fold} with this layer's weight, bias, running mean,
     * running variance and epsilon, i.e. with {@code a = weight / sqrt(running_var + eps)},
     * {@code W' = W * a[o]} and {@code b' = (b - running_mean[o]) * a[o] + bias[o]}, in double,
     * rounded once. {@code weights} has C x K floats with the output channel where {@code layout}
     * says; {@code convBias} may be null (0); {@code foldedWeights} may be {@code weights} and
     * {@code foldedBias} may be {@code convBias}. It reads the state only, in either mode.
     *
     * @throws IllegalArgumentException as {@link BatchNormFolding#fold}, e.g. if the weights are
     *                                  not a positive multiple of C floats
     * @throws NullPointerException     if layout, weights, foldedWeights or foldedBias is null
     * @throws IllegalStateException    if the layer has no running statistics (there is nothing
     *                                  fixed to fold), or is closed
     */
    public void fold(BatchNormFolding.WeightLayout layout, MemorySegment weights,
                     MemorySegment convBias, MemorySegment foldedWeights, MemorySegment foldedBias) {
        requireOpen();
        requireTracked("fold");
        BatchNormFolding.fold(layout, weights, convBias, weight, bias, runningMean, runningVariance,
                epsilon, foldedWeights, foldedBias);
    }

    /**
     * Frees the layer's memory: the segments of {@link #weight()}, {@link #stateDict()} and the
     * gradients become inaccessible, and every later call throws {@link IllegalStateException}.
     * Must not overlap a running call. Closing twice does nothing.
     */
    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            synchronized (instances) {
                instances.clear();
            }
            arena.close();
        }
    }

    /** The number of shapes with a cached {@link BatchNorm} (tests). */
    int cachedShapes() {
        synchronized (instances) {
            return instances.size();
        }
    }

    /** The BatchNorm for {@code shape}, from the cache or built and cached. */
    private BatchNorm instance(TensorShape shape) {
        requireOpen();
        Objects.requireNonNull(shape, "shape: expected a TensorShape, got null");
        if (shape.channels() != channels) {
            throw new IllegalArgumentException("shape: expected " + channels + " channels (the"
                    + " layer's), got " + shape.channels() + " in " + shape);
        }
        synchronized (instances) {
            BatchNorm bn = instances.get(shape);
            if (bn == null) {
                BatchNorm.Builder b = BatchNorm.builder(shape).epsilon(epsilon)
                        .runningStatistics(runningStatistics).parallelism(parallelism)
                        .activation(activation);
                if (runningStatistics != RunningStatistics.CUMULATIVE_AVERAGE) {
                    b.momentum(momentum);
                }
                if (executor != null) {
                    b.executor(executor);
                }
                bn = b.build();
                instances.put(shape, bn);
            }
            return bn;
        }
    }

    private void requireOpen() {
        if (closed) {
            throw new IllegalStateException("BatchNormLayer: expected an open layer, got a closed one");
        }
    }

    private void requireAffine(String what) {
        if (!affine) {
            throw new IllegalStateException(what + ": the layer was built with affine(false) and has"
                    + " no weight or bias");
        }
    }

    private void requireTracked(String what) {
        if (!trackRunningStats) {
            throw new IllegalStateException(what + ": the layer was built with trackRunningStats(false)"
                    + " and has no running statistics");
        }
    }

    @Override
    public String toString() {
        return "BatchNormLayer[channels=" + channels + ", epsilon=" + epsilon + ", runningStatistics="
                + runningStatistics + ", momentum=" + momentum + ", affine=" + affine
                + ", trackRunningStats=" + trackRunningStats + ", " + (training ? "training" : "eval")
                + (closed ? ", closed" : "") + "]";
    }

    /** Configures a {@link BatchNormLayer}; not thread-safe, reusable (each build is a new layer). */
    public static final class Builder {
        private final int channels;
        private float epsilon = 1e-5f;
        private float momentum = Float.NaN;                 // NaN: the rule's default
        private RunningStatistics runningStatistics = RunningStatistics.PYTORCH;
        private boolean affine = true;
        private boolean trackRunningStats = true;
        private Activation activation = Activation.NONE;
        private int parallelism = 1;
        private ExecutorService executor;

        private Builder(int channels) {
            this.channels = channels;
        }

        /**
         * The epsilon added to the variance (default 1e-5, PyTorch's; Keras models use 1e-3).
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
         * The momentum, in the convention of the rule ({@link #runningStatistics}); default: the
         * rule's {@link RunningStatistics#defaultMomentum()}.
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
         * The running-statistics rule (default {@link RunningStatistics#PYTORCH});
         * {@link RunningStatistics#CUMULATIVE_AVERAGE} takes no momentum.
         *
         * @throws NullPointerException if null
         */
        public Builder runningStatistics(RunningStatistics rule) {
            this.runningStatistics = Objects.requireNonNull(rule,
                    "runningStatistics: expected a RunningStatistics rule, got null");
            return this;
        }

        /** PyTorch's {@code affine} (default true): false gives no weight, bias or their gradients. */
        public Builder affine(boolean affine) {
            this.affine = affine;
            return this;
        }

        /**
         * PyTorch's {@code track_running_stats} (default true): false gives no running statistics
         * and no counter, and batch statistics in evaluation mode too.
         */
        public Builder trackRunningStats(boolean trackRunningStats) {
            this.trackRunningStats = trackRunningStats;
            return this;
        }

        /**
         * The activation fused after the normalisation (default {@link Activation#NONE}); with
         * {@link Activation#RELU} the backward takes the forward's output.
         *
         * @throws NullPointerException if null
         */
        public Builder activation(Activation activation) {
            this.activation = Objects.requireNonNull(activation,
                    "activation: expected an Activation, got null");
            return this;
        }

        /**
         * The threads a call may use, as {@link BatchNorm.Builder#parallelism} (default 1).
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
         * The executor for {@code parallelism > 1}, as {@link BatchNorm.Builder#executor}.
         *
         * @throws NullPointerException if null
         */
        public Builder executor(ExecutorService executor) {
            this.executor = Objects.requireNonNull(executor, "executor: expected an ExecutorService, got null");
            return this;
        }

        /**
         * A new layer in training mode, with PyTorch's initial state.
         *
         * @throws IllegalArgumentException if a momentum was given with
         *                                  {@link RunningStatistics#CUMULATIVE_AVERAGE}
         */
        public BatchNormLayer build() {
            if (runningStatistics == RunningStatistics.CUMULATIVE_AVERAGE && !Float.isNaN(momentum)) {
                throw new IllegalArgumentException("momentum: expected none with CUMULATIVE_AVERAGE"
                        + " (PyTorch's momentum=None), got " + momentum);
            }
            return new BatchNormLayer(this);
        }
    }
}
