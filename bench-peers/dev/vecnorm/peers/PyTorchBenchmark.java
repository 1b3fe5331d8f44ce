package dev.vecnorm.peers;

import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.bytedeco.javacpp.BoolPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerScope;
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
 * libtorch's CPU batch norm (through JavaCPP) on tensors made with {@code from_blob} over
 * Java-owned off-heap memory, contiguous (NCHW) or channels-last strides. Forward writes into our
 * buffers ({@code native_batch_norm_out}); backward is {@code native_batch_norm_backward}, which
 * allocates its outputs as PyTorch itself does. {@code at::set_num_threads(threads)}.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class PyTorchBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"nchw", "channels_last"})
    public String format;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private Tensor x, y, dy, saveMean, saveInvstd;
    private TensorOptional weight, bias, runningMean, runningVar;
    private BoolPointer mask;

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
        forwardTraining();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void forwardTraining() {
        try (PointerScope scope = new PointerScope()) {
            torch.native_batch_norm_out(y, saveMean, saveInvstd, x, weight, bias, runningMean, runningVar,
                    true, 0.1, 1e-5);
        }
    }

    @Benchmark
    public void forwardInference() {
        try (PointerScope scope = new PointerScope()) {
            torch.native_batch_norm_out(y, saveMean, saveInvstd, x, weight, bias, runningMean, runningVar,
                    false, 0.1, 1e-5);
        }
    }

    @Benchmark
    public void backward() {
        try (PointerScope scope = new PointerScope()) {
            torch.native_batch_norm_backward(dy, x, weight, runningMean, runningVar,
                    new TensorOptional(saveMean), new TensorOptional(saveInvstd), true, 1e-5, mask);
        }
    }
}
