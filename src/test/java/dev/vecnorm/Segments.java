package dev.vecnorm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** Test helpers: float arrays in and out of segments. */
final class Segments {

    private Segments() {
    }

    /** A 64-byte aligned native segment holding a copy of {@code values}. */
    static MemorySegment of(Arena arena, float[] values) {
        MemorySegment s = arena.allocate((long) values.length * Float.BYTES, 64);
        MemorySegment.copy(values, 0, s, ValueLayout.JAVA_FLOAT, 0, values.length);
        return s;
    }

    /** A zeroed, 64-byte aligned native segment of {@code floats} floats. */
    static MemorySegment zeros(Arena arena, long floats) {
        return arena.allocate(floats * Float.BYTES, 64);
    }

    static float[] toArray(MemorySegment s) {
        return s.toArray(ValueLayout.JAVA_FLOAT_UNALIGNED);
    }
}
