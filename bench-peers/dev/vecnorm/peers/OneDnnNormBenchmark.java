package dev.vecnorm.peers;

import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_DST;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SCALE;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SHIFT;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DIFF_SRC;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_DST;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_MEAN;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SCALE;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SHIFT;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_SRC;
import static org.bytedeco.dnnl.global.dnnl.DNNL_ARG_VARIANCE;

import dev.vecnorm.Layout;
import dev.vecnorm.bench.NormProblem;
import dev.vecnorm.bench.Problem;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.bytedeco.dnnl.IntMemoryMap;
import org.bytedeco.dnnl.engine;
import org.bytedeco.dnnl.global.dnnl;
import org.bytedeco.dnnl.group_normalization_backward;
import org.bytedeco.dnnl.group_normalization_forward;
import org.bytedeco.dnnl.layer_normalization_backward;
import org.bytedeco.dnnl.layer_normalization_forward;
import org.bytedeco.dnnl.memory;
import org.bytedeco.dnnl.primitive;
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
 * oneDNN's layer normalization (LayerNorm; RMSNorm with its {@code rms_norm} flag) and group
 * normalization (GroupNorm; InstanceNorm as one group per channel) primitives through JavaCPP, on
 * Java-owned memory, forward training (statistics written) and backward (data and scale/shift
 * gradients). Threads from OpenMP, as in {@link OneDnnBenchmark}.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class OneDnnNormBenchmark {

    @Param({"rms_norm/rows32_d4096"})
    public String problem;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private engine eng;
    private stream strm;
    private primitive forward, backward;
    private IntMemoryMap forwardArgs, backwardArgs;

    private static memory wrap(memory.desc desc, engine eng, MemorySegment s) {
        return new memory(desc, eng, new Pointer(s.asByteBuffer()));
    }

    @Setup
    public void setUp() {
        NormProblem p = NormProblem.parse(problem);
        long e = p.elements();
        arena = Arena.ofShared();
        eng = new engine(engine.kind.cpu, 0);
        strm = new stream(eng);
        long params = p.rowNorm() ? p.features() : p.dims()[1];
        long stats = p.rowNorm() ? p.rows() : p.dims()[0] * p.groups();
        float eps = p.norm().equals("rms_norm") ? 1e-6f : 1e-5f;
        int flags = dnnl.normalization_flags.use_scale.value
                | (p.norm().equals("rms_norm") ? dnnl.normalization_flags.rms_norm.value : dnnl.normalization_flags.use_shift.value);
        memory.desc data, stat;
        if (p.rowNorm()) {
            data = new memory.desc(new long[] {p.rows(), p.features()}, memory.data_type.f32, memory.format_tag.ab);
            stat = new memory.desc(new long[] {p.rows()}, memory.data_type.f32, memory.format_tag.a);
        } else {
            data = new memory.desc(p.dims(), memory.data_type.f32,
                    p.layout() == Layout.NCHW ? memory.format_tag.nchw : memory.format_tag.nhwc);
            stat = new memory.desc(new long[] {p.dims()[0], p.groups()}, memory.data_type.f32, memory.format_tag.ab);
        }
        memory.desc param = new memory.desc(new long[] {params}, memory.data_type.f32, memory.format_tag.a);
        MemorySegment x = Problem.random(arena, e, 1, 0.5f, 2f), dy = Problem.random(arena, e, 2, 0f, 1f);
        MemorySegment y = arena.allocate(4 * e, 64), dx = arena.allocate(4 * e, 64);
        memory xm = wrap(data, eng, x), ym = wrap(data, eng, y), dym = wrap(data, eng, dy), dxm = wrap(data, eng, dx);
        memory sm = wrap(param, eng, Problem.random(arena, params, 3, 1f, 0.5f));
        memory hm = wrap(param, eng, Problem.random(arena, params, 4, 0f, 0.5f));
        memory dsm = wrap(param, eng, arena.allocate(4 * params, 64)), dhm = wrap(param, eng, arena.allocate(4 * params, 64));
        memory mm = wrap(stat, eng, arena.allocate(4 * stats, 64)), vm = wrap(stat, eng, arena.allocate(4 * stats, 64));
        int training = dnnl.prop_kind.forward_training.value, back = dnnl.prop_kind.backward.value;
        if (p.rowNorm()) {
            var fpd = new layer_normalization_forward.primitive_desc(eng, training, data, data, stat, eps, flags);
            forward = new layer_normalization_forward(fpd);
            backward = new layer_normalization_backward(new layer_normalization_backward.primitive_desc(eng, back, data, data,
                    data, stat, eps, flags, fpd));
        } else {
            var fpd = new group_normalization_forward.primitive_desc(eng, training, data, data, p.groups(), eps, flags);
            forward = new group_normalization_forward(fpd);
            backward = new group_normalization_backward(new group_normalization_backward.primitive_desc(eng, back, data,
                    data, data, p.groups(), eps, flags, fpd));
        }
        forwardArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DST, ym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm);
        backwardArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DIFF_DST, dym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm).put(DNNL_ARG_DIFF_SRC, dxm).put(DNNL_ARG_DIFF_SCALE, dsm);
        if (!p.norm().equals("rms_norm")) {
            forwardArgs.put(DNNL_ARG_SHIFT, hm);
            backwardArgs.put(DNNL_ARG_DIFF_SHIFT, dhm);
        }
        forward();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void forward() {
        forward.execute(strm, forwardArgs);
        strm._wait();
    }

    @Benchmark
    public void backward() {
        backward.execute(strm, backwardArgs);
        strm._wait();
    }
}
