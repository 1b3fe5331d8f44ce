package dev.vecnorm;

import dev.vecnorm.bench.Problem;
import dev.vecnorm.kernel.KernelProvider;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.TimeUnit;
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
 * vecnorm's kernels on one shape, layout, kernel choice and thread count. In package
 * {@code dev.vecnorm} only to pick the scalar kernels in a JVM that has the vector ones.
 * Every trial ends with a check of the outputs, so a broken kernel fails instead of being timed.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class BatchNormBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"NCHW", "NHWC"})
    public Layout layout;

    @Param({"vector", "scalar"})
    public String kernels;

    @Param({"1"})
    public int threads;

    static final float EPS = 1e-5f;

    private Arena arena;
    private BatchNorm bn;
    private TensorShape tensor;
    private MemorySegment x, y, dy, dx, gamma, beta, mean, variance, dgamma, dbeta, work, unitMean, unitVar;

    @Setup
    public void setUp(BenchmarkParams params) {
        tensor = Problem.parse(shape, layout);
        long e = tensor.elements();
        int c = tensor.channels();
        arena = Arena.ofShared();
        // Only the tensors this benchmark touches: each one costs a fork about 0.1 s of zeroing
        // and page faults on the large shapes, and the report runs some 150 forks.
        String name = params.getBenchmark().substring(params.getBenchmark().lastIndexOf('.') + 1);
        x = Problem.random(arena, e, 1, 0.5f, 2f);
        if (name.equals("backward")) {
            dy = Problem.random(arena, e, 2, 0f, 1f);
            dx = arena.allocate(4 * e, 64);
            y = dx;                                   // only for the statistics below
        } else if (name.equals("forwardInferenceInPlace")) {
            work = arena.allocate(4 * e, 64);
            MemorySegment.copy(x, 0, work, 0, 4 * e);
            y = work;                                 // only for the statistics below
        } else {
            y = arena.allocate(4 * e, 64);
        }
        gamma = Problem.random(arena, c, 3, 1f, 0.5f);
        beta = Problem.random(arena, c, 4, 0f, 0.5f);
        mean = arena.allocate(4L * c, 64);
        variance = arena.allocate(4L * c, 64);
        dgamma = arena.allocate(4L * c, 64);
        dbeta = arena.allocate(4L * c, 64);
        // Statistics that make inference the identity: mean 0, var + eps = 1, gamma 1, beta 0, so
        // the in-place benchmark can run again and again on the same data.
        unitMean = arena.allocate(4L * c, 64);
        unitVar = arena.allocate(4L * c, 64);
        for (int i = 0; i < c; i++) {
            unitVar.setAtIndex(ValueLayout.JAVA_FLOAT, i, 1f - EPS);
        }
        BatchNorm.Builder b = BatchNorm.builder(tensor).epsilon(EPS).parallelism(threads);
        switch (kernels) {
            case "scalar" -> b.kernels(KernelProvider.scalar());
            case "vector" -> {
                if (!BatchNorm.kernels().startsWith("vector")) {
                    throw new IllegalStateException("vector kernels asked for, JVM has " + BatchNorm.kernels());
                }
            }
            default -> throw new IllegalArgumentException("kernels: expected vector or scalar, got " + kernels);
        }
        bn = b.build();
        bn.forwardTraining(x, gamma, beta, y, mean, variance);
        if (work != null) {
            MemorySegment.copy(x, 0, work, 0, 4 * e);     // y was work
        }
        warmUp(name);
    }

    /**
     * Calls the benchmarked kernel before JMH's own warm-up. The vector kernels' first calls run
     * vector code in the interpreter and then in C1, allocating a box per vector operation (one
     * 50x128x28x28 NHWC backward took 0.58 s, the steady state 5-6 ms), and C2 takes a while:
     * with 3 calls and a quick run's 200 ms warm-up iteration, a 0.1 ms NCHW backward was still
     * allocating 0.2 MB a call in its first measured iteration, and one report measured it at 4x
     * its steady time. So the vector kernels get {@link #warmUp(Runnable)}. The scalar kernels,
     * compiled on stack during their first call, get one call (on the large shapes a call takes
     * 0.1-0.2 s).
     */
    private void warmUp(String name) {
        Runnable kernel = switch (name) {
            case "forwardTraining" -> this::forwardTraining;
            case "forwardInference" -> this::forwardInference;
            case "forwardInferenceInPlace" -> this::forwardInferenceInPlace;
            case "backward" -> this::backward;
            default -> null;
        };
        if (kernel == null) {
            return;
        }
        if (kernels.equals("scalar")) {
            kernel.run();
        } else {
            warmUp(kernel);
        }
    }

    /** Calls {@code kernel} at least 3 times, then until 20 000 calls or 1 s, whichever is first. */
    static void warmUp(Runnable kernel) {
        long start = System.nanoTime();
        for (int calls = 0; calls < 3 || (calls < 20_000 && System.nanoTime() - start < 1_000_000_000L);
             calls++) {
            kernel.run();
        }
    }

    @Benchmark
    public void forwardTraining() {
        bn.forwardTraining(x, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void forwardInference() {
        bn.forwardInference(x, gamma, beta, mean, variance, y);
    }

    /** y = x: no destination line to fetch before it is written. */
    @Benchmark
    public void forwardInferenceInPlace() {
        bn.forwardInference(work, null, null, unitMean, unitVar, work);
    }

    @Benchmark
    public void backward() {
        bn.backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta);
    }

    @TearDown
    public void check(BenchmarkParams params) {
        try {
            String name = params.getBenchmark();
            if (name.endsWith(".forwardTraining") || name.endsWith(".forwardInference")) {
                checkNormalized();
            } else if (name.endsWith(".forwardInferenceInPlace")) {
                checkIdentity();
            } else if (name.endsWith(".backward")) {
                checkGradients();
            }
        } finally {
            arena.close();
        }
    }

    private float at(MemorySegment s, int n, int c, long i) {
        long index = layout == Layout.NCHW
                ? ((long) n * tensor.channels() + c) * tensor.spatial() + i
                : ((long) n * tensor.spatial() + i) * tensor.channels() + c;
        return s.getAtIndex(ValueLayout.JAVA_FLOAT, index);
    }

    /** Output channels have mean beta and variance gamma^2 var / (var + eps), to 1e-3. */
    private void checkNormalized() {
        for (int c : new int[] {0, tensor.channels() - 1}) {
            double sum = 0, squares = 0, m = tensor.perChannel();
            for (int n = 0; n < tensor.batch(); n++) {
                for (long i = 0; i < tensor.spatial(); i++) {
                    double v = at(y, n, c, i);
                    sum += v;
                    squares += v * v;
                }
            }
            double mu = sum / m, var = squares / m - mu * mu;
            float g = gamma.getAtIndex(ValueLayout.JAVA_FLOAT, c), b = beta.getAtIndex(ValueLayout.JAVA_FLOAT, c);
            double v = variance.getAtIndex(ValueLayout.JAVA_FLOAT, c);
            double expectedVar = g * g * v / (v + EPS);
            if (Math.abs(mu - b) > 1e-3 * (Math.abs(g) + Math.abs(b)) || Math.abs(var - expectedVar) > 1e-3 * expectedVar) {
                throw new IllegalStateException("wrong output in channel " + c + ": mean " + mu + " (want " + b
                        + "), variance " + var + " (want " + expectedVar + ")");
            }
        }
    }

    private void checkIdentity() {
        for (long i = 0; i < tensor.elements(); i += 997) {
            float want = x.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            float got = work.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            if (Math.abs(got - want) > 1e-5f * (1 + Math.abs(want))) {
                throw new IllegalStateException("in-place inference changed element " + i + ": " + want + " -> " + got);
            }
        }
    }

    /** sum(dx) = 0 per channel (to 1e-3 of sum |dx|), dbeta = sum(dy) to 1e-4. */
    private void checkGradients() {
        int c = tensor.channels() / 2;
        double sumDx = 0, absDx = 0, sumDy = 0, absDy = 0;
        for (int n = 0; n < tensor.batch(); n++) {
            for (long i = 0; i < tensor.spatial(); i++) {
                sumDx += at(dx, n, c, i);
                absDx += Math.abs(at(dx, n, c, i));
                sumDy += at(dy, n, c, i);
                absDy += Math.abs(at(dy, n, c, i));
            }
        }
        double dbetaC = dbeta.getAtIndex(ValueLayout.JAVA_FLOAT, c);
        if (Math.abs(sumDx) > 1e-3 * absDx || Math.abs(dbetaC - sumDy) > 1e-4 * absDy) {
            throw new IllegalStateException("wrong gradients in channel " + c + ": sum(dx) " + sumDx
                    + ", dbeta " + dbetaC + " vs sum(dy) " + sumDy);
        }
    }
}
