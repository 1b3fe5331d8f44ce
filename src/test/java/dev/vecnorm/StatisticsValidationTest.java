package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * The split-statistics API's rejected arguments (message names the argument, what was expected,
 * what was given; nothing written first), and a hand example of Chan's merge.
 */
class StatisticsValidationTest {

    static final TensorShape SHAPE = TensorShape.nchw(4, 3, 2, 5);
    static final int E = (int) SHAPE.elements();
    static final float SENTINEL = Rejections.SENTINEL;

    Arena arena;
    BatchNorm bn;
    MemorySegment x, dy, y, mean, var, dx;

    @BeforeEach
    void setUp() {
        arena = Arena.ofConfined();
        bn = BatchNorm.builder(SHAPE).build();
        x = Segments.of(arena, TestData.gaussian(E, 1, 1));
        dy = Segments.of(arena, TestData.gaussian(E, 2, 1));
        y = sentinel(E);
        dx = sentinel(E);
        mean = sentinel(3);
        var = sentinel(3);
    }

    @AfterEach
    void tearDown() {
        arena.close();
    }

    private MemorySegment sentinel(int floats) {
        return Rejections.sentinel(arena, floats);
    }

    private void rejects(Class<? extends RuntimeException> type, Executable call, String... words) {
        Rejections.rejects(type, call, words);
        Rejections.assertUntouched(y, dx, mean, var);
    }

    @Test
    void accumulateRejectsRangesSizesAndChannels() {
        ChannelStatistics s = new ChannelStatistics(3);
        rejects(IllegalArgumentException.class, () -> s.accumulate(bn, x, 2, 1), "from, to:", "<= 4", "got 2, 1");
        rejects(IllegalArgumentException.class, () -> s.accumulate(bn, x, 0, 5), "from, to:", "got 0, 5");
        rejects(IllegalArgumentException.class, () -> s.accumulate(bn, x.asSlice(4)), "x:", "expected " + 4 * E);
        rejects(IllegalArgumentException.class, () -> new ChannelStatistics(2).accumulate(bn, x),
                "norm:", "2 channels", "got 3");
        rejects(NullPointerException.class, () -> s.accumulate(null, x), "norm:");
        rejects(NullPointerException.class, () -> s.accumulate(bn, null), "x:");
        rejects(IllegalArgumentException.class, () -> new GradientStatistics(3).accumulate(bn, x, dy, mean.asSlice(4)),
                "mean:", "got 8 bytes");
        assertEquals(0, s.count(), "a rejected accumulate merges nothing");
    }

    @Test
    void normalisingRejectsEmptyOrForeignStatistics() {
        ChannelStatistics empty = new ChannelStatistics(3);
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(empty, x, null, null, y, mean, var),
                "statistics:", "at least 2 values", "got 0");
        ChannelStatistics other = new ChannelStatistics(4);
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(other, x, null, null, y, mean, var),
                "statistics:", "3 channels", "got 4");
        rejects(NullPointerException.class, () -> bn.forwardTraining((ChannelStatistics) null, x, null, null, y, mean, var),
                "statistics:");
        ChannelStatistics s = new ChannelStatistics(3).accumulate(bn, x);
        rejects(IllegalArgumentException.class, () -> bn.forwardTraining(s, x, null, null, y.asSlice(4), mean, var), "y:");
        GradientStatistics none = new GradientStatistics(3);
        rejects(IllegalArgumentException.class, () -> bn.backward(none, x, dy, null, mean, var, dx, null, null),
                "sums:", "at least 2 values");
        BatchNorm relu = BatchNorm.builder(SHAPE).activation(Activation.RELU).build();
        GradientStatistics sums = new GradientStatistics(3).accumulate(bn, x, dy, Segments.of(arena, new float[3]));
        rejects(IllegalStateException.class, () -> relu.backward(sums, x, dy, null, mean, var, dx, null, null),
                "RELU");
    }

    @Test
    void readFromRejectsWrongSizesAndCounts() {
        MemorySegment bytes = arena.allocate(8 * ChannelStatistics.doubles(3));
        rejects(IllegalArgumentException.class, () -> ChannelStatistics.readFrom(bytes.asSlice(8), 3),
                "in:", "expected 56 bytes", "got 48");
        bytes.setAtIndex(ValueLayout.JAVA_DOUBLE_UNALIGNED, 0, 2.5);
        rejects(IllegalArgumentException.class, () -> ChannelStatistics.readFrom(bytes, 3), "in:", "whole number", "2.5");
        bytes.setAtIndex(ValueLayout.JAVA_DOUBLE_UNALIGNED, 0, -1);
        rejects(IllegalArgumentException.class, () -> GradientStatistics.readFrom(bytes, 3), "in:", "got -1.0");
        rejects(IllegalArgumentException.class, () -> new ChannelStatistics(3).writeTo(bytes.asReadOnly()), "out:", "read-only");
        rejects(IllegalArgumentException.class, () -> new ChannelStatistics(3).merge(new ChannelStatistics(2)),
                "other:", "3 channels", "got 2");
        rejects(IllegalArgumentException.class, () -> ChannelStatistics.merged(List.of()), "parts:", "none");
    }

    /**
     * Chan's merge by hand: {1, 3} (mean 2, M2 2) then {5, 7, 9} (mean 7, M2 8): delta = 5,
     * M2 = 2 + 8 + 25 * 2 * 3 / 5 = 40, mean = 2 + 5 * 3 / 5 = 5; the five values' variance is
     * 40 / 5 = 8. Every step is exact in double. An [N, C] tensor of one channel, two parts.
     */
    @Test
    void chanMergeOfAHandExample() {
        TensorShape shape = TensorShape.nc(5, 1);
        BatchNorm five = BatchNorm.builder(shape).build();
        MemorySegment v = Segments.of(arena, new float[] {1, 3, 5, 7, 9});
        ChannelStatistics a = new ChannelStatistics(1).accumulate(five, v, 0, 2);
        ChannelStatistics b = new ChannelStatistics(1).accumulate(five, v, 2, 5);
        assertEquals(2.0, a.mean(0));
        assertEquals(2.0, a.m2(0));
        assertEquals(8.0, b.m2(0));
        ChannelStatistics all = ChannelStatistics.merged(List.of(a, b));
        assertEquals(5, all.count());
        assertEquals(5.0, all.mean(0));
        assertEquals(40.0, all.m2(0));
        assertEquals(8.0, all.variance(0));
    }
}
