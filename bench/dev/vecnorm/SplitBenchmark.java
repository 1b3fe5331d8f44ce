package dev.vecnorm;

import dev.vecnorm.bench.Problem;
import dev.vecnorm.kernel.CacheSizes;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
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
 * Split statistics and strided views (one thread, the JVM's kernels).
 * <ul>
 *   <li>A producer writes x tile by tile (here a copy from a source tensor, the stand-in for a
 *       convolution's output), a tile being the images (NCHW) or rows (NHWC) that fill half the
 *       L2, at least one. {@code produce} is that alone; {@code produceThenTraining} is it
 *       followed by today's forwardTraining (x read twice more: statistics, transform);
 *       {@code produceAccumulateTraining} accumulates each tile's statistics right after it is
 *       written, while it is in cache, and then normalises with them (x read once more);
 *       {@code produceThenInference} is the one-read target.</li>
 *   <li>{@code training}/{@code backward} on dense tensors and {@code viewTraining}/
 *       {@code viewBackward} on channel slices of tensors with twice the channels (strided
 *       views): the same work, the target within 5 %.</li>
 * </ul>
 * Each fork warms up only the call it measures: warmed beside the views, the dense kernels'
 * profiles were the views' too, and dense training came out slower than the view.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class SplitBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"NCHW", "NHWC"})
    public Layout layout;

    /**
     * The views' stride: "2x", a channel slice [0, C) of a tensor of 2C channels; "+16", 16
     * floats of padding per image (NCHW) or pixel (NHWC).
     */
    @Param({"2x"})
    public String view;

    private Arena arena;
    private BatchNorm bn, views;
    private ChannelStatistics stats;
    private MemorySegment source, x, y, dy, dx, gamma, beta, mean, variance, dgamma, dbeta;
    private MemorySegment xv, yv, dyv, dxv;
    private long units, perTile, tileBytes;

    @Setup
    public void setUp(BenchmarkParams params) {
        TensorShape t = Problem.parse(shape, layout);
        long e = t.elements();
        int c = t.channels();
        arena = Arena.ofShared();
        source = Problem.random(arena, e, 1, 0.5f, 2f);
        x = arena.allocate(4 * e, 64);
        x.copyFrom(source);
        y = arena.allocate(4 * e, 64);
        dy = Problem.random(arena, e, 2, 0f, 1f);
        dx = arena.allocate(4 * e, 64);
        gamma = Problem.random(arena, c, 3, 1f, 0.5f);
        beta = Problem.random(arena, c, 4, 0f, 0.5f);
        mean = arena.allocate(4L * c, 64);
        variance = arena.allocate(4L * c, 64);
        dgamma = arena.allocate(4L * c, 64);
        dbeta = arena.allocate(4L * c, 64);
        bn = BatchNorm.builder(t).build();
        stats = new ChannelStatistics(c);
        units = bn.statisticsChunks()[bn.statisticsChunks().length - 1];
        long unitBytes = 4 * e / units;
        perTile = Math.max(1, CacheSizes.machine().l2() / 2 / unitBytes);
        perTile = units / Math.ceilDiv(units, perTile);        // equal tiles ...
        while (units % perTile != 0) {                          // ... that divide the tensor
            perTile--;
        }
        tileBytes = perTile * unitBytes;
        long unitFloats = layout == Layout.NCHW ? e / t.batch() : c;
        long stride = this.view.equals("2x") ? 2 * unitFloats : unitFloats + 16;
        long floats = (units - 1) * stride + unitFloats;
        views = BatchNorm.builder(t).inputStride(stride).outputStride(stride).build();
        xv = Problem.random(arena, floats, 1, 0.5f, 2f);
        dyv = Problem.random(arena, floats, 2, 0f, 1f);
        yv = arena.allocate(4 * floats, 64);
        dxv = arena.allocate(4 * floats, 64);
        bn.forwardTraining(x, gamma, beta, y, mean, variance);
        String name = params.getBenchmark().substring(params.getBenchmark().lastIndexOf('.') + 1);
        BatchNormBenchmark.warmUp(switch (name) {
            case "produce" -> this::produce;
            case "produceThenTraining" -> this::produceThenTraining;
            case "produceAccumulateTraining" -> this::produceAccumulateTraining;
            case "produceThenInference" -> this::produceThenInference;
            case "training" -> this::training;
            case "viewTraining" -> this::viewTraining;
            case "backward" -> this::backward;
            default -> this::viewBackward;
        });
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    /** The producer alone: x written tile by tile. */
    @Benchmark
    public void produce() {
        for (long i = 0, tiles = units / perTile; i < tiles; i++) {
            MemorySegment.copy(source, i * tileBytes, x, i * tileBytes, tileBytes);
        }
    }

    @Benchmark
    public void produceThenTraining() {
        produce();
        bn.forwardTraining(x, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void produceAccumulateTraining() {
        ChannelStatistics s = new ChannelStatistics(stats.channels());
        for (long i = 0, tiles = units / perTile; i < tiles; i++) {
            MemorySegment.copy(source, i * tileBytes, x, i * tileBytes, tileBytes);
            s.accumulate(bn, x, i * perTile, (i + 1) * perTile);
        }
        bn.forwardTraining(s, x, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void produceThenInference() {
        produce();
        bn.forwardInference(x, gamma, beta, mean, variance, y);
    }

    @Benchmark
    public void training() {
        bn.forwardTraining(x, gamma, beta, y, mean, variance);
    }

    @Benchmark
    public void viewTraining() {
        views.forwardTraining(xv, gamma, beta, yv, mean, variance);
    }

    @Benchmark
    public void backward() {
        bn.backward(x, dy, gamma, mean, variance, dx, dgamma, dbeta);
    }

    @Benchmark
    public void viewBackward() {
        views.backward(xv, dyv, gamma, mean, variance, dxv, dgamma, dbeta);
    }
}
