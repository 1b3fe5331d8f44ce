package dev.vecnorm.peers;

import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_DST;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SCALE;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SHIFT;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SRC;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SRC_1;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DST;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_MEAN;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SCALE;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SHIFT;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SRC;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SRC_1;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_VARIANCE;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_WORKSPACE;

import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.bytedeco.dnnl.IntMemoryMap;
import org.bytedeco.dnnl.batch_normalization_backward;
import org.bytedeco.dnnl.batch_normalization_forward;
import org.bytedeco.dnnl.engine;
import org.bytedeco.dnnl.global.dnnl;
import org.bytedeco.dnnl.memory;
import org.bytedeco.dnnl.primitive_attr;
import org.bytedeco.dnnl.stream;
import org.bytedeco.javacpp.Pointer;
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
 * oneDNN's fused BatchNorm: {@code fuse_norm_relu} (y = relu(bn(x))) and
 * {@code fuse_norm_add_relu} (y = relu(bn(x) + src_1)), forward training and inference and their
 * backward, on Java-owned memory as {@link OneDnnBenchmark}. Training with a fused ReLU writes a
 * workspace (the ReLU's mask) that backward reads; the add variant's backward also writes
 * diff_src_1, the residual's gradient.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class OneDnnFusedBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"nchw", "nhwc", "nChw16c"})
    public String format;

    private Arena arena;
    private stream strm;
    private final Fused relu = new Fused(), addRelu = new Fused();

    /** The three primitives of one fusion and their arguments. */
    private static final class Fused {
        batch_normalization_forward training, inference;
        batch_normalization_backward backward;
        IntMemoryMap trainingArgs, inferenceArgs, backwardArgs;
    }

    private static memory wrap(memory.desc desc, engine eng, MemorySegment s) {
        return new memory(desc, eng, new Pointer(s.asByteBuffer()));
    }

    @Setup
    public void setUp() {
        long[] dims = Problem.dims(shape);
        long e = dims[0] * dims[1] * dims[2] * dims[3];
        int c = (int) dims[1];
        arena = Arena.ofShared();
        engine eng = new engine(engine.kind.cpu, 0);
        strm = new stream(eng);
        memory.desc data = new memory.desc(dims, memory.data_type.f32, memory.format_tag.valueOf(format));
        memory.desc stat = new memory.desc(new long[] {c}, memory.data_type.f32, memory.format_tag.x);
        memory xm = wrap(data, eng, Problem.random(arena, e, 1, 0.5f, 2f));
        memory rm = wrap(data, eng, Problem.random(arena, e, 6, 0f, 1f));
        memory ym = wrap(data, eng, arena.allocate(4 * e, 64));
        memory dym = wrap(data, eng, Problem.random(arena, e, 2, 0f, 1f));
        memory dxm = wrap(data, eng, arena.allocate(4 * e, 64));
        memory drm = wrap(data, eng, arena.allocate(4 * e, 64));
        memory sm = wrap(stat, eng, Problem.random(arena, c, 3, 1f, 0.5f));
        memory hm = wrap(stat, eng, Problem.random(arena, c, 4, 0f, 0.5f));
        memory mm = wrap(stat, eng, arena.allocate(4L * c, 64)), vm = wrap(stat, eng, arena.allocate(4L * c, 64));
        memory dsm = wrap(stat, eng, arena.allocate(4L * c, 64)), dhm = wrap(stat, eng, arena.allocate(4L * c, 64));
        int affine = dnnl.normalization_flags.use_scale.value | dnnl.normalization_flags.use_shift.value;
        float eps = 1e-5f;
        for (boolean add : new boolean[] {false, true}) {
            Fused f = add ? addRelu : relu;
            try {
                build(f, add, eng, data, flagsOf(add, affine), eps, xm, rm, ym, dym, dxm, drm, sm, hm, mm, vm, dsm, dhm);
            } catch (RuntimeException failure) {
                // oneDNN 3.11 rejects f32 fuse_norm_add_relu here ("sum+relu post-ops
                // configuration is not supported"); the ReLU fusion still runs.
                if (!add) {
                    throw failure;
                }
                addReluUnsupported = failure.getMessage();
            }
        }
    }

    private String addReluUnsupported;

    private static int flagsOf(boolean add, int affine) {
        return affine | (add ? dnnl.normalization_flags.fuse_norm_add_relu.value
                : dnnl.normalization_flags.fuse_norm_relu.value);
    }

    private void build(Fused f, boolean add, engine eng, memory.desc data, int flags, float eps,
                       memory xm, memory rm, memory ym, memory dym, memory dxm, memory drm,
                       memory sm, memory hm, memory mm, memory vm, memory dsm, memory dhm) {
        batch_normalization_forward.primitive_desc trainPd = new batch_normalization_forward.primitive_desc(
                eng, dnnl.prop_kind.forward_training.value, data, data, eps, flags);
        f.training = new batch_normalization_forward(trainPd);
        f.inference = new batch_normalization_forward(new batch_normalization_forward.primitive_desc(eng,
                dnnl.prop_kind.forward_inference.value, data, data, eps,
                flags | dnnl.normalization_flags.use_global_stats.value));
        f.backward = new batch_normalization_backward(new batch_normalization_backward.primitive_desc(eng,
                dnnl.prop_kind.backward.value, data, data, data, eps, flags, trainPd, new primitive_attr(), false));
        memory ws = new memory(trainPd.workspace_desc(), eng);
        f.trainingArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DST, ym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_SHIFT, hm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm)
                .put(DNNL_ARG_WORKSPACE, ws);
        f.inferenceArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DST, ym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_SHIFT, hm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm);
        f.backwardArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DIFF_DST, dym)
                .put(DNNL_ARG_SCALE, sm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm)
                .put(DNNL_ARG_WORKSPACE, ws).put(DNNL_ARG_DIFF_SRC, dxm).put(DNNL_ARG_DIFF_SCALE, dsm)
                .put(DNNL_ARG_DIFF_SHIFT, dhm);
        if (add) {
            f.trainingArgs.put(DNNL_ARG_SRC_1, rm);
            f.inferenceArgs.put(DNNL_ARG_SRC_1, rm);
            f.backwardArgs.put(DNNL_ARG_DIFF_SRC_1, drm);
        }
        run(f.training, f.trainingArgs);         // statistics and workspace for the others
    }

    private void run(org.bytedeco.dnnl.primitive p, IntMemoryMap args) {
        p.execute(strm, args);
        strm._wait();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void reluTraining() {
        run(relu.training, relu.trainingArgs);
    }

    private void requireAddRelu() {
        if (addReluUnsupported != null) {
            throw new UnsupportedOperationException("oneDNN fuse_norm_add_relu: " + addReluUnsupported);
        }
    }

    @Benchmark
    public void addReluTraining() {
        requireAddRelu();
        run(addRelu.training, addRelu.trainingArgs);
    }

    @Benchmark
    public void reluInference() {
        run(relu.inference, relu.inferenceArgs);
    }

    @Benchmark
    public void addReluInference() {
        requireAddRelu();
        run(addRelu.inference, addRelu.inferenceArgs);
    }

    @Benchmark
    public void reluBackward() {
        run(relu.backward, relu.backwardArgs);
    }

    @Benchmark
    public void addReluBackward() {
        requireAddRelu();
        run(addRelu.backward, addRelu.backwardArgs);
    }
}
