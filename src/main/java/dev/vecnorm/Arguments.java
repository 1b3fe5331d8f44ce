package dev.vecnorm;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Objects;

/**
 * Checks the segments of one kernel call before anything is written. Every message names the
 * argument, what was expected and what was given.
 *
 * <p>A call allocates nothing here: each thread reuses one instance ({@link #start()}), whose
 * slots {@link #finish} empties again, so that it never keeps a caller's segment reachable, and
 * overlaps of native segments are computed from their addresses. Nothing that runs between
 * {@code start} and {@code finish} can call back into vecnorm, so one instance per thread is
 * enough.
 */
final class Arguments {

    /** The most segments of any call (fused backward: six inputs and four outputs). */
    private static final int CAPACITY = 10;
    private static final ThreadLocal<Arguments> PER_THREAD = ThreadLocal.withInitial(Arguments::new);

    private final String[] names = new String[CAPACITY];
    private final MemorySegment[] segments = new MemorySegment[CAPACITY];
    private final boolean[] written = new boolean[CAPACITY];
    /** A strided view's bytes from one unit to the next, a unit's bytes, its units (0: plain). */
    private final long[] stride = new long[CAPACITY], unit = new long[CAPACITY], units = new long[CAPACITY];
    private int count;

    private Arguments() {
    }

    /** This thread's instance, empty. */
    static Arguments start() {
        Arguments a = PER_THREAD.get();
        a.clear();
        return a;
    }

    /** A tensor or channel vector that is read; {@code optional} allows null. */
    Arguments input(String name, MemorySegment s, long floats, String what, boolean optional) {
        return add(name, s, floats, what, optional, false);
    }

    /** A segment that is written; it must be writable. */
    Arguments output(String name, MemorySegment s, long floats, String what, boolean optional) {
        return add(name, s, floats, what, optional, true);
    }

    /** A tensor that is read, dense or a strided view. */
    Arguments input(String name, MemorySegment s, View v, String what, boolean optional) {
        return view(add(name, s, v.floats(), v.describe(what), optional, false), s, v);
    }

    /** A tensor that is written, dense or a strided view. */
    Arguments output(String name, MemorySegment s, View v, String what, boolean optional) {
        return view(add(name, s, v.floats(), v.describe(what), optional, true), s, v);
    }

    /**
     * The fused ReLU's mask workspace: exactly {@code bytes}, 64-bit words that the forward
     * writes atomically at the ends of its pieces, hence aligned to 8 bytes.
     */
    Arguments workspace(String name, MemorySegment s, long bytes, boolean output) {
        try {
            if (s == null) {                       // the message built only when thrown
                throw new NullPointerException(name + ": expected a segment of " + bytes
                        + " bytes (the ReLU's mask, workspaceBytes()), got null");
            }
            requireLive(name, s);
            if (s.byteSize() != bytes) {
                throw new IllegalArgumentException(name + ": expected " + bytes + " bytes (the ReLU's"
                        + " mask, workspaceBytes()), got " + s.byteSize() + " bytes");
            }
            if (s.maxByteAlignment() < Long.BYTES) {
                throw new IllegalArgumentException(name + ": expected a segment aligned to 8 bytes"
                        + " (arena.allocate(bytes, 8)), got one aligned to " + s.maxByteAlignment());
            }
            requireWritable(name, s, output);
        } catch (RuntimeException e) {
            clear();
            throw e;
        }
        return record(name, s, output);
    }

    private Arguments view(Arguments a, MemorySegment s, View v) {
        if (s != null && v.strided()) {
            stride[count - 1] = v.strideBytes();
            unit[count - 1] = v.unitBytes();
            units[count - 1] = v.units();
        }
        return a;
    }

    /**
     * A tensor's geometry: {@code units} blocks (images for NCHW, rows of C floats for NHWC) of
     * {@code unitBytes}, {@code strideBytes} apart (equal: dense).
     */
    record View(long units, long unitBytes, long strideBytes) {
        long floats() {
            return units == 0 ? 0 : ((units - 1) * strideBytes + unitBytes) / Float.BYTES;
        }

        boolean strided() {
            return strideBytes != unitBytes;
        }

        String describe(String what) {
            return strided() ? what + ": a view of " + units + " blocks of " + unitBytes / 4
                    + " floats, " + strideBytes / 4 + " floats apart" : what;
        }
    }

    /**
     * Rejects overlaps and empties the slots: an output may not overlap another output, nor an
     * input unless it is the pair ({@code inPlaceOutput}, {@code inPlaceInput}) and the two are
     * exactly the same region. Returns true when every segment may be read and written from
     * another thread.
     */
    boolean finish(String inPlaceOutput, String inPlaceInput) {
        return finish(inPlaceOutput, inPlaceInput, null, null);
    }

    /** {@link #finish(String, String)} with a second allowed in-place pair. */
    boolean finish(String inPlaceOutput, String inPlaceInput, String inPlaceOutput2,
                   String inPlaceInput2) {
        try {
            for (int i = 0; i < count; i++) {
                if (!written[i]) {
                    continue;
                }
                for (int j = 0; j < count; j++) {
                    if (j == i || (written[j] && j < i)) {
                        continue;                  // each pair of outputs once
                    }
                    boolean inPlace = !written[j]
                            && (names[i].equals(inPlaceOutput) && names[j].equals(inPlaceInput)
                            || names[i].equals(inPlaceOutput2) && names[j].equals(inPlaceInput2));
                    rejectOverlap(i, j, inPlace);
                }
            }
            for (int i = 0; i < count; i++) {
                if (!segments[i].isAccessibleBy(PROBE)) {
                    return false;
                }
            }
            return true;
        } finally {
            clear();
        }
    }

    /** Never started: only asked whether a segment is confined to the calling thread. */
    private static final Thread PROBE = Thread.ofPlatform().unstarted(() -> { });

    private Arguments add(String name, MemorySegment s, long floats, String what, boolean optional,
                          boolean output) {
        try {
            if (s == null) {
                if (optional) {
                    return this;
                }
                Objects.requireNonNull(s, name + ": expected a segment of " + floats + " floats ("
                        + what + "), got null");
            }
            requireLive(name, s);
            long expected = floats * Float.BYTES;
            if (s.byteSize() != expected) {
                throw new IllegalArgumentException(name + ": expected " + expected + " bytes (" + floats
                        + " floats, " + what + "), got " + s.byteSize() + " bytes");
            }
            requireWritable(name, s, output);
        } catch (RuntimeException e) {
            clear();
            throw e;
        }
        return record(name, s, output);
    }

    private Arguments record(String name, MemorySegment s, boolean output) {
        names[count] = name;
        segments[count] = s;
        written[count] = output;
        count++;
        return this;
    }

    private static void requireLive(String name, MemorySegment s) {
        if (!s.scope().isAlive()) {
            throw new IllegalArgumentException(name + ": expected a live segment, got one whose arena is closed");
        }
    }

    private static void requireWritable(String name, MemorySegment s, boolean output) {
        if (output && s.isReadOnly()) {
            throw new IllegalArgumentException(name + ": expected a writable segment, got a read-only one");
        }
    }

    /** Throws unless slots i (an output) and j are disjoint, or the same region when in place. */
    private void rejectOverlap(int i, int j, boolean inPlace) {
        MemorySegment out = segments[i], other = segments[j];
        long overlap = overlapBytes(out, other);
        if (overlap == 0 || (inPlace && overlap == out.byteSize() && overlap == other.byteSize()
                && stride[i] == stride[j])) {
            return;
        }
        if (stride[i] > 0 && stride[i] == stride[j] && unit[i] == unit[j]
                && !blocksMeet(other.address() - out.address(), stride[i], unit[i], Math.max(units[i], units[j]))) {
            return;                                // interleaved views: their blocks are disjoint
        }
        if (stride[i] != stride[j]) {
            throw new IllegalArgumentException(names[i] + ": expected memory disjoint from "
                    + (written[j] ? "output " : "input ") + names[j] + ", got " + overlap
                    + " shared bytes between views of different strides (in place only with equal"
                    + " strides)");
        }
        boolean same = overlap == out.byteSize() && overlap == other.byteSize();
        throw new IllegalArgumentException(names[i] + ": expected memory disjoint from "
                + (written[j] ? "output " : "input ") + names[j] + ", got " + overlap
                + " overlapping bytes" + (same
                ? " (the same segment; only the documented in-place pairs may alias)" : ""));
    }

    /**
     * Whether blocks [k S, k S + L) and [d + k' S, d + k' S + L), k and k' in [0, units), meet:
     * whether |d + k S| < L for some k in (-units, units). |d + k S| is convex in k, so the
     * integers next to -d / S (clamped to the range) are the only candidates.
     */
    private static boolean blocksMeet(long d, long s, long l, long units) {
        long k0 = Math.floorDiv(-d, s);
        for (long k = k0; k <= k0 + 1; k++) {
            long kk = Math.max(-(units - 1), Math.min(units - 1, k));
            if (Math.abs(d + kk * s) < l) {
                return true;
            }
        }
        return false;
    }

    /** Bytes that a and b share: from their addresses when both are native, else the JDK's answer. */
    private static long overlapBytes(MemorySegment a, MemorySegment b) {
        if (a.isNative() && b.isNative()) {
            long from = Math.max(a.address(), b.address());
            long to = Math.min(a.address() + a.byteSize(), b.address() + b.byteSize());
            return Math.max(0, to - from);
        }
        return a.asOverlappingSlice(b).map(MemorySegment::byteSize).orElse(0L);
    }

    private void clear() {
        Arrays.fill(names, 0, count, null);
        Arrays.fill(segments, 0, count, null);
        Arrays.fill(stride, 0, count, 0L);
        Arrays.fill(unit, 0, count, 0L);
        Arrays.fill(units, 0, count, 0L);
        count = 0;
    }
}
