package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;

/**
 * The fused ReLU's mask workspace: one bit per element of the output in dense element order
 * (NCHW {@code ((n C + c) H W + s)}, NHWC {@code (row C + c)}), in 64-bit native words: element
 * e is bit {@code e & 63} of word {@code e >>> 6}, and one more word that stays zero, so that
 * an 8-byte read at any element's byte stays inside. A bit is 1 where the gradient passes
 * ({@code !(y <= 0)}: y above zero or NaN), 0 where the ReLU gave +0. The forward's loops
 * collect a word's bits in a register and store it once complete; the partial words at a
 * range's ends are ORed in atomically (ranges that meet inside a word may be written by two
 * threads), into a workspace zeroed first. The backward's loops read the bits of a vector's
 * lanes with one unaligned 8-byte load.
 */
final class ReluMask {

    /** Aligned 64-bit words: the atomic OR needs them. */
    private static final VarHandle WORD = ValueLayout.JAVA_LONG.varHandle();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    private static final ValueLayout.OfLong UNALIGNED = ValueLayout.JAVA_LONG_UNALIGNED;

    private ReluMask() {
    }

    /** Bytes of a mask of {@code elements} bits: whole words, and the spare word. */
    static long bytes(long elements) {
        return 8 * (Math.ceilDiv(elements, 64) + 1);
    }

    /** The bits of elements e, e + 1, ... in the low bits (at least 57 of them). */
    static long bitsAt(MemorySegment ws, long e) {
        return ws.get(UNALIGNED, e >>> 3) >>> (e & 7);
    }

    /**
     * A loop's bit writer: adds the {@code w} bits b of elements [e, e + w) to {@code acc}, the
     * bits so far of word {@code e >>> 6}, in a range that starts at element e0; when they
     * complete the word it is written (stored if it lies wholly in the range, else ORed) and
     * the bits left over for the next word are returned, else the new acc.
     */
    static long add(MemorySegment ws, long e0, long e, long b, int w, long acc) {
        int s = (int) (e & 63);
        acc |= b << s;
        if (s + w < 64) {
            return acc;
        }
        put(ws, e >>> 6, acc, e0);
        return b >>> (64 - s);                  // s >= 48 here, as w <= 16
    }

    /** Writes word w of a range that starts at element e0: stored if wholly in it, else ORed. */
    static void put(MemorySegment ws, long w, long bits, long e0) {
        if (w << 6 >= e0) {
            store(ws, w, bits);
        } else {
            or(ws, w, bits);
        }
    }

    /**
     * The bit writer's end at element {@code end} of a range that starts at e0: the last,
     * partial word ORed in, and the first one ({@code head}) where it is partial. The vector
     * loops keep that first word in a register rather than OR it in place: an atomic inside the
     * loop, even on a path never taken, made the NCHW stream 3x slower.
     */
    static void finish(MemorySegment ws, long e0, long head, long end, long acc) {
        if ((e0 & 63) != 0) {
            or(ws, e0 >>> 6, head);
        }
        if ((end & 63) != 0) {
            or(ws, end >>> 6, acc);
        }
    }

    static long word(MemorySegment ws, long w) {
        return ws.get(UNALIGNED, 8 * w);
    }

    /** A plain store (the segment's accessor, which C2 compiles as a move; the VarHandle cost more). */
    static void store(MemorySegment ws, long w, long bits) {
        ws.set(UNALIGNED, 8 * w, bits);
    }

    /** ORs bits into word w atomically: another thread may be writing its other bits. */
    static void or(MemorySegment ws, long w, long bits) {
        WORD.getAndBitwiseOr(ws, 8 * w, bits);
    }

    /** Sets element e's bit to {@code pass}, atomically (the far channels' fix-up). */
    static void set(MemorySegment ws, long e, boolean pass) {
        long bit = 1L << (e & 63);
        if (pass) {
            WORD.getAndBitwiseOr(ws, 8 * (e >>> 6), bit);
        } else {
            WORD.getAndBitwiseAnd(ws, 8 * (e >>> 6), ~bit);
        }
    }

    /** Whether element e's gradient passes. */
    static boolean passes(MemorySegment ws, long e) {
        return (word(ws, e >>> 6) >>> (e & 63) & 1) != 0;
    }

    /**
     * The scalar kernels' mask of elements [e0, e1) from y's floats, element e at byte
     * {@code yAt + 4 (e - bit)}: every word ORed atomically, simpler than the vector loops'
     * register writer (the scalar kernels are the fallback, not the fast path).
     */
    static void maskScalar(MemorySegment y, long yAt, MemorySegment ws, long bit, long e0, long e1) {
        for (long e = e0; e < e1; ) {
            long w = e >>> 6, stop = Math.min(e1, (w + 1) << 6), bits = 0;
            for (; e < stop; e++) {
                bits |= (y.get(F32, yAt + 4 * (e - bit)) <= 0f ? 0L : 1L) << (e & 63);
            }
            or(ws, w, bits);
        }
    }

    /** The scalar form of {@link BatchNormKernels#maskedGradient} over elements [e0, e1). */
    static void gradientScalar(MemorySegment dy, long dyAt, MemorySegment ws, long bit,
                               MemorySegment g, long gAt, long e0, long e1) {
        for (long e = e0; e < e1; e++) {
            long i = 4 * (e - bit);
            g.set(F32, gAt + i, passes(ws, e) ? dy.get(F32, dyAt + i) : 0f);
        }
    }
}
