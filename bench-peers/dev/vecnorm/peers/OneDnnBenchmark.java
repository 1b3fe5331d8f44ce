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
 * oneDNN's BatchNorm primitives (through JavaCPP) on Java-owned off-heap memory, in its three
 * layouts: nchw (a reference kernel in oneDNN), nhwc and nChw16c (its JIT kernels). Threads come
 * from OpenMP: the report's JVM sets OMP_NUM_THREADS to the thread count.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class OneDnnBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"nchw", "nhwc", "nChw16c"})
    public String format;

    private Arena arena;
    private engine eng;
    private stream strm;
    private batch_normalization_forward training, inference;
    private batch_normalization_backward backward;
    private IntMemoryMap trainingArgs, inferenceArgs, backwardArgs;

    private static memory wrap(memory.desc desc, engine eng, MemorySegment s) {
        return new memory(desc, eng, new Pointer(s.asByteBuffer()));
    }

    @Setup
    public void setUp() {
        long[] dims = Problem.dims(shape);
        long e = dims[0] * dims[1] * dims[2] * dims[3];
        int c = (int) dims[1];
        arena = Arena.ofShared();
        MemorySegment x = Problem.random(arena, e, 1, 0.5f, 2f), dy = Problem.random(arena, e, 2, 0f, 1f);
        MemorySegment y = arena.allocate(4 * e, 64), dx = arena.allocate(4 * e, 64);
        MemorySegment scale = Problem.random(arena, c, 3, 1f, 0.5f), shift = Problem.random(arena, c, 4, 0f, 0.5f);
        MemorySegment mean = arena.allocate(4L * c, 64), var = arena.allocate(4L * c, 64);
        MemorySegment dscale = arena.allocate(4L * c, 64), dshift = arena.allocate(4L * c, 64);
        eng = new engine(engine.kind.cpu, 0);
        strm = new stream(eng);
        memory.desc data = new memory.desc(dims, memory.data_type.f32, memory.format_tag.valueOf(format));
        memory.desc stat = new memory.desc(new long[] {c}, memory.data_type.f32, memory.format_tag.x);
        int flags = dnnl.normalization_flags.use_scale.value | dnnl.normalization_flags.use_shift.value;
        float eps = 1e-5f;
        batch_normalization_forward.primitive_desc trainPd = new batch_normalization_forward.primitive_desc(
                eng, dnnl.prop_kind.forward_training.value, data, data, eps, flags);
        training = new batch_normalization_forward(trainPd);
        inference = new batch_normalization_forward(new batch_normalization_forward.primitive_desc(eng,
                dnnl.prop_kind.forward_inference.value, data, data, eps,
                flags | dnnl.normalization_flags.use_global_stats.value));
        backward = new batch_normalization_backward(new batch_normalization_backward.primitive_desc(eng,
                dnnl.prop_kind.backward.value, data, data, data, eps, flags, trainPd, new primitive_attr(), false));
        memory xm = wrap(data, eng, x), ym = wrap(data, eng, y), dym = wrap(data, eng, dy), dxm = wrap(data, eng, dx);
        memory sm = wrap(stat, eng, scale), hm = wrap(stat, eng, shift), mm = wrap(stat, eng, mean);
        memory vm = wrap(stat, eng, var), dsm = wrap(stat, eng, dscale), dhm = wrap(stat, eng, dshift);
        trainingArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DST, ym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_SHIFT, hm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm);
        inferenceArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DST, ym).put(DNNL_ARG_SCALE, sm)
                .put(DNNL_ARG_SHIFT, hm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm);
        backwardArgs = new IntMemoryMap().put(DNNL_ARG_SRC, xm).put(DNNL_ARG_DIFF_DST, dym)
                .put(DNNL_ARG_SCALE, sm).put(DNNL_ARG_MEAN, mm).put(DNNL_ARG_VARIANCE, vm)
                .put(DNNL_ARG_DIFF_SRC, dxm).put(DNNL_ARG_DIFF_SCALE, dsm).put(DNNL_ARG_DIFF_SHIFT, dhm);
        forwardTraining();                           // statistics for inference and backward
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void forwardTraining() {
        training.execute(strm, trainingArgs);
        strm._wait();
    }

    @Benchmark
    public void forwardInference() {
        inference.execute(strm, inferenceArgs);
        strm._wait();
    }

    @Benchmark
    public void backward() {
        backward.execute(strm, backwardArgs);
        strm._wait();
    }
}
