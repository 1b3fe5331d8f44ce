package dev.vecnorm.kernel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The NHWC reductions walk rows four at a time (from the caches) or one at a time (x from
 * memory), vectors of channels and then the channels past the last full vector one by one, and
 * a remainder of rows one at a time. Both walks must give the bits of the scalar kernels (one
 * double accumulator per channel, rows added in order), on row ranges that start and end
 * anywhere and on channel ranges inside the row; the engine's chunks are short on test-sized
 * tensors, so this calls the kernels directly.
 */
class RowReductionTest {

    private static final BatchNormKernels VECTOR = KernelProvider.kernels();
    private static final BatchNormKernels SCALAR = new ScalarKernels();

    @ParameterizedTest(name = "channels {0}, rows [{1}, {2}), channels [{3}, {4})")
    @CsvSource({
        "64, 3, 700, 0, 64",
        "128, 3, 1200, 0, 128",
        "128, 65600, 66000, 0, 128",
        "128, 33000, 33300, 0, 128",
        "200, 1, 800, 0, 200",
        "256, 5, 400, 0, 256",
        "256, 16380, 16800, 0, 256",
        "256, 9600, 10000, 0, 256",
        "300, 2, 600, 0, 300",
        "300, 14000, 14300, 0, 300",
        "384, 11000, 11203, 40, 380",
        "512, 7, 200, 0, 512",
        "512, 8200, 8400, 0, 512",
        "512, 8250, 8400, 64, 451",
        "1024, 1, 30, 0, 1024",
        "1100, 0, 19, 0, 1100",
    })
    void reductionsGiveTheScalarBits(int channels, long row0, long row1, int c0, int c1) {
        try (Arena arena = Arena.ofConfined()) {
            long e = row1 * channels;
            MemorySegment x = arena.allocate(4 * e), dy = arena.allocate(4 * e);
            SplittableRandom r = new SplittableRandom(channels * 31L + row0);
            // A large, channel-dependent mean (the sums are of x - shift) and unit noise.
            for (long i = row0 * channels; i < e; i++) {
                int c = (int) (i % channels);
                x.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (1000.0 * (c % 7) + r.nextGaussian()));
                dy.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
            }
            double[] shift = new double[channels];
            for (int c = 0; c < channels; c++) {
                shift[c] = x.getAtIndex(ValueLayout.JAVA_FLOAT, row0 * channels + c);
            }
            double[][] s = sums(SCALAR, x, dy, channels, row0, row1, c0, c1, shift, false);
            String[] names = {"moments s1", "moments s2", "sumDy", "sumDyXmu"};
            for (boolean fromMemory : new boolean[] {false, true}) {
                double[][] v = sums(VECTOR, x, dy, channels, row0, row1, c0, c1, shift, fromMemory);
                for (int i = 0; i < v.length; i++) {
                    assertArrayEquals(s[i], v[i], VECTOR.description() + ", from memory " + fromMemory + ": " + names[i]);
                }
            }
        }
    }

    private static double[][] sums(BatchNormKernels k, MemorySegment x, MemorySegment dy,
                                   int channels, long row0, long row1, int c0, int c1,
                                   double[] shift, boolean fromMemory) {
        // Arrays start as NaN: the kernels must overwrite [c0, c1) and leave the rest alone.
        double[][] out = new double[4][channels];
        for (double[] a : out) {
            java.util.Arrays.fill(a, Double.NaN);
        }
        k.rowMoments(x, channels, 4L * channels, row0, row1, c0, c1, shift, out[0], out[1], fromMemory);
        k.rowGradientSums(x, dy, channels, 4L * channels, 4L * channels, row0, row1, c0, c1, shift,
                out[2], out[3], fromMemory);
        return out;
    }
}
