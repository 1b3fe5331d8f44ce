package dev.vecnorm.bench;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import jdk.incubator.vector.FloatVector;
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

/**
 * The ceilings each kernel is reported against, on the same bytes:
 * {@code copy} ({@code MemorySegment.copy}: the machine's limit, large copies use streaming stores),
 * {@code vectorCopy} (a Vector API load/store loop: the limit for ordinary stores, which read each
 * destination line first) and {@code vectorTriad} (dx = x + dy: backward's 12 bytes per element).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class CeilingBenchmark {

    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    /** Threads that share the loop: contiguous parts, the caller runs the first. */
    @Param({"1"})
    public int threads;

    private Arena arena;
    private MemorySegment x, y, dy;
    private long bytes;
    private ExecutorService pool;

    @Setup
    public void setUp() {
        TensorShape t = Problem.parse(shape, Layout.NCHW);
        arena = Arena.ofShared();
        x = Problem.random(arena, t.elements(), 1, 0.5f, 2f);
        dy = Problem.random(arena, t.elements(), 2, 0f, 1f);
        y = arena.allocate(4 * t.elements(), 64);
        bytes = 4 * t.elements();
        pool = threads > 1 ? Executors.newFixedThreadPool(threads - 1) : null;
    }

    @TearDown
    public void tearDown() {
        if (pool != null) {
            pool.shutdownNow();
        }
        arena.close();
    }

    private interface Part {
        void run(long from, long to);
    }

    /** Splits [0, bytes) into 'threads' parts aligned to 64 bytes and waits for all. */
    private void split(Part part) {
        if (pool == null) {
            part.run(0, bytes);
            return;
        }
        List<Future<?>> futures = new ArrayList<>();
        for (int i = 1; i < threads; i++) {
            long from = bytes * i / threads / 64 * 64;
            long to = i + 1 == threads ? bytes : bytes * (i + 1) / threads / 64 * 64;
            futures.add(pool.submit(() -> part.run(from, to)));
        }
        part.run(0, bytes / threads / 64 * 64);
        try {
            for (Future<?> f : futures) {
                f.get();
            }
        } catch (InterruptedException | ExecutionException e) {
            throw new IllegalStateException(e);
        }
    }

    @Benchmark
    public void copy() {
        split((from, to) -> MemorySegment.copy(x, from, y, from, to - from));
    }

    @Benchmark
    public void vectorCopy() {
        split((from, to) -> vectorCopy(x, y, from, to));
    }

    /** The vector copy loop over bytes [from, to) of x into y (NormBenchmark's ceiling too). */
    public static void vectorCopy(MemorySegment x, MemorySegment y, long from, long to) {
        long step = S.vectorByteSize();
        long end = to - (to - from) % step;
        for (long o = from; o < end; o += step) {
            FloatVector.fromMemorySegment(S, x, o, NATIVE).intoMemorySegment(y, o, NATIVE);
        }
        MemorySegment.copy(x, end, y, end, to - end);
    }

    @Benchmark
    public void vectorTriad() {
        split((from, to) -> {
            long step = S.vectorByteSize();
            long end = to - (to - from) % step;
            for (long o = from; o < end; o += step) {
                FloatVector.fromMemorySegment(S, x, o, NATIVE).add(FloatVector.fromMemorySegment(S, dy, o, NATIVE))
                        .intoMemorySegment(y, o, NATIVE);
            }
            for (long o = end; o < to; o += 4) {
                y.set(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, o,
                        x.get(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, o)
                        + dy.get(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, o));
            }
        });
    }
}
