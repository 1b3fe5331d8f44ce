package dev.vecnorm;

import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.infra.BenchmarkParams;

/**
 * vecnorm's fused kernels (BatchNorm + ReLU, BatchNorm + add + ReLU, and their backward) against
 * vecnorm's plain kernels followed, or preceded, by a separate element-wise pass (a Vector API
 * loop over the whole tensor: y = relu(y), y = relu(y + r), g = y > 0 ? dy : 0): what fusing
 * saves. The vector kernels, the JVM's width. Each trial ends with a check that the fused and the
 * separate outputs agree.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class FusedBenchmark {

    /**
     * The fused benchmarks, in the report's order (each has a separate counterpart, {@code
     * kernel + "Separate"}; a workspace form shares its base kernel's).
     */
    public static final String[] KERNELS = {"reluTraining", "reluTrainingWorkspace", "addReluTraining",
        "addReluTrainingWorkspace", "reluInference", "addReluInference", "reluBackward",
        "reluBackwardWorkspace", "addReluBackward", "addReluBackwardWorkspace"};

    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"NCHW", "NHWC"})
    public Layout layout;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private BatchNorm plain, relu;
    private MemorySegment x, r, y, dy, dx, g, gamma, beta, mean, variance, dgamma, dbeta, ws;

    @Setup
    public void setUp(BenchmarkParams params) {
        TensorShape tensor = Problem.parse(shape, layout);
        long e = tensor.elements();
        int c = tensor.channels();
        arena = Arena.ofShared();
        x = Problem.random(arena, e, 1, 0.5f, 2f);
        r = Problem.random(arena, e, 6, 0f, 1f);
        dy = Problem.random(arena, e, 2, 0f, 1f);
        y = arena.allocate(4 * e, 64);
        dx = arena.allocate(4 * e, 64);
        g = arena.allocate(4 * e, 64);
        gamma = Problem.random(arena, c, 3, 1f, 0.5f);
        beta = Problem.random(arena, c, 4, 0f, 0.5f);
        mean = arena.allocate(4L * c, 64);
        variance = arena.allocate(4L * c, 64);
        dgamma = arena.allocate(4L * c, 64);
        dbeta = arena.allocate(4L * c, 64);
        plain = BatchNorm.builder(tensor).epsilon(1e-5f).parallelism(threads).build();
        relu = BatchNorm.builder(tensor).epsilon(1e-5f).parallelism(threads).activation(Activation.RELU).build();
        ws = arena.allocate(relu.workspaceBytes(), 64);
        relu.forwardTraining(x, r, gamma, beta, y, mean, variance);
        // The benchmarked kernel itself, past the interpreter and C1 as in BatchNormBenchmark: a
        // mix of its neighbours left C2 code whose branches for this one were never taken, and a
        // quick AVX2 run measured its first iterations at 10-200x the steady time.
        BatchNormBenchmark.warmUp(kernel(params.getBenchmark().substring(params.getBenchmark().lastIndexOf('.') + 1)));
        // y and the mask of the same forward, for both backward forms.
        relu.forwardTraining(x, r, gamma, beta, y, mean, variance, ws);
    }

    private Runnable kernel(String name) {
        return switch (name) {
            case "reluTraining" -> this::reluTraining;
            case "reluTrainingSeparate" -> this::reluTrainingSeparate;
            case "addReluTraining" -> this::addReluTraining;
            case "addReluTrainingSeparate" -> this::addReluTrainingSeparate;
            case "reluInference" -> this::reluInference;
            case "reluInferenceSeparate" -> this::reluInferenceSeparate;
            case "addReluInference" -> this::addReluInference;
            case "addReluInferenceSeparate" -> this::addReluInferenceSeparate;
            case "reluBackward" -> this::reluBackward;
            case "reluBackwardSeparate" -> this::reluBackwardSeparate;
            case "addReluBackward" -> this::addReluBackward;
            case "addReluBackwardSeparate" -> this::addReluBackwardSeparate;
            case "reluTrainingWorkspace" -> this::reluTrainingWorkspace;
            case "addReluTrainingWorkspace" -> this::addReluTrainingWorkspace;
            case "reluBackwardWorkspace" -> this::reluBackwardWorkspace;
            case "addReluBackwardWorkspace" -> this::addReluBackwardWorkspace;
            default -> throw new IllegalArgumentException("no warm-up for benchmark " + name);
        };
    }

    // ---- forward training

    @Benchmark
    public void reluTraining() {
        relu.forwardTraining(x, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void reluTrainingSeparate() {
        plain.forwardTraining(x, gamma, beta, y, mean, variance);
        reluPass(y, null);
    }

    @Benchmark
    public void addReluTraining() {
        relu.forwardTraining(x, r, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void addReluTrainingSeparate() {
        plain.forwardTraining(x, gamma, beta, y, mean, variance);
        reluPass(y, r);
    }

    // ---- forward inference

    @Benchmark
    public void reluInference() {
        relu.forwardInference(x, gamma, beta, mean, variance, y);
    }

    @Benchmark
    public void reluInferenceSeparate() {
        plain.forwardInference(x, gamma, beta, mean, variance, y);
        reluPass(y, null);
    }

    @Benchmark
    public void addReluInference() {
        relu.forwardInference(x, r, gamma, beta, mean, variance, y);
    }

    @Benchmark
    public void addReluInferenceSeparate() {
        plain.forwardInference(x, gamma, beta, mean, variance, y);
        reluPass(y, r);
    }

    // ---- backward (y holds the last forward's output: the mask)

    @Benchmark
    public void reluBackward() {
        relu.backward(x, dy, y, gamma, mean, variance, dx, null, dgamma, dbeta);
    }

    @Benchmark
    public void reluBackwardSeparate() {
        maskPass(dy, y, g);
        plain.backward(x, g, gamma, mean, variance, dx, dgamma, dbeta);
    }

    /** dresidual = g written as well: the residual branch's gradient. */
    @Benchmark
    public void addReluBackward() {
        relu.backward(x, dy, y, gamma, mean, variance, dx, g, dgamma, dbeta);
    }

    // ---- the mask workspace: the forward writes it, the backward reads it instead of y

    @Benchmark
    public void reluTrainingWorkspace() {
        relu.forwardTraining(x, null, gamma, beta, y, mean, variance, ws);
    }

    @Benchmark
    public void addReluTrainingWorkspace() {
        relu.forwardTraining(x, r, gamma, beta, y, mean, variance, ws);
    }

    @Benchmark
    public void reluBackwardWorkspace() {
        relu.backwardWithWorkspace(x, dy, ws, gamma, mean, variance, dx, null, dgamma, dbeta);
    }

    @Benchmark
    public void addReluBackwardWorkspace() {
        relu.backwardWithWorkspace(x, dy, ws, gamma, mean, variance, dx, g, dgamma, dbeta);
    }

    /** The separate mask pass writes g, which is dresidual; then the plain backward reads it. */
    @Benchmark
    public void addReluBackwardSeparate() {
        maskPass(dy, y, g);
        plain.backward(x, g, gamma, mean, variance, dx, dgamma, dbeta);
    }

    /** v = relu(v + r) (r null: relu(v)) in place: a separate pass as an unfused engine runs it. */
    private static void reluPass(MemorySegment v, MemorySegment r) {
        long bytes = v.byteSize(), step = 4L * S.length(), o = 0;
        for (; o <= bytes - step; o += step) {
            FloatVector a = FloatVector.fromMemorySegment(S, v, o, NATIVE);
            if (r != null) {
                a = a.add(FloatVector.fromMemorySegment(S, r, o, NATIVE));
            }
            a.blend(0f, a.compare(VectorOperators.LE, 0f)).intoMemorySegment(v, o, NATIVE);
        }
        for (; o < bytes; o += 4) {
            float a = v.get(ValueLayout.JAVA_FLOAT, o) + (r == null ? 0 : r.get(ValueLayout.JAVA_FLOAT, o));
            v.set(ValueLayout.JAVA_FLOAT, o, a <= 0 ? 0 : a);
        }
    }

    /** g = y <= 0 ? 0 : dy: ReLU's backward as a separate pass. */
    private static void maskPass(MemorySegment dy, MemorySegment y, MemorySegment g) {
        long bytes = dy.byteSize(), step = 4L * S.length(), o = 0;
        for (; o <= bytes - step; o += step) {
            FloatVector d = FloatVector.fromMemorySegment(S, dy, o, NATIVE);
            d.blend(0f, FloatVector.fromMemorySegment(S, y, o, NATIVE).compare(VectorOperators.LE, 0f))
                    .intoMemorySegment(g, o, NATIVE);
        }
        for (; o < bytes; o += 4) {
            g.set(ValueLayout.JAVA_FLOAT, o, y.get(ValueLayout.JAVA_FLOAT, o) <= 0 ? 0 : dy.get(ValueLayout.JAVA_FLOAT, o));
        }
    }

    /** The fused and the separate forward agree bit for bit (same rounding); so do the dx. */
    @TearDown
    public void check() {
        try {
            long e = x.byteSize() / 4;
            MemorySegment fused = arena.allocate(4 * e, 64), fdx = arena.allocate(4 * e, 64);
            relu.forwardTraining(x, r, gamma, beta, fused, mean, variance);
            plain.forwardTraining(x, gamma, beta, y, mean, variance);
            reluPass(y, r);
            if (fused.mismatch(y) >= 0) {
                throw new IllegalStateException("fused y differs from BatchNorm then add and ReLU at float "
                        + fused.mismatch(y) / 4);
            }
            relu.backward(x, dy, y, gamma, mean, variance, fdx, null, null, null);
            addReluBackwardSeparate();
            if (fdx.mismatch(dx) >= 0) {
                throw new IllegalStateException("fused dx differs from the mask then backward at float "
                        + fdx.mismatch(dx) / 4);
            }
            relu.forwardTraining(x, r, gamma, beta, fused, mean, variance, ws);
            relu.backwardWithWorkspace(x, dy, ws, gamma, mean, variance, fdx, null, null, null);
            if (fdx.mismatch(dx) >= 0) {
                throw new IllegalStateException("dx from the workspace differs from the mask then backward at float "
                        + fdx.mismatch(dx) / 4);
            }
        } finally {
            arena.close();
        }
    }
}
