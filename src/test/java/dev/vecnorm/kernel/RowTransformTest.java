package dev.vecnorm.kernel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The NHWC transforms (y, and dx of backward) take different loops by channel count, by range
 * and by whether y is x: whole dense rows whose channels are a multiple of the vector run as one
 * stream of vectors (y out of place; dx up to 1024 channels); from 1024 channels y in place, and
 * above 1024 dx, load their parameter vectors once for four rows; everything else (a channel
 * range, a remainder of channels, every other width) is a row at a time. Each is elementwise, so
 * each must give the scalar kernels' bits, and write exactly rows [row0, row1) x channels
 * [c0, c1): the outputs start as NaN with a payload (in place: as x), and everything outside the
 * range must still hold it. The row ranges start off a block boundary and end in a partial
 * block; channel ranges inside the row take the general loops. The fused forms (residual and
 * ReLU, also over the residual in place; dx with the mask and dresidual, and without x as the
 * frozen backward) go through the same loops.
 */
class RowTransformTest {

    private static final BatchNormKernels VECTOR = KernelProvider.kernels();
    private static final BatchNormKernels SCALAR = new ScalarKernels();
    /** A NaN no kernel computes: arithmetic on NaN gives the canonical one or keeps an input's. */
    private static final int SENTINEL = 0x7fc0beef;

    @ParameterizedTest(name = "channels {0}, rows [{1}, {2}), channels [{3}, {4})")
    @CsvSource({
        "64, 3, 70, 0, 64",         // the streams, a row is 4 vectors at 512 bits
        "128, 1, 40, 0, 128",       // ... 8 vectors
        "512, 0, 19, 0, 512",       // the streams over 19 rows
        "512, 2, 21, 64, 451",      // a channel range: the general loops
        "1024, 1, 12, 0, 1024",     // y and dx: the streams; y in place 4 rows per parameter
                                    // load (2 blocks, then 3 rows)
        "1030, 3, 10, 0, 1030",     // y and dx 4 rows per load; 6 channels past the last full
                                    // 512-bit vector
        "2048, 0, 4, 5, 2043",      // one block of 4 rows over a channel range
        "2048, 2, 3, 0, 2048",      // one row: no block
    })
    void transformsGiveTheScalarBits(int channels, long row0, long row1, int c0, int c1) {
        try (Arena arena = Arena.ofConfined()) {
            long e = (row1 + 1) * channels;           // one row past the range: must stay untouched
            MemorySegment x = arena.allocate(4 * e), dy = arena.allocate(4 * e);
            SplittableRandom r = new SplittableRandom(channels * 31L + row0);
            for (long i = 0; i < e; i++) {
                x.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (100 + 10 * r.nextGaussian()));
                dy.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
            }
            float[][] p = new float[4][channels];
            for (int c = 0; c < channels; c++) {
                p[0][c] = (float) (100 + r.nextGaussian());      // mean
                p[1][c] = (float) r.nextGaussian();              // scale, a
                p[2][c] = (float) r.nextGaussian();              // offset, b
                p[3][c] = (float) r.nextGaussian();              // c
            }
            int[][] v = transforms(VECTOR, arena, x, dy, e, channels, row0, row1, c0, c1, p);
            int[][] s = transforms(SCALAR, arena, x, dy, e, channels, row0, row1, c0, c1, p);
            String[] names = {"y", "dx", "y in place", "fused y", "fused y over the residual",
                "masked dx", "dresidual", "frozen masked dx"};
            int[] xBits = x.toArray(ValueLayout.JAVA_INT);
            int[] dyBits = dy.toArray(ValueLayout.JAVA_INT);
            for (int k = 0; k < names.length; k++) {
                assertArrayEquals(s[k], v[k], VECTOR.description() + ": " + names[k]);
                for (long i = 0; i < e; i++) {
                    long row = i / channels;
                    int c = (int) (i % channels);
                    boolean inside = row >= row0 && row < row1 && c >= c0 && c < c1;
                    if (!inside) {
                        int before = k == 2 ? xBits[(int) i] : k == 4 ? dyBits[(int) i] : SENTINEL;
                        assertEquals(before, v[k][(int) i], names[k]
                                + " written outside the range at row " + row + ", channel " + c);
                    }
                }
            }
        }
    }

    private static int[][] transforms(BatchNormKernels k, Arena arena, MemorySegment x,
                                      MemorySegment dy, long e, int channels, long row0,
                                      long row1, int c0, int c1, float[][] p) {
        MemorySegment y = arena.allocate(4 * e), dx = arena.allocate(4 * e);
        for (long i = 0; i < e; i++) {
            y.setAtIndex(ValueLayout.JAVA_INT, i, SENTINEL);
            dx.setAtIndex(ValueLayout.JAVA_INT, i, SENTINEL);
        }
        k.rowNormalize(x, y, channels, row0, row1, c0, c1, p[0], p[1], p[2]);
        k.rowGradientInput(x, dy, dx, channels, row0, row1, c0, c1, p[0], p[1], p[2], p[3]);
        MemorySegment z = arena.allocate(4 * e).copyFrom(x);
        k.rowNormalize(z, z, channels, row0, row1, c0, c1, p[0], p[1], p[2]);
        // Fused: dy serves as the residual and as the mask (about half its values are <= 0).
        MemorySegment fy = sentinels(arena, e), res = arena.allocate(4 * e).copyFrom(dy);
        k.rowNormalize(x, dy, fy, true, channels, row0, row1, c0, c1, p[0], p[1], p[2]);
        k.rowNormalize(x, res, res, true, channels, row0, row1, c0, c1, p[0], p[1], p[2]);
        MemorySegment mdx = sentinels(arena, e), dres = sentinels(arena, e), fdx = sentinels(arena, e);
        k.rowGradientInput(x, x, dy, mdx, dres, channels, row0, row1, c0, c1, p[0], p[1], p[2], p[3]);
        k.rowGradientInput(null, x, dy, fdx, null, channels, row0, row1, c0, c1, p[0], p[1], p[2], p[3]);
        return new int[][] {y.toArray(ValueLayout.JAVA_INT), dx.toArray(ValueLayout.JAVA_INT),
            z.toArray(ValueLayout.JAVA_INT), fy.toArray(ValueLayout.JAVA_INT), res.toArray(ValueLayout.JAVA_INT),
            mdx.toArray(ValueLayout.JAVA_INT), dres.toArray(ValueLayout.JAVA_INT), fdx.toArray(ValueLayout.JAVA_INT)};
    }

    private static MemorySegment sentinels(Arena arena, long e) {
        MemorySegment s = arena.allocate(4 * e);
        for (long i = 0; i < e; i++) {
            s.setAtIndex(ValueLayout.JAVA_INT, i, SENTINEL);
        }
        return s;
    }
}
