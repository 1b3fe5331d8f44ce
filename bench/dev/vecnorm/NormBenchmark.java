package dev.vecnorm;

import dev.vecnorm.bench.CeilingBenchmark;
import dev.vecnorm.bench.NormProblem;
import dev.vecnorm.bench.Problem;
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

/**
 * The norm family: vecnorm's forward (with its statistics written) and backward (with dweight and
 * dbias) of one {@link NormProblem}, the copy ceilings on the same bytes, and, for the row norms,
 * {@link #engineLoops}: the plain scalar loops JVM inference engines run today (llama3.java's and
 * Jlama's row-wise RMSNorm and LayerNorm: float sums, one pass per quantity), reimplemented here as
 * the baseline a Java engine would replace.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class NormBenchmark {

    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT;

    @Param({"rms_norm/rows32_d4096"})
    public String problem;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private NormProblem p;
    private MemorySegment x, dy, y, dx, w, b, dw, db, mean, rstd;
    private LayerNorm layer;
    private RMSNorm rms;
    private GroupNorm group;
    private InstanceNorm instance;

    @Setup
    public void setUp() {
        p = NormProblem.parse(problem);
        long e = p.elements();
        int params = p.rowNorm() ? p.features() : Math.toIntExact(p.dims()[1]);
        long stats = p.rowNorm() ? p.rows() : p.dims()[0] * p.groups();
        arena = Arena.ofShared();
        x = Problem.random(arena, e, 1, 0.5f, 2f);
        dy = Problem.random(arena, e, 2, 0f, 1f);
        y = arena.allocate(4 * e, 64);
        dx = arena.allocate(4 * e, 64);
        w = Problem.random(arena, params, 3, 1f, 0.5f);
        b = Problem.random(arena, params, 4, 0f, 0.5f);
        dw = arena.allocate(4L * params, 64);
        db = arena.allocate(4L * params, 64);
        mean = arena.allocate(4 * stats, 64);
        rstd = arena.allocate(4 * stats, 64);
        switch (p.norm()) {
            case "layer_norm" -> layer = LayerNorm.builder(p.rows(), p.features()).parallelism(threads).build();
            case "rms_norm" -> rms = RMSNorm.builder(p.rows(), p.features()).epsilon(1e-6f).parallelism(threads).build();
            case "group_norm" -> group = GroupNorm.builder(p.shape(), p.groups()).parallelism(threads).build();
            default -> instance = InstanceNorm.builder(p.shape()).parallelism(threads).build();
        }
        BatchNormBenchmark.warmUp(() -> {          // past the interpreter and C1, as BatchNormBenchmark
            forward();
            backward();
        });
        forward();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void forward() {
        if (layer != null) {
            layer.forward(x, w, b, y, mean, rstd);
        } else if (rms != null) {
            rms.forward(x, w, y, rstd);
        } else if (group != null) {
            group.forward(x, w, b, y, mean, rstd);
        } else {
            instance.forward(x, w, b, y, mean, rstd);
        }
    }

    @Benchmark
    public void backward() {
        if (layer != null) {
            layer.backward(x, dy, w, mean, rstd, dx, dw, db);
        } else if (rms != null) {
            rms.backward(x, dy, w, rstd, dx, dw);
        } else if (group != null) {
            group.backward(x, dy, w, mean, rstd, dx, dw, db);
        } else {
            instance.backward(x, dy, w, mean, rstd, dx, dw, db);
        }
    }

    /** The forward of JVM engines today, row by row, one thread: rows only (the report runs it for those). */
    @Benchmark
    public void engineLoops() {
        if (!p.rowNorm()) {
            throw new UnsupportedOperationException("engineLoops: row norms only, got " + problem);
        }
        int n = p.features();
        for (long r = 0; r < p.rows(); r++) {
            long base = r * n;
            if (rms != null) {                     // llama3.java's rmsnorm
                float ss = 0f;
                for (int i = 0; i < n; i++) {
                    float v = x.getAtIndex(F32, base + i);
                    ss += v * v;
                }
                ss /= n;
                ss += 1e-6f;
                ss = (float) (1.0 / Math.sqrt(ss));
                for (int i = 0; i < n; i++) {
                    y.setAtIndex(F32, base + i, w.getAtIndex(F32, i) * (ss * x.getAtIndex(F32, base + i)));
                }
            } else {                               // Jlama's layerNorm: mean, variance, normalise
                float sum = 0f;
                for (int i = 0; i < n; i++) {
                    sum += x.getAtIndex(F32, base + i);
                }
                float m = sum / n, var = 0f;
                for (int i = 0; i < n; i++) {
                    float d = x.getAtIndex(F32, base + i) - m;
                    var += d * d;
                }
                float inv = (float) (1.0 / Math.sqrt(var / n + 1e-5f));
                for (int i = 0; i < n; i++) {
                    y.setAtIndex(F32, base + i, (x.getAtIndex(F32, base + i) - m) * inv * w.getAtIndex(F32, i)
                            + b.getAtIndex(F32, i));
                }
            }
        }
    }

    /** {@code MemorySegment.copy} of x into y: the machine's copy speed on these bytes. */
    @Benchmark
    public void copy() {
        MemorySegment.copy(x, 0, y, 0, x.byteSize());
    }

    /** A Vector API load/store loop over x into y: the ceiling for ordinary stores. */
    @Benchmark
    public void vectorCopy() {
        CeilingBenchmark.vectorCopy(x, y, 0, x.byteSize());
    }
}
