package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Optional;

/**
 * Checks the segments of one kernel call before anything is written. Every message names the
 * argument, what was expected and what was given.
 */
final class Arguments {

    private record Named(String name, MemorySegment segment) {
    }

    private final List<Named> inputs = new ArrayList<>();
    private final List<Named> outputs = new ArrayList<>();

    /** A tensor or channel vector that is read; {@code optional} allows null. */
    Arguments input(String name, MemorySegment s, long floats, String what, boolean optional) {
        if (check(name, s, floats, what, optional)) {
            inputs.add(new Named(name, s));
        }
        return this;
    }

    /** A segment that is written; it must be writable. */
    Arguments output(String name, MemorySegment s, long floats, String what, boolean optional) {
        if (check(name, s, floats, what, optional)) {
            if (s.isReadOnly()) {
                throw new IllegalArgumentException(name + ": expected a writable segment, got a read-only one");
            }
            outputs.add(new Named(name, s));
        }
        return this;
    }

    /**
     * Rejects overlaps: an output may not overlap another output, nor an input unless the pair is
     * listed in {@code inPlace} as {output, input} names and the two are exactly the same region.
     */
    void checkOverlaps(String... inPlace) {
        for (int i = 0; i < outputs.size(); i++) {
            Named out = outputs.get(i);
            for (int j = i + 1; j < outputs.size(); j++) {
                rejectOverlap(out, outputs.get(j), "output");
            }
            for (Named in : inputs) {
                if (allowed(inPlace, out.name, in.name) && sameRegion(out.segment, in.segment)) {
                    continue;
                }
                rejectOverlap(out, in, "input");
            }
        }
    }

    /** True when every segment of the call may be read and written from another thread. */
    boolean shareable() {
        for (Named s : inputs) {
            if (!s.segment.isAccessibleBy(PROBE)) {
                return false;
            }
        }
        for (Named s : outputs) {
            if (!s.segment.isAccessibleBy(PROBE)) {
                return false;
            }
        }
        return true;
    }

    /** Never started: only asked whether a segment is confined to the calling thread. */
    private static final Thread PROBE = Thread.ofPlatform().unstarted(() -> { });

    private static boolean allowed(String[] inPlace, String output, String input) {
        for (int k = 0; k + 1 < inPlace.length; k += 2) {
            if (inPlace[k].equals(output) && inPlace[k + 1].equals(input)) {
                return true;
            }
        }
        return false;
    }

    private static void rejectOverlap(Named out, Named other, String kind) {
        Optional<MemorySegment> overlap = out.segment.asOverlappingSlice(other.segment);
        if (overlap.isPresent()) {
            throw new IllegalArgumentException(out.name + ": expected memory disjoint from " + kind
                    + " " + other.name + ", got " + overlap.get().byteSize()
                    + " overlapping bytes" + (sameRegion(out.segment, other.segment)
                    ? " (the same segment; only the documented in-place pairs may alias)" : ""));
        }
    }

    private static boolean sameRegion(MemorySegment a, MemorySegment b) {
        if (a.byteSize() != b.byteSize()) {
            return false;
        }
        Optional<MemorySegment> overlap = a.asOverlappingSlice(b);
        return overlap.isPresent() && overlap.get().byteSize() == a.byteSize();
    }

    private static boolean check(String name, MemorySegment s, long floats, String what,
                                 boolean optional) {
        if (s == null) {
            if (optional) {
                return false;
            }
            Objects.requireNonNull(s, name + ": expected a segment of " + floats + " floats ("
                    + what + "), got null");
        }
        if (!s.scope().isAlive()) {
            throw new IllegalArgumentException(name + ": expected a live segment, got one whose arena is closed");
        }
        long expected = floats * Float.BYTES;
        if (s.byteSize() != expected) {
            throw new IllegalArgumentException(name + ": expected " + expected + " bytes (" + floats
                    + " floats, " + what + "), got " + s.byteSize() + " bytes");
        }
        return true;
    }
}
