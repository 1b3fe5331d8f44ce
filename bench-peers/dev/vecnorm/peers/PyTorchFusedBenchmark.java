package dev.vecnorm.peers;

import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.bytedeco.javacpp.BoolPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptional;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.global.torch;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * PyTorch has no fused CPU BatchNorm + ReLU: what its eager mode runs for a ResNet block,
 * {@code batch_norm} then {@code relu_} (or {@code add_} then {@code relu_}), and for backward
 * {@code threshold_backward} (ReLU's) then {@code native_batch_norm_backward}; the residual's
 * gradient is that same threshold_backward output, so both backward variants are the same calls.
 * Tensors and threads as in {@link PyTorchBenchmark}.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class PyTorchFusedBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"nchw", "channels_last"})
    public String format;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private Tensor x, r, y, dy, saveMean, saveInvstd;
    private TensorOptional weight, bias, runningMean, runningVar;
    private BoolPointer mask;
    private Scalar zero;

    private static Tensor tensor(MemorySegment s, long[] dims, long[] strides) {
        return torch.from_blob(new Pointer(s.asByteBuffer()), dims, strides,
                new TensorOptions(torch.ScalarType.Float));
    }

    @Setup
    public void setUp() {
        torch.set_num_threads(threads);
        long[] d = Problem.dims(shape);
        long n = d[0], c = d[1], h = d[2], w = d[3], e = n * c * h * w;
        long[] strides = format.equals("nchw") ? new long[] {c * h * w, h * w, w, 1}
                : new long[] {h * w * c, 1, w * c, c};
        arena = Arena.ofShared();
        x = tensor(Problem.random(arena, e, 1, 0.5f, 2f), d, strides);
        r = tensor(Problem.random(arena, e, 6, 0f, 1f), d, strides);
        dy = tensor(Problem.random(arena, e, 2, 0f, 1f), d, strides);
        y = tensor(arena.allocate(4 * e, 64), d, strides);
        long[] vec = {c};
        long[] unit = {1};
        weight = new TensorOptional(tensor(Problem.random(arena, c, 3, 1f, 0.5f), vec, unit));
        bias = new TensorOptional(tensor(Problem.random(arena, c, 4, 0f, 0.5f), vec, unit));
        runningMean = new TensorOptional(tensor(arena.allocate(4 * c, 64), vec, unit));
        runningVar = new TensorOptional(tensor(Problem.random(arena, c, 5, 1f, 0.1f), vec, unit));
        saveMean = tensor(arena.allocate(4 * c, 64), vec, unit);
        saveInvstd = tensor(arena.allocate(4 * c, 64), vec, unit);
        mask = new BoolPointer(3);
        for (int i = 0; i < 3; i++) {
            mask.put(i, true);
        }
        zero = new Scalar(0.0);
        addReluTraining();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    private void batchNorm(boolean training) {
        torch.native_batch_norm_out(y, saveMean, saveInvstd, x, weight, bias, runningMean, runningVar,
                training, 0.1, 1e-5);
    }

    @Benchmark
    public void reluTraining() {
        try (PointerScope scope = new PointerScope()) {
            batchNorm(true);
            y.relu_();
        }
    }

    @Benchmark
    public void addReluTraining() {
        try (PointerScope scope = new PointerScope()) {
            batchNorm(true);
            y.add_(r).relu_();
        }
    }

    @Benchmark
    public void reluInference() {
        try (PointerScope scope = new PointerScope()) {
            batchNorm(false);
            y.relu_();
        }
    }

    @Benchmark
    public void addReluInference() {
        try (PointerScope scope = new PointerScope()) {
            batchNorm(false);
            y.add_(r).relu_();
        }
    }

    @Benchmark
    public void reluBackward() {
        backwardThroughRelu();
    }

    @Benchmark
    public void addReluBackward() {
        backwardThroughRelu();
    }

    private void backwardThroughRelu() {
        try (PointerScope scope = new PointerScope()) {
            Tensor g = torch.threshold_backward(dy, y, zero);
            torch.native_batch_norm_backward(g, x, weight, runningMean, runningVar,
                    new TensorOptional(saveMean), new TensorOptional(saveInvstd), true, 1e-5, mask);
        }
    }
}
