package dev.vecnorm.peers;

import dev.vecnorm.Layout;
import dev.vecnorm.bench.NormProblem;
import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.bytedeco.javacpp.BoolPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.T_TensorTensorTensor_T;
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
 * PyTorch's CPU kernels of the norm family (through JavaCPP) on Java-owned memory, as its eager
 * mode runs them: {@code native_layer_norm}, {@code rms_norm}, {@code native_group_norm} (also
 * InstanceNorm, with one group per channel, which is what instance_norm computes) and their
 * backward ({@code native_layer_norm_backward}, {@code native_group_norm_backward}; RMSNorm's
 * backward is autograd's composition on CPU, not one kernel, and is not timed). NHWC problems use
 * channels_last strides. Outputs are allocated by PyTorch per call, as in eager mode.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class PyTorchNormBenchmark {

    @Param({"rms_norm/rows32_d4096"})
    public String problem;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private NormProblem p;
    private Tensor x, dy, w, b, mean, rstd;
    private long[] normalized;
    private BoolPointer mask;

    private static Tensor tensor(MemorySegment s, long[] dims, long[] strides) {
        return torch.from_blob(new Pointer(s.asByteBuffer()), dims, strides, new TensorOptions(torch.ScalarType.Float));
    }

    @Setup
    public void setUp() {
        torch.set_num_threads(threads);
        p = NormProblem.parse(problem);
        long e = p.elements();
        arena = Arena.ofShared();
        long[] dims, strides;
        long params;
        if (p.rowNorm()) {
            dims = new long[] {p.rows(), p.features()};
            strides = new long[] {p.features(), 1};
            params = p.features();
            normalized = new long[] {p.features()};
        } else {
            long[] d = p.dims();
            long c = d[1], h = d[2], wd = d[3];
            dims = d;
            strides = p.layout() == Layout.NCHW ? new long[] {c * h * wd, h * wd, wd, 1} : new long[] {h * wd * c, 1, wd * c, c};
            params = c;
        }
        x = tensor(Problem.random(arena, e, 1, 0.5f, 2f), dims, strides);
        dy = tensor(Problem.random(arena, e, 2, 0f, 1f), dims, strides);
        w = tensor(Problem.random(arena, params, 3, 1f, 0.5f), new long[] {params}, new long[] {1});
        b = tensor(Problem.random(arena, params, 4, 0f, 0.5f), new long[] {params}, new long[] {1});
        mask = new BoolPointer(3);
        for (int i = 0; i < 3; i++) {
            mask.put(i, true);
        }
        T_TensorTensorTensor_T out = statistics();
        if (out != null) {
            mean = out.get1();
            rstd = out.get2();
        }
    }

    private T_TensorTensorTensor_T statistics() {
        return switch (p.norm()) {
            case "layer_norm" -> torch.native_layer_norm(x, normalized, new TensorOptional(w), new TensorOptional(b), 1e-5);
            case "rms_norm" -> null;
            default -> torch.native_group_norm(x, new TensorOptional(w), new TensorOptional(b), p.dims()[0], p.dims()[1],
                    p.dims()[2] * p.dims()[3], p.groups(), 1e-5);
        };
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void forward() {
        try (PointerScope scope = new PointerScope()) {
            if (p.norm().equals("rms_norm")) {
                torch.rms_norm(x, normalized, new TensorOptional(w), new DoubleOptional(1e-6));
            } else {
                statistics();
            }
        }
    }

    @Benchmark
    public void backward() {
        try (PointerScope scope = new PointerScope()) {
            switch (p.norm()) {
                case "layer_norm" -> torch.native_layer_norm_backward(dy, x, normalized, mean, rstd, new TensorOptional(w),
                        new TensorOptional(b), mask);
                case "rms_norm" -> throw new UnsupportedOperationException("PyTorch has no CPU rms_norm backward kernel");
                default -> torch.native_group_norm_backward(dy, x, mean, rstd, new TensorOptional(w), p.dims()[0],
                        p.dims()[1], p.dims()[2] * p.dims()[3], p.groups(), mask);
            }
        }
    }
}
