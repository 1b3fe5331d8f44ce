package dev.vecnorm.kernel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import dev.vecnorm.TensorShape;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The NCHW engine walks blocks of channels, each reduced and then transformed while cached, or
 * takes two passes in memory order (a plane at a time); the choice and the block size come from
 * the cache sizes and the thread count, and must not change a bit. This test forces two passes
 * and several block sizes, with one and four threads, on small shapes, for the plain and the
 * fused ReLU backward. Channel 1 is a far channel, whose outputs the engine computes in double
 * after the kernels' pass, per block or at the end.
 */
class StrategyEquivalenceTest {

    private static final ExecutorService POOL = Executors.newFixedThreadPool(3);

    @AfterAll
    static void shutdown() {
        POOL.shutdownNow();
    }

    @ParameterizedTest
    @CsvSource({"3, 5, 49", "4, 3, 600", "2, 7, 1000", "6, 2, 12544", "5, 33, 196"})
    void everyStrategyGivesTheSameBits(int n, int c, long spatial) {
        TensorShape shape = new TensorShape(n, c, spatial, dev.vecnorm.Layout.NCHW);
        long e = shape.elements();
        float[][] results = null;
        for (Integer block : new Integer[] {null, 0, 1, 2, 4, c}) {
            for (int threads : new int[] {1, 4}) {
                BatchNormEngine engine = new BatchNormEngine(KernelProvider.kernels(), shape, 1e-3f,
                        threads, POOL, block, null);
                results = sameBits(results, run(engine, shape, e),
                        "block=" + block + " threads=" + threads + " " + shape);
            }
        }
    }

    /**
     * NHWC: the row reductions take four rows per accumulator load, or one row at a time when x
     * streams from memory (over twice the L3, so never on test-sized tensors unless forced); both
     * walks, with one and four threads, must give the same bits, also for the statistics
     * accumulated in parts.
     */
    @ParameterizedTest
    @CsvSource({"3, 5, 49", "4, 64, 37", "2, 48, 1000", "1, 300, 70"})
    void bothRowWalksGiveTheSameBits(int n, int c, long spatial) {
        TensorShape shape = new TensorShape(n, c, spatial, dev.vecnorm.Layout.NHWC);
        long e = shape.elements();
        float[][] results = null;
        for (Boolean fromMemory : new Boolean[] {null, false, true}) {
            for (int threads : new int[] {1, 4}) {
                BatchNormEngine engine = new BatchNormEngine(KernelProvider.kernels(), shape, 1e-3f,
                        threads, POOL, null, fromMemory);
                results = sameBits(results, run(engine, shape, e),
                        "fromMemory=" + fromMemory + " threads=" + threads + " " + shape);
            }
        }
    }

    /** The first run's outputs, after asserting that {@code r} has their bits (if there were any). */
    private static float[][] sameBits(float[][] first, float[][] r, String label) {
        if (first == null) {
            return r;
        }
        for (int i = 0; i < r.length; i++) {
            assertArrayEquals(first[i], r[i], 0f, "output " + i + " " + label);
        }
        return first;
    }

    private static float[][] run(BatchNormEngine engine, TensorShape shape, long e) {
        int c = shape.channels();
        try (Arena arena = Arena.ofShared()) {
            SplittableRandom r = new SplittableRandom(7);
            MemorySegment x = arena.allocate(4 * e), dy = arena.allocate(4 * e);
            long spatial = shape.spatial();
            for (long i = 0; i < e; i++) {
                // Channel 1 is far (see BatchNormEngine.FAR_MEAN): +3e38 once, then -3e38.
                float v = (float) (3 + r.nextDouble(-1, 1));
                if (c > 1 && (i / spatial) % c == 1) {
                    v = i == spatial ? 3e38f : -3e38f;
                }
                x.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
                dy.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextDouble(-1, 1));
            }
            MemorySegment y = arena.allocate(4 * e), dx = arena.allocate(4 * e);
            MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
            MemorySegment dg = arena.allocate(4L * c), db = arena.allocate(4L * c);
            engine.forwardTraining(x, null, null, y, mean, var);
            engine.backward(x, dy, null, mean, var, dx, dg, db, false);
            MemorySegment fdx = arena.allocate(4 * e), fdg = arena.allocate(4L * c);
            engine.backward(x, dy, null, mean, var, fdx, fdg, null, true);
            // Fused ReLU backward, with y as the mask (about half of it <= 0): g is written in
            // one pass over the tensor in the two-pass walk, per channel block otherwise.
            MemorySegment rdx = arena.allocate(4 * e), rdg = arena.allocate(4L * c);
            MemorySegment rdb = arena.allocate(4L * c), rdres = arena.allocate(4 * e);
            MemorySegment adx = arena.allocate(4 * e);
            engine.backward(x, dy, y, null, mean, var, rdx, null, rdg, rdb, false);
            engine.backward(x, dy, y, null, mean, var, adx, rdres, null, null, false);
            // The statistics accumulated in two parts, and the gradient sums of the first part.
            ChannelMoments parts = new ChannelMoments(c);
            long units = engine.units(), half = units / 2;
            engine.accumulate(x, 0, half, parts);
            engine.accumulate(x, half, units, parts);
            double[] sumDy = new double[c], sumDyXmu = new double[c];
            engine.accumulateGradient(x, dy, mean, 0, Math.max(1, half), sumDy, sumDyXmu);
            float[] accumulated = new float[4 * c];
            for (int ch = 0; ch < c; ch++) {
                accumulated[ch] = (float) parts.mean(ch);
                accumulated[c + ch] = (float) parts.m2(ch);
                accumulated[2 * c + ch] = (float) sumDy[ch];
                accumulated[3 * c + ch] = (float) sumDyXmu[ch];
            }
            float[][] masked = workspaceRuns(engine, arena, x, dy, e, c);
            ValueLayout.OfFloat f = ValueLayout.JAVA_FLOAT;
            return new float[][] {y.toArray(f), mean.toArray(f), var.toArray(f), dx.toArray(f),
                dg.toArray(f), db.toArray(f), fdx.toArray(f), fdg.toArray(f), rdx.toArray(f),
                rdg.toArray(f), rdb.toArray(f), adx.toArray(f), rdres.toArray(f), accumulated,
                masked[0], masked[1], masked[2], masked[3], masked[4]};
        }
    }

    /**
     * The ReLU forward that writes the mask workspace, and the backward that reads it (without
     * and with a residual's gradient), beside the forward without it and the backward that
     * takes y: each pair must agree bit for bit, and the workspace must hold y's mask (bit e set
     * exactly where !(y[e] <= 0)); it is written a piece at a time, in blocks or in two passes,
     * and the far channel's bits are fixed after the kernels' pass.
     */
    private static float[][] workspaceRuns(BatchNormEngine engine, Arena arena, MemorySegment x,
                                           MemorySegment dy, long e, int c) {
        ValueLayout.OfFloat f = ValueLayout.JAVA_FLOAT;
        MemorySegment y = arena.allocate(4 * e), yw = arena.allocate(4 * e);
        MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
        MemorySegment ws = arena.allocate(ReluMask.bytes(e), 8);
        ws.fill((byte) 0x5a);                      // the forward must clear what it does not set
        engine.forwardTraining(x, null, null, null, null, y, mean, var, true);
        engine.forwardTraining(x, null, null, null, null, yw, mean, var, true, ws);
        assertArrayEquals(y.toArray(f), yw.toArray(f), 0f, "y with the workspace");
        for (long i = 0; i < e; i++) {
            boolean pass = !(y.getAtIndex(f, i) <= 0f);
            if (ReluMask.passes(ws, i) != pass) {
                throw new AssertionError("mask bit " + i + ": expected " + pass + " (y = "
                        + y.getAtIndex(f, i) + ")");
            }
        }
        MemorySegment dx = arena.allocate(4 * e), dxw = arena.allocate(4 * e);
        MemorySegment dg = arena.allocate(4L * c), dgw = arena.allocate(4L * c);
        MemorySegment db = arena.allocate(4L * c), dbw = arena.allocate(4L * c);
        MemorySegment dres = arena.allocate(4 * e), dresw = arena.allocate(4 * e);
        MemorySegment adx = arena.allocate(4 * e), adxw = arena.allocate(4 * e);
        engine.backward(x, dy, y, null, mean, var, dx, null, dg, db, false);
        engine.backwardMasked(x, dy, ws, null, mean, var, dxw, null, dgw, dbw);
        engine.backward(x, dy, y, null, mean, var, adx, dres, null, null, false);
        engine.backwardMasked(x, dy, ws, null, mean, var, adxw, dresw, null, null);
        assertArrayEquals(dx.toArray(f), dxw.toArray(f), 0f, "dx from the workspace");
        assertArrayEquals(dg.toArray(f), dgw.toArray(f), 0f, "dgamma from the workspace");
        assertArrayEquals(db.toArray(f), dbw.toArray(f), 0f, "dbeta from the workspace");
        assertArrayEquals(adx.toArray(f), adxw.toArray(f), 0f, "dx with dresidual, from the workspace");
        assertArrayEquals(dres.toArray(f), dresw.toArray(f), 0f, "dresidual from the workspace");
        return new float[][] {yw.toArray(f), dxw.toArray(f), dgw.toArray(f), adxw.toArray(f),
            dresw.toArray(f)};
    }
}
