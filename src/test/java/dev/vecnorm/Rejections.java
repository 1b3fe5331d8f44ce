package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.function.Executable;

/**
 * The validation tests' shared checks: a call is rejected with an exception of the given type
 * whose message holds each given word (the argument's name, what was expected, what was given),
 * and outputs filled with a sentinel beforehand still hold it (nothing written before the throw).
 */
final class Rejections {

    /** Not a value any kernel computes from the tests' inputs. */
    static final float SENTINEL = -12345f;

    private Rejections() {
    }

    /** A native segment of {@code floats} floats, each {@link #SENTINEL}. */
    static MemorySegment sentinel(Arena arena, long floats) {
        MemorySegment s = Segments.zeros(arena, floats);
        for (long i = 0; i < floats; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, SENTINEL);
        }
        return s;
    }

    /** The call throws {@code type} with every word in its message; returns the exception. */
    static RuntimeException rejects(Class<? extends RuntimeException> type, Executable call, String... words) {
        RuntimeException e = assertThrows(type, call);
        for (String w : words) {
            assertTrue(e.getMessage().contains(w), "message '" + e.getMessage() + "' lacks '" + w + "'");
        }
        return e;
    }

    /** Every float of every output is still {@link #SENTINEL}. */
    static void assertUntouched(MemorySegment... outputs) {
        for (MemorySegment s : outputs) {
            for (long i = 0; i < s.byteSize() / Float.BYTES; i++) {
                assertEquals(SENTINEL, s.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i),
                        "an output was written before the exception");
            }
        }
    }
}
