package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/** Strided views' rejected arguments: strides below dense, extents, overlaps, unequal in place. */
class ViewValidationTest {

    static final TensorShape NCHW = TensorShape.nchw(3, 4, 2, 5);     // images of 40 floats
    static final TensorShape NHWC = TensorShape.nhwc(3, 4, 2, 5);     // 30 pixels of 4 floats

    private static void rejects(Class<? extends RuntimeException> type, Executable call, String... words) {
        Rejections.rejects(type, call, words);
    }

    @Test
    void stridesBelowDenseAreRejectedByBuild() {
        rejects(IllegalArgumentException.class, () -> BatchNorm.builder(NCHW).inputStride(39).build(),
                "inputStride:", "C * H * W = 40", "got 39");
        rejects(IllegalArgumentException.class, () -> BatchNorm.builder(NHWC).outputStride(3).build(),
                "outputStride:", "C = 4", "got 3");
        BatchNorm dense = BatchNorm.builder(NHWC).build();
        assertEquals(4, dense.inputStride());
        assertEquals(4, dense.outputStride());
    }

    @Test
    void aViewMustSpanExactlyItsBlocks() {
        BatchNorm bn = BatchNorm.builder(NCHW).inputStride(64).build();   // x: 2 * 64 + 40 floats
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment x = arena.allocate(4 * (2 * 64 + 40)), y = arena.allocate(4 * 120);
            MemorySegment m = arena.allocate(16), v = arena.allocate(16);
            bn.forwardTraining(x, null, null, y, m, v);                     // accepted
            rejects(IllegalArgumentException.class,
                    () -> bn.forwardTraining(arena.allocate(4 * 120), null, null, y, m, v),
                    "x:", "expected 672 bytes", "a view of 3 blocks of 40 floats, 64 floats apart", "got 480");
            rejects(IllegalArgumentException.class,
                    () -> bn.forwardTraining(x, null, null, arena.allocate(4 * 168), m, v), "y:", "expected 480 bytes");
        }
    }

    @Test
    void viewsOfDifferentStridesMustNotShareBytes() {
        BatchNorm bn = BatchNorm.builder(NHWC).inputStride(8).outputStride(6).build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buffer = arena.allocate(4 * 240);
            MemorySegment x = buffer.asSlice(0, 4 * (29 * 8 + 4));
            MemorySegment y = buffer.asSlice(16, 4 * (29 * 6 + 4));        // within x's range
            float[] before = Segments.toArray(buffer);
            MemorySegment m = arena.allocate(16), v = arena.allocate(16);
            rejects(IllegalArgumentException.class, () -> bn.forwardTraining(x, null, null, y, m, v),
                    "y:", "different strides", "in place only with equal strides");
            assertTrue(Arrays.equals(before, Segments.toArray(buffer)), "nothing written");
        }
    }

    @Test
    void viewsOfEqualStridesWhoseBlocksMeetAreRejected() {
        BatchNorm bn = BatchNorm.builder(NCHW).inputStride(80).outputStride(80).build();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buffer = arena.allocate(4 * 240);
            MemorySegment x = buffer.asSlice(0, 4 * 200), m = arena.allocate(16), v = arena.allocate(16);
            // Shifted by 40 floats: y's blocks fill x's gaps (accepted); by 39: they meet x's.
            bn.forwardTraining(x, null, null, buffer.asSlice(4 * 40, 4 * 200), m, v);
            rejects(IllegalArgumentException.class,
                    () -> bn.forwardTraining(x, null, null, buffer.asSlice(4 * 39, 4 * 200), m, v),
                    "y:", "disjoint from input x");
        }
    }
}
