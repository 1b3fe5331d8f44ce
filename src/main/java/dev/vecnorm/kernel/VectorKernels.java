package dev.vecnorm.kernel;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

/**
 * Vector API kernels. Loaded reflectively by {@link KernelProvider} only when
 * {@code jdk.incubator.vector} is readable; no other class of the library imports the module.
 *
 * <p>The species are {@code static final} so that C2 treats them as constants (an instance
 * field would not be, and every vector operation would fall back to Java code). The width comes
 * from {@code -Dvecnorm.vectorBits} (tests use it to exercise narrower lanes), else the
 * preferred width.
 *
 * <p>Reductions widen floats to double before they accumulate: {@code HALF} loads as many floats
 * as a {@code DOUBLES} vector has lanes. The NCHW reductions are in {@link VectorReductions}, the
 * transforms in {@code VectorTransforms}; the NHWC reductions are still here. Helpers that take
 * vectors, once not inlined, box them, so the widening is written out at every load: in these
 * register-heavy loops C2 refused to inline such a helper ("callee uses too much stack") in some
 * positions.
 */
final class VectorKernels implements BatchNormKernels {

    static final int BITS = configuredBits();
    static final VectorSpecies<Float> FLOATS = VectorShape.forBitSize(BITS).withLanes(float.class);
    static final VectorSpecies<Double> DOUBLES = VectorShape.forBitSize(BITS).withLanes(double.class);
    static final VectorSpecies<Float> HALF = VectorShape.forBitSize(BITS / 2).withLanes(float.class);
    private static final int FL = FLOATS.length();
    static final int DL = DOUBLES.length();
    /** The masked sums' per-plane loops (MERGE NOTE: they go with them). */
    private static final long ROW_BYTES = 4L * VIRTUAL_LANES;
    private static final VectorShuffle<Double> HALF_UP = VectorShuffle.iota(DOUBLES, DL / 2, 1, true);
    private static final VectorShuffle<Double> QUARTER_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 4), 1, true);
    private static final VectorShuffle<Double> EIGHTH_UP = VectorShuffle.iota(DOUBLES, Math.max(1, DL / 8), 1, true);
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final VectorOperators.Conversion<Float, Double> F2D = VectorOperators.F2D;
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /**
     * NHWC reductions update each channel's accumulators once per this many rows; rows of 4 KiB
     * and more take 8 (statistics of 50x1024x14x14 and 50x2048x7x7 measured 1.2-1.5x faster
     * alone, training 1.06x and 1.12x; gradient sums unchanged).
     */
    private static final int ROW_BLOCK = 4;
    private static final int WIDE_ROW_BLOCK = 8;
    static final int WIDE_ROW_CHANNELS = 1024;
    /**
     * NHWC reductions at 512 bits keep 64 channels' accumulators in registers and walk the rows
     * once per group of 64 channels, in blocks of {@link #BLOCK_BYTES}, every group walking a block
     * before the next block. For 64 channels that walk is sequential; beyond, it reads 256 bytes of
     * every row and strides to the next, and the later groups find the block in L2. From {@link
     * #TOUCH_CHANNELS} channels, when the pass reads more than {@link #TOUCH_MIN_BYTES} (x, or x
     * and dy for the gradient sums) and so likely from memory, the strided walk is a pattern the
     * hardware prefetchers follow poorly (50x256x56x56 statistics alone: 10-11 GB/s against 20-22
     * for a sequential read), and each group's walk over a block also reads one int of each cache
     * line of the next block, in order, {@link #TOUCH_STEP} bytes a row, the groups together
     * covering it: a sequential stream the prefetchers do follow. Measured in one JVM, rounds
     * alternating with the earlier code (the whole range per group up to 256 channels, else row
     * blocks of 4), per-round median: training 1.14x faster on 50x256x56x56 and 1.29x on
     * 50x512x28x28, backward 1.11x and 1.13x; on cache-resident tensors the read-ahead costs more
     * than it gives (statistics of 50x256x14x14 1.5x slower) and is left out: 50x512x7x7 training
     * 1.19x; 128 channels were 0.83x with it, and 1.07x (backward 1.13x) with blocks alone (256 KiB
     * blocks: 0.94x). From {@link #WIDE_ROW_CHANNELS} channels the row-block path wins. The
     * gradient sums count both tensors: on 50x256x14x14 (10 MB each) they took 1.6-1.8 ms without
     * the read-ahead and 1.3-1.4 with it (the statistics over x alone 0.3-0.5 ms).
     *
     * <p>Below {@link #WINDOW_CHANNELS} channels a walk that reads ahead takes blocks of a few KiB
     * instead ({@link #MOMENTS_WINDOW} of x, {@link #GRADIENT_WINDOW} of each of x and dy): every
     * group then walks rows still in L1, and the read-ahead runs one small block ahead. The walk
     * with trivial arithmetic shows why the pattern matters: a float sum over 160 MB ran at 20 GB/s
     * read in order and 8-11 GB/s in 64-channel column groups over 128 KiB blocks. Measured in one
     * JVM, 160 MB per tensor, 256 channels, per-round medians, statistics / gradient sums: 128 KiB
     * blocks 14.0-14.3 / 23.1-23.3 ms, blocks of 4 rows 9.1-10.0 / 16.8-17.5, 6 rows 8.0-8.6 /
     * 18.2-18.8, 8 rows 8.8-9.1 / 23.3-23.8, 12 rows 11.6-12.0 / -; 128 channels (no read-ahead
     * before) 16.1 / 31.2 ms against 12.2 (16 rows) / 18.9 (8 rows); 384 channels 14.3 / 21.8
     * against 10.8 (4 rows) / 20.5 (2 rows); 512 channels were slower in blocks of 2 to 8 rows
     * (statistics 13.2 against 14.6-16.0 ms, gradient sums 21.9 against 25.4-28.9).
     * In JMH (quick runs, NHWC): 50x256x56x56 training 24.7 -> 21.6 ms, backward 41.3 -> 33.5.
     * 128 to 255 channels read ahead only beyond 32 MiB: the 20 MB x of 50x128x28x28, partly in
     * L3 between calls, took its statistics 1.5x slower with it (training 2.12 -> 3.20 ms), while
     * its gradient sums, over 40 MB, gained (backward 6.5 -> 4.8 ms).
     *
     * <p>From {@link #WINDOW_CHANNELS} channels larger blocks help the gradient sums instead when
     * they read ahead: {@link #GRADIENT_WIDE_BLOCK} of each tensor, 3/4 of L2 for the two.
     * Measured through the kernel entry points, 16 chunks as in the engine, 50x512x28x28 (80 MB a
     * tensor), alternating runs: 128 KiB 11.0-12.1 ms (7 runs), 256 KiB 10.2-10.3, 384 KiB 9.1-9.7
     * (5), 512 KiB 9.5-11.3 (8), 768 KiB 10.7-11.0; the statistics showed no gain (5.5-6.4 ms at
     * every size) and keep {@link #BLOCK_BYTES}. JMH quick, NHWC backward, three alternating
     * pairs: 21.55 / 21.62 / 21.93 ms -> 20.14 / 27.11 / 20.60.
     */
    private static final int REGISTER_ROW_MAX = WIDE_ROW_CHANNELS - 1;
    private static final long BLOCK_BYTES = 128 * 1024;
    private static final int TOUCH_CHANNELS = 256;
    private static final int WINDOW_CHANNELS = 512;
    private static final long MOMENTS_WINDOW = 7 * 1024;
    private static final long GRADIENT_WINDOW = 4 * 1024;
    private static final long GRADIENT_WIDE_BLOCK = 384 * 1024;
    private static final long TOUCH_MIN_BYTES = 16L * 1024 * 1024;
    private static final long TOUCH_STEP = 4L * 64;
    /**
     * Where the touch reads' xor goes, so that C2 keeps the loads. Threads overwrite it without
     * synchronisation; nothing reads it.
     */
    private static int touched;

    /** Whether an NHWC reduction over {@code bytes} reads ahead (see {@link #REGISTER_ROW_MAX}). */
    private static boolean touches(long bytes, int channels) {
        return channels >= TOUCH_CHANNELS ? bytes > TOUCH_MIN_BYTES
                : channels >= TOUCH_CHANNELS / 2 && bytes > 2 * TOUCH_MIN_BYTES;
    }

    /**
     * Rows per block of an NHWC register walk: {@link #BLOCK_BYTES} of rows; when it reads ahead,
     * {@code window} bytes over rows narrower than {@link #WINDOW_CHANNELS} channels and
     * {@code wide} bytes over wider ones.
     */
    private static long blockRows(long rowBytes, int channels, boolean touch, long window,
                                  long wide) {
        long bytes = !touch ? BLOCK_BYTES : channels < WINDOW_CHANNELS ? window : wide;
        return Math.max(1, bytes / rowBytes);
    }


    private final String description;

    VectorKernels(boolean hardwareFma) {
        this.description = "vector " + BITS + "-bit, " + (hardwareFma ? "FMA" : "FMA emulated (slow)");
    }

    /**
     * The width in bits: {@code vecnorm.vectorBits} if set, else the preferred width.
     *
     * @throws IllegalStateException if the property is not 128, 256 or 512, or wider than the
     *                               hardware's preferred width
     */
    static int configuredBits() {
        int preferred = VectorShape.preferredShape().vectorBitSize();
        String wanted = System.getProperty(KernelProvider.BITS_PROPERTY);
        if (wanted == null || wanted.isBlank()) {
            if (preferred < 128) {
                throw new IllegalStateException("the preferred vector width is " + preferred
                        + " bits; vecnorm's vector kernels need at least 128");
            }
            return Math.min(preferred, 512);
        }
        int bits;
        try {
            bits = Integer.parseInt(wanted.trim());
        } catch (NumberFormatException e) {
            bits = -1;
        }
        if ((bits != 128 && bits != 256 && bits != 512) || bits > preferred) {
            throw new IllegalStateException(KernelProvider.BITS_PROPERTY
                    + ": expected 128, 256 or 512 and at most this CPU's preferred " + preferred
                    + ", got '" + wanted + "'");
        }
        return bits;
    }

    @Override
    public String description() {
        return description;
    }

    // ------------------------------------------------------------------------------------ NCHW

    @Override
    public void channelMoments(MemorySegment x, long base, long stride, int planes, long spatial,
                               double shift, double[] lanes, double[] s1, double[] s2, int c) {
        VectorReductions.channelMoments(x, base, stride, planes, spatial, shift, lanes, s1, s2, c);
    }

    @Override
    public void planesNormalize(MemorySegment x, MemorySegment residual, MemorySegment y,
                                boolean relu, int channels, long spatial, int p0, int p1,
                                float[] mean, float[] scale, float[] offset) {
        VectorTransforms.planesNormalize(x, residual, y, relu, channels, spatial, p0, p1, mean, scale, offset);
    }

    @Override
    public void channelGradientSums(MemorySegment x, MemorySegment dy, long base, long stride,
                                    int planes, long spatial, double mean, double[] lanes,
                                    double[] sumDy, double[] sumDyXmu, int c) {
        VectorReductions.channelGradientSums(x, dy, base, stride, planes, spatial, mean, lanes,
                sumDy, sumDyXmu, c);
    }

    @Override
    public void planesGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                    MemorySegment dx, MemorySegment dresidual, int channels,
                                    long spatial, int p0, int p1, float[] mean, float[] a,
                                    float[] b, float[] c) {
        VectorTransforms.planesGradientInput(x, dy, y, dx, dresidual, channels, spatial, p0, p1, mean, a, b, c);
    }

    // ------------------------------------------------------------------------------------ NHWC

    @Override
    public void rowMoments(MemorySegment x, int channels, long row0, long row1, int c0, int c1,
                           double[] shift, double[] s1, double[] s2) {
        for (int c = c0; c < c1; c++) {
            s1[c] = 0;
            s2[c] = 0;
        }
        long rowBytes = 4L * channels;
        if (DL == 8 && channels <= REGISTER_ROW_MAX) {
            // 64 channels at a time in registers (measured 0.77 ms against 1.25 for C = 64,
            // 6.4 M floats: memory speed), in row blocks, maybe reading ahead: see REGISTER_ROW_MAX.
            int groups = (c1 - c0) / 64;
            boolean touch = touches(x.byteSize(), channels);
            long block = blockRows(rowBytes, channels, touch, MOMENTS_WINDOW, BLOCK_BYTES);
            long end = touch ? row1 * rowBytes : 0;
            int sink = 0;
            for (long r = row0; r < row1; r += block) {
                long r1 = Math.min(r + block, row1), next = r1 * rowBytes;
                for (int g = 0; g < groups; g++) {
                    long t = next + g * block * TOUCH_STEP;
                    sink += moments64(x, rowBytes, r, r1, c0 + 64 * g, shift, s1, s2, t,
                            Math.max(t, Math.min(end, t + block * TOUCH_STEP)));
                }
            }
            touched = sink;
            c0 += 64 * groups;
        }
        int rowBlock = channels >= WIDE_ROW_CHANNELS ? WIDE_ROW_BLOCK : ROW_BLOCK;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        for (long r = row0; r < row1; r += rowBlock) {
            int rows = (int) Math.min(rowBlock, row1 - r);
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector k = DoubleVector.fromArray(DOUBLES, shift, c);
                DoubleVector a = DoubleVector.fromArray(DOUBLES, s1, c);
                DoubleVector q = DoubleVector.fromArray(DOUBLES, s2, c);
                long o = base + 4L * c;
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    DoubleVector d = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k);
                    a = a.add(d);
                    q = d.fma(d, q);
                }
                a.intoArray(s1, c);
                q.intoArray(s2, c);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                double a = s1[c], q = s2[c], k = shift[c];
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    double d = (double) x.get(F32, o) - k;
                    a += d;
                    q = Math.fma(d, d, q);
                }
                s1[c] = a;
                s2[c] = q;
            }
        }
    }

    /**
     * Channels [c, c + 64), rows [row0, row1), each channel adding its rows in order to its
     * accumulators in s1 and s2 (512 bits). Each row also reads one int of each cache line of
     * {@link #TOUCH_STEP} bytes from t on, until tEnd (none when t = tEnd); returns their xor.
     */
    private static int moments64(MemorySegment x, long rowBytes, long row0, long row1, int c,
                                 double[] shift, double[] s1, double[] s2, long t, long tEnd) {
        DoubleVector k0 = DoubleVector.fromArray(DOUBLES, shift, c + 0);
        DoubleVector k1 = DoubleVector.fromArray(DOUBLES, shift, c + 8);
        DoubleVector k2 = DoubleVector.fromArray(DOUBLES, shift, c + 16);
        DoubleVector k3 = DoubleVector.fromArray(DOUBLES, shift, c + 24);
        DoubleVector k4 = DoubleVector.fromArray(DOUBLES, shift, c + 32);
        DoubleVector k5 = DoubleVector.fromArray(DOUBLES, shift, c + 40);
        DoubleVector k6 = DoubleVector.fromArray(DOUBLES, shift, c + 48);
        DoubleVector k7 = DoubleVector.fromArray(DOUBLES, shift, c + 56);
        DoubleVector a0 = DoubleVector.fromArray(DOUBLES, s1, c + 0);
        DoubleVector a1 = DoubleVector.fromArray(DOUBLES, s1, c + 8);
        DoubleVector a2 = DoubleVector.fromArray(DOUBLES, s1, c + 16);
        DoubleVector a3 = DoubleVector.fromArray(DOUBLES, s1, c + 24);
        DoubleVector a4 = DoubleVector.fromArray(DOUBLES, s1, c + 32);
        DoubleVector a5 = DoubleVector.fromArray(DOUBLES, s1, c + 40);
        DoubleVector a6 = DoubleVector.fromArray(DOUBLES, s1, c + 48);
        DoubleVector a7 = DoubleVector.fromArray(DOUBLES, s1, c + 56);
        DoubleVector q0 = DoubleVector.fromArray(DOUBLES, s2, c + 0);
        DoubleVector q1 = DoubleVector.fromArray(DOUBLES, s2, c + 8);
        DoubleVector q2 = DoubleVector.fromArray(DOUBLES, s2, c + 16);
        DoubleVector q3 = DoubleVector.fromArray(DOUBLES, s2, c + 24);
        DoubleVector q4 = DoubleVector.fromArray(DOUBLES, s2, c + 32);
        DoubleVector q5 = DoubleVector.fromArray(DOUBLES, s2, c + 40);
        DoubleVector q6 = DoubleVector.fromArray(DOUBLES, s2, c + 48);
        DoubleVector q7 = DoubleVector.fromArray(DOUBLES, s2, c + 56);
        int sink = 0;
        for (long o = row0 * rowBytes + 4L * c, end = row1 * rowBytes; o < end; o += rowBytes) {
            for (long u = t, ue = t = Math.min(t + TOUCH_STEP, tEnd); u < ue; u += 64) {
                sink ^= x.get(ValueLayout.JAVA_INT_UNALIGNED, u);
            }
            DoubleVector d0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k0);
            a0 = a0.add(d0);
            q0 = d0.fma(d0, q0);
            DoubleVector d1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k1);
            a1 = a1.add(d1);
            q1 = d1.fma(d1, q1);
            DoubleVector d2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k2);
            a2 = a2.add(d2);
            q2 = d2.fma(d2, q2);
            DoubleVector d3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k3);
            a3 = a3.add(d3);
            q3 = d3.fma(d3, q3);
            DoubleVector d4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k4);
            a4 = a4.add(d4);
            q4 = d4.fma(d4, q4);
            DoubleVector d5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k5);
            a5 = a5.add(d5);
            q5 = d5.fma(d5, q5);
            DoubleVector d6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k6);
            a6 = a6.add(d6);
            q6 = d6.fma(d6, q6);
            DoubleVector d7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(k7);
            a7 = a7.add(d7);
            q7 = d7.fma(d7, q7);
        }
        a0.intoArray(s1, c + 0);
        a1.intoArray(s1, c + 8);
        a2.intoArray(s1, c + 16);
        a3.intoArray(s1, c + 24);
        a4.intoArray(s1, c + 32);
        a5.intoArray(s1, c + 40);
        a6.intoArray(s1, c + 48);
        a7.intoArray(s1, c + 56);
        q0.intoArray(s2, c + 0);
        q1.intoArray(s2, c + 8);
        q2.intoArray(s2, c + 16);
        q3.intoArray(s2, c + 24);
        q4.intoArray(s2, c + 32);
        q5.intoArray(s2, c + 40);
        q6.intoArray(s2, c + 48);
        q7.intoArray(s2, c + 56);
        return sink;
    }

    @Override
    public void rowNormalize(MemorySegment x, MemorySegment residual, MemorySegment y, boolean relu,
                             int channels, long row0, long row1, int c0, int c1, float[] mean,
                             float[] scale, float[] offset) {
        VectorTransforms.rowNormalize(x, residual, y, relu, channels, row0, row1, c0, c1, mean, scale, offset);
    }

    @Override
    public void rowGradientSums(MemorySegment x, MemorySegment dy, int channels, long row0,
                                long row1, int c0, int c1, double[] mean, double[] sumDy,
                                double[] sumDyXmu) {
        for (int c = c0; c < c1; c++) {
            sumDy[c] = 0;
            sumDyXmu[c] = 0;
        }
        long rowBytes = 4L * channels;
        if (DL == 8 && channels <= REGISTER_ROW_MAX) {
            // As in rowMoments; the read-ahead reads both tensors' next block.
            int groups = (c1 - c0) / 64;
            boolean touch = touches(2 * x.byteSize(), channels);
            long block = blockRows(rowBytes, channels, touch, GRADIENT_WINDOW,
                    GRADIENT_WIDE_BLOCK);
            long end = touch ? row1 * rowBytes : 0;
            int sink = 0;
            for (long r = row0; r < row1; r += block) {
                long r1 = Math.min(r + block, row1), next = r1 * rowBytes;
                for (int g = 0; g < groups; g++) {
                    long t = next + g * block * TOUCH_STEP;
                    sink += gradientSums64(x, dy, rowBytes, r, r1, c0 + 64 * g, mean, sumDy,
                            sumDyXmu, t, Math.max(t, Math.min(end, t + block * TOUCH_STEP)));
                }
            }
            touched = sink;
            c0 += 64 * groups;
        }
        int rowBlock = channels >= WIDE_ROW_CHANNELS ? WIDE_ROW_BLOCK : ROW_BLOCK;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        for (long r = row0; r < row1; r += rowBlock) {
            int rows = (int) Math.min(rowBlock, row1 - r);
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector m = DoubleVector.fromArray(DOUBLES, mean, c);
                DoubleVector a = DoubleVector.fromArray(DOUBLES, sumDy, c);
                DoubleVector q = DoubleVector.fromArray(DOUBLES, sumDyXmu, c);
                long o = base + 4L * c;
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                    a = a.add(g);
                    q = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g, q);
                }
                a.intoArray(sumDy, c);
                q.intoArray(sumDyXmu, c);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                double a = sumDy[c], q = sumDyXmu[c], m = mean[c];
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    double g = dy.get(F32, o);
                    double d = (double) x.get(F32, o) - m;
                    a += g;
                    q = Math.fma(d, g, q);
                }
                sumDy[c] = a;
                sumDyXmu[c] = q;
            }
        }
    }

    /** As {@link #moments64}, for the gradient sums; the touch reads x and dy. */
    private static int gradientSums64(MemorySegment x, MemorySegment dy, long rowBytes, long row0,
                                      long row1, int c, double[] mean, double[] sumDy,
                                      double[] sumDyXmu, long t, long tEnd) {
        DoubleVector m0 = DoubleVector.fromArray(DOUBLES, mean, c + 0);
        DoubleVector m1 = DoubleVector.fromArray(DOUBLES, mean, c + 8);
        DoubleVector m2 = DoubleVector.fromArray(DOUBLES, mean, c + 16);
        DoubleVector m3 = DoubleVector.fromArray(DOUBLES, mean, c + 24);
        DoubleVector m4 = DoubleVector.fromArray(DOUBLES, mean, c + 32);
        DoubleVector m5 = DoubleVector.fromArray(DOUBLES, mean, c + 40);
        DoubleVector m6 = DoubleVector.fromArray(DOUBLES, mean, c + 48);
        DoubleVector m7 = DoubleVector.fromArray(DOUBLES, mean, c + 56);
        DoubleVector a0 = DoubleVector.fromArray(DOUBLES, sumDy, c + 0);
        DoubleVector a1 = DoubleVector.fromArray(DOUBLES, sumDy, c + 8);
        DoubleVector a2 = DoubleVector.fromArray(DOUBLES, sumDy, c + 16);
        DoubleVector a3 = DoubleVector.fromArray(DOUBLES, sumDy, c + 24);
        DoubleVector a4 = DoubleVector.fromArray(DOUBLES, sumDy, c + 32);
        DoubleVector a5 = DoubleVector.fromArray(DOUBLES, sumDy, c + 40);
        DoubleVector a6 = DoubleVector.fromArray(DOUBLES, sumDy, c + 48);
        DoubleVector a7 = DoubleVector.fromArray(DOUBLES, sumDy, c + 56);
        DoubleVector q0 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 0);
        DoubleVector q1 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 8);
        DoubleVector q2 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 16);
        DoubleVector q3 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 24);
        DoubleVector q4 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 32);
        DoubleVector q5 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 40);
        DoubleVector q6 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 48);
        DoubleVector q7 = DoubleVector.fromArray(DOUBLES, sumDyXmu, c + 56);
        int sink = 0;
        for (long o = row0 * rowBytes + 4L * c, end = row1 * rowBytes; o < end; o += rowBytes) {
            for (long u = t, ue = t = Math.min(t + TOUCH_STEP, tEnd); u < ue; u += 64) {
                sink ^= x.get(ValueLayout.JAVA_INT_UNALIGNED, u) ^ dy.get(ValueLayout.JAVA_INT_UNALIGNED, u);
            }
            DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
            a0 = a0.add(g0);
            q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m0).fma(g0, q0);
            DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0));
            a1 = a1.add(g1);
            q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 32, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m1).fma(g1, q1);
            DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0));
            a2 = a2.add(g2);
            q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 64, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m2).fma(g2, q2);
            DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0));
            a3 = a3.add(g3);
            q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 96, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m3).fma(g3, q3);
            DoubleVector g4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0));
            a4 = a4.add(g4);
            q4 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 128, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m4).fma(g4, q4);
            DoubleVector g5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0));
            a5 = a5.add(g5);
            q5 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 160, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m5).fma(g5, q5);
            DoubleVector g6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0));
            a6 = a6.add(g6);
            q6 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 192, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m6).fma(g6, q6);
            DoubleVector g7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0));
            a7 = a7.add(g7);
            q7 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 224, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m7).fma(g7, q7);
        }
        a0.intoArray(sumDy, c + 0);
        a1.intoArray(sumDy, c + 8);
        a2.intoArray(sumDy, c + 16);
        a3.intoArray(sumDy, c + 24);
        a4.intoArray(sumDy, c + 32);
        a5.intoArray(sumDy, c + 40);
        a6.intoArray(sumDy, c + 48);
        a7.intoArray(sumDy, c + 56);
        q0.intoArray(sumDyXmu, c + 0);
        q1.intoArray(sumDyXmu, c + 8);
        q2.intoArray(sumDyXmu, c + 16);
        q3.intoArray(sumDyXmu, c + 24);
        q4.intoArray(sumDyXmu, c + 32);
        q5.intoArray(sumDyXmu, c + 40);
        q6.intoArray(sumDyXmu, c + 48);
        q7.intoArray(sumDyXmu, c + 56);
        return sink;
    }

    @Override
    public void rowGradientInput(MemorySegment x, MemorySegment dy, MemorySegment y,
                                 MemorySegment dx, MemorySegment dresidual, int channels,
                                 long row0, long row1, int c0, int c1, float[] mean, float[] a,
                                 float[] b, float[] c) {
        VectorTransforms.rowGradientInput(x, dy, y, dx, dresidual, channels, row0, row1, c0, c1, mean, a, b, c);
    }

    // ---- Masked gradient sums (fused ReLU's backward). MERGE NOTE: copies of gradientSums4,
    // ---- gradientSumsAnyWidth and rowGradientSums' general loop with g = (y <= 0 ? +0 : dy) in
    // ---- place of dy, kept apart for the reduction redesign to fold in. 256 bits take the
    // ---- any-width loop here, and NHWC has no register or read-ahead path, so these can be
    // ---- slower than the plain sums on those widths and shapes.

    private static final ScalarKernels SCALAR_MASKED = new ScalarKernels();

    @Override
    public void planesGradientSumsMasked(MemorySegment x, MemorySegment dy, MemorySegment y,
                                         int channels, long spatial, int p0, int p1,
                                         double[] mean, double[] sumDy, double[] sumDyXmu) {
        if (DL == 2) {
            // See rowGradientSumsMasked: the same allocation at 128 bits, the same remedy.
            SCALAR_MASKED.planesGradientSumsMasked(x, dy, y, channels, spatial, p0, p1, mean, sumDy, sumDyXmu);
            return;
        }
        long first = 4L * p0 * spatial, stride = 4L * spatial;
        int c = p0 % channels;
        if (DL == 8) {
            gradientSumsMasked4(x, dy, y, first, stride, p1 - p0, spatial, channels, c, mean, sumDy, sumDyXmu);
            return;
        }
        double[] t = ScalarKernels.PLANE_SCRATCH.get();
        for (int i = 0; i < p1 - p0; i++) {
            gradientSumsMaskedAnyWidth(x, dy, y, first + i * stride, spatial, mean[c], t);
            sumDy[c] += t[0];
            sumDyXmu[c] += t[1];
            if (++c == channels) {
                c = 0;
            }
        }
    }

    /** {@link #gradientSums4} with the mask. */
    private static void gradientSumsMasked4(MemorySegment x, MemorySegment dy, MemorySegment y,
                                            long first, long stride, int count, long spatial,
                                            int channels, int c, double[] mean, double[] sumDy,
                                            double[] sumDyXmu) {
        long rowsBytes = 4 * (spatial - spatial % VIRTUAL_LANES);
        long halfBytes = 4 * (spatial - spatial % TAIL_GRANULE);
        DoubleVector z = DoubleVector.zero(DOUBLES);
        for (int i = 0; i < count; i++) {
            long base = first + i * stride;
            double mu = mean[c];
            DoubleVector m = DoubleVector.broadcast(DOUBLES, mu);
            DoubleVector s0 = z, s1 = z, s2 = z, s3 = z;
            DoubleVector q0 = z, q1 = z, q2 = z, q3 = z;
            long end = base + rowsBytes;
            long half = base + halfBytes;
            for (long o = base; o < half; o += ROW_BYTES) {
                DoubleVector g0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                g0 = g0.blend(0.0, ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
                s0 = s0.add(g0);
                q0 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g0, q0);
                DoubleVector g1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                g1 = g1.blend(0.0, ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
                s1 = s1.add(g1);
                q1 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 4L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g1, q1);
                if (o == end) {
                    break;                    // a half row: lanes 0..15
                }
                DoubleVector g2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                g2 = g2.blend(0.0, ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
                s2 = s2.add(g2);
                q2 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 8L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g2, q2);
                DoubleVector g3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0));
                g3 = g3.blend(0.0, ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
                s3 = s3.add(g3);
                q3 = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o + 12L * DL, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g3, q3);
            }
            double t1 = 0, t2 = 0;
            for (long o = half, stop = base + 4 * spatial; o < stop; o += 4) {
                double g = y.get(F32, o) <= 0f ? 0.0 : dy.get(F32, o);
                double d = (double) x.get(F32, o) - mu;
                t1 += g;
                t2 = Math.fma(d, g, t2);
            }
            // LaneTree's order in registers: halves added lane by lane, then within the vector.
            DoubleVector s = s0.add(s2).add(s1.add(s3));
            s = s.add(s.rearrange(HALF_UP));
            s = s.add(s.rearrange(QUARTER_UP));
            s = s.add(s.rearrange(EIGHTH_UP));
            DoubleVector q = q0.add(q2).add(q1.add(q3));
            q = q.add(q.rearrange(HALF_UP));
            q = q.add(q.rearrange(QUARTER_UP));
            q = q.add(q.rearrange(EIGHTH_UP));
            sumDy[c] += s.lane(0) + t1;
            sumDyXmu[c] += q.lane(0) + t2;
            if (++c == channels) {
                c = 0;
            }
        }
    }

    /** {@link #gradientSumsAnyWidth} with the mask. */
    private static void gradientSumsMaskedAnyWidth(MemorySegment x, MemorySegment dy,
                                                   MemorySegment y, long base, long spatial,
                                                   double mean, double[] t) {
        java.util.Arrays.fill(t, 2, ScalarKernels.SCRATCH, 0.0);
        DoubleVector m = DoubleVector.broadcast(DOUBLES, mean);
        long half = base + 4 * (spatial - spatial % TAIL_GRANULE);
        for (long o = base; o < half; o += 4L * DL) {
            int lane = 2 + (int) ((o - base) / 4 % VIRTUAL_LANES);
            DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
            g = g.blend(DoubleVector.zero(DOUBLES), ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
            DoubleVector.fromArray(DOUBLES, t, lane).add(g).intoArray(t, lane);
            ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g, DoubleVector.fromArray(DOUBLES, t, VIRTUAL_LANES + lane))
                    .intoArray(t, VIRTUAL_LANES + lane);
        }
        double t1 = 0, t2 = 0;
        for (long o = half, stop = base + 4 * spatial; o < stop; o += 4) {
            double g = y.get(F32, o) <= 0f ? 0.0 : dy.get(F32, o);
            double d = (double) x.get(F32, o) - mean;
            t1 += g;
            t2 = Math.fma(d, g, t2);
        }
        t[0] = LaneTree.combine(t, 2, t1);
        t[1] = LaneTree.combine(t, 2 + VIRTUAL_LANES, t2);
    }

    @Override
    public void rowGradientSumsMasked(MemorySegment x, MemorySegment dy, MemorySegment y,
                                      int channels, long row0, long row1, int c0, int c1,
                                      double[] mean, double[] sumDy, double[] sumDyXmu) {
        if (DL == 2) {
            // At 128 bits the masked loops allocated per call (8x64 rows: 70 KB; 2x16x5x7: 140
            // KB): the 2-lane double compare and blend of the mask are boxed, where the float
            // ones of the dx pass are not. The scalar loop gives the same bits (each channel adds
            // its rows in order). MERGE NOTE: 128 bits is the width of NEON, not only of tests.
            SCALAR_MASKED.rowGradientSumsMasked(x, dy, y, channels, row0, row1, c0, c1, mean, sumDy, sumDyXmu);
            return;
        }
        for (int c = c0; c < c1; c++) {
            sumDy[c] = 0;
            sumDyXmu[c] = 0;
        }
        long rowBytes = 4L * channels;
        int rowBlock = channels >= WIDE_ROW_CHANNELS ? WIDE_ROW_BLOCK : ROW_BLOCK;
        int vectorEnd = c0 + (c1 - c0) / DL * DL;
        for (long r = row0; r < row1; r += rowBlock) {
            int rows = (int) Math.min(rowBlock, row1 - r);
            long base = r * rowBytes;
            for (int c = c0; c < vectorEnd; c += DL) {
                DoubleVector m = DoubleVector.fromArray(DOUBLES, mean, c);
                DoubleVector a = DoubleVector.fromArray(DOUBLES, sumDy, c);
                DoubleVector q = DoubleVector.fromArray(DOUBLES, sumDyXmu, c);
                long o = base + 4L * c;
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    DoubleVector g = ((DoubleVector) FloatVector.fromMemorySegment(HALF, dy, o, NATIVE).convertShape(F2D, DOUBLES, 0));
                    g = g.blend(DoubleVector.zero(DOUBLES), ((DoubleVector) FloatVector.fromMemorySegment(HALF, y, o, NATIVE).convertShape(F2D, DOUBLES, 0)).compare(VectorOperators.LE, 0.0));
                    a = a.add(g);
                    q = ((DoubleVector) FloatVector.fromMemorySegment(HALF, x, o, NATIVE).convertShape(F2D, DOUBLES, 0)).sub(m).fma(g, q);
                }
                a.intoArray(sumDy, c);
                q.intoArray(sumDyXmu, c);
            }
            for (int c = vectorEnd; c < c1; c++) {
                long o = base + 4L * c;
                double a = sumDy[c], q = sumDyXmu[c], m = mean[c];
                for (int i = 0; i < rows; i++, o += rowBytes) {
                    double g = y.get(F32, o) <= 0f ? 0.0 : dy.get(F32, o);
                    double d = (double) x.get(F32, o) - m;
                    a += g;
                    q = Math.fma(d, g, q);
                }
                sumDy[c] = a;
                sumDyXmu[c] = q;
            }
        }
    }
}
