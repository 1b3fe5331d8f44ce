package dev.vecnorm.bench;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
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

    private Arena arena;
    private MemorySegment x, y, dy;
    private long bytes;

    @Setup
    public void setUp() {
        TensorShape t = Problem.parse(shape, Layout.NCHW);
        arena = Arena.ofShared();
        x = Problem.random(arena, t.elements(), 1, 0.5f, 2f);
        dy = Problem.random(arena, t.elements(), 2, 0f, 1f);
        y = arena.allocate(4 * t.elements(), 64);
        bytes = 4 * t.elements();
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void copy() {
        MemorySegment.copy(x, 0, y, 0, bytes);
    }

    @Benchmark
    public void vectorCopy() {
        long step = S.vectorByteSize();
        long end = bytes - bytes % step;
        for (long o = 0; o < end; o += step) {
            FloatVector.fromMemorySegment(S, x, o, NATIVE).intoMemorySegment(y, o, NATIVE);
        }
        MemorySegment.copy(x, end, y, end, bytes - end);
    }

    @Benchmark
    public void vectorTriad() {
        long step = S.vectorByteSize();
        long end = bytes - bytes % step;
        for (long o = 0; o < end; o += step) {
            FloatVector.fromMemorySegment(S, x, o, NATIVE).add(FloatVector.fromMemorySegment(S, dy, o, NATIVE))
                    .intoMemorySegment(y, o, NATIVE);
        }
    }
}
