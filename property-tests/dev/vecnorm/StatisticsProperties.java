package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vecnorm.TestData.Distribution;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.TreeSet;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;

/**
 * Statistics split into parts ({@link ChannelStatistics}, {@link GradientStatistics}): accumulated
 * part by part, written to bytes and read back, merged by part index, then handed to
 * forwardTraining or backward. For the chunks of a single call the result is that call's, bit
 * for bit; for any other split (a caller's tiles, the shards of a synchronized BatchNorm) it is
 * within the reference's bounds, computed for the parts the reduction actually used: the
 * split's boundaries together with each range's chunks ({@link Bounds#partsError}). Backward's
 * bounds ({@link BackwardProperties}) hold for any order of the double additions.
 */
class StatisticsProperties {

    /** The split's boundaries refined by the chunks', as accumulate reduces it. */
    static long[] refine(long[] split, long[] chunks) {
        TreeSet<Long> all = new TreeSet<>();
        for (long b : split) {
            all.add(b);
        }
        for (long b : chunks) {
            all.add(b);
        }
        return all.stream().mapToLong(Long::longValue).toArray();
    }

    /** 0 = b[0] < ... < b[k] = units, with 1 to 8 parts of random sizes. */
    static long[] randomSplit(long units, SplittableRandom r) {
        int parts = (int) Math.min(units, 1 + r.nextInt(8));
        TreeSet<Long> cuts = new TreeSet<>();
        cuts.add(0L);
        cuts.add(units);
        while (cuts.size() < parts + 1) {
            cuts.add(1 + r.nextLong(units - 1));
        }
        return cuts.stream().mapToLong(Long::longValue).toArray();
    }

    /** Through bytes and back, as an all-gather would move it. */
    static ChannelStatistics viaBytes(ChannelStatistics s, Arena arena) {
        MemorySegment bytes = arena.allocate(8 * ChannelStatistics.doubles(s.channels()));
        s.writeTo(bytes);
        ChannelStatistics back = ChannelStatistics.readFrom(bytes, s.channels());
        MemorySegment again = arena.allocate(bytes.byteSize());
        back.writeTo(again);
        assertEquals(-1, bytes.mismatch(again), "the bytes of statistics read back");
        return back;
    }

    static GradientStatistics viaBytes(GradientStatistics s, Arena arena) {
        MemorySegment bytes = arena.allocate(8 * GradientStatistics.doubles(s.channels()));
        s.writeTo(bytes);
        return GradientStatistics.readFrom(bytes, s.channels());
    }

    /**
     * Parts of [b[k], b[k + 1]) accumulated in reverse order (as workers might finish), each
     * through bytes, then merged by index.
     */
    static ChannelStatistics partsMerged(BatchNorm bn, MemorySegment x, long[] b, Arena arena) {
        ChannelStatistics[] parts = new ChannelStatistics[b.length - 1];
        for (int k = parts.length - 1; k >= 0; k--) {
            parts[k] = viaBytes(new ChannelStatistics(bn.shape().channels()).accumulate(bn, x, b[k], b[k + 1]), arena);
        }
        return ChannelStatistics.merged(Arrays.asList(parts));
    }

    static GradientStatistics gradientPartsMerged(BatchNorm bn, MemorySegment x, MemorySegment dy,
                                                  MemorySegment mean, long[] b, Arena arena) {
        GradientStatistics[] parts = new GradientStatistics[b.length - 1];
        for (int k = parts.length - 1; k >= 0; k--) {
            parts[k] = viaBytes(new GradientStatistics(bn.shape().channels())
                    .accumulate(bn, x, dy, mean, b[k], b[k + 1]), arena);
        }
        return GradientStatistics.merged(Arrays.asList(parts));
    }

    static Runs.Training normalise(BatchNorm bn, ChannelStatistics s, MemorySegment x,
                                   float[] gamma, float[] beta, Arena arena) {
        int channels = bn.shape().channels();
        MemorySegment y = Segments.zeros(arena, bn.shape().elements());
        MemorySegment mean = Segments.zeros(arena, channels), var = Segments.zeros(arena, channels);
        bn.forwardTraining(s, x, gamma == null ? null : Segments.of(arena, gamma),
                beta == null ? null : Segments.of(arena, beta), y, mean, var);
        return new Runs.Training(Segments.toArray(y), Segments.toArray(mean), Segments.toArray(var));
    }

    static Runs.Backward backward(BatchNorm bn, GradientStatistics sums, float[] x, float[] dy,
                                  float[] gamma, float[] mean, float[] var, Arena arena) {
        int channels = bn.shape().channels();
        MemorySegment dx = Segments.zeros(arena, x.length);
        MemorySegment dgamma = Segments.zeros(arena, channels), dbeta = Segments.zeros(arena, channels);
        bn.backward(sums, Segments.of(arena, x), Segments.of(arena, dy),
                gamma == null ? null : Segments.of(arena, gamma), Segments.of(arena, mean),
                Segments.of(arena, var), dx, dgamma, dbeta);
        return new Runs.Backward(Segments.toArray(dx), Segments.toArray(dgamma), Segments.toArray(dbeta));
    }

    @Property
    void theChunksOfACallGiveItsBits(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                     @ForAll long seed, @ForAll Distribution first,
                                     @ForAll boolean affine) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] gamma = affine ? TestData.gaussian(channels, seed + 1, 1) : null;
        float[] beta = affine ? TestData.gaussian(channels, seed + 2, 1) : null;
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        BatchNorm bn = BatchNorm.builder(shape).build();
        BatchNorm parallel = BatchNorm.builder(shape).parallelism(3).build();
        Runs.Training single = Runs.training(bn, x, gamma, beta);
        Runs.Backward singleBackward = Runs.backward(bn, false, x, dy, gamma, single.mean(), single.variance());
        try (Arena arena = Arena.ofShared()) {
            MemorySegment xs = Segments.of(arena, x);
            long[] chunks = bn.statisticsChunks();
            ChannelStatistics merged = partsMerged(bn, xs, chunks, arena);
            assertEquals(shape.perChannel(), merged.count(), "count");
            Runs.Training split = normalise(parallel, merged, xs, gamma, beta, arena);
            String at = shape + " chunks " + Arrays.toString(chunks);
            Expect.bitwiseEqual("y", single.y(), split.y(), at);
            Expect.bitwiseEqual("mean", single.mean(), split.mean(), at);
            Expect.bitwiseEqual("variance", single.variance(), split.variance(), at);

            MemorySegment mean = Segments.zeros(arena, channels), var = Segments.zeros(arena, channels);
            new ChannelStatistics(channels).accumulate(bn, xs).finish(mean, var);
            Expect.bitwiseEqual("mean of accumulate(x)", single.mean(), Segments.toArray(mean), at);
            Expect.bitwiseEqual("variance of accumulate(x)", single.variance(), Segments.toArray(var), at);

            GradientStatistics sums = gradientPartsMerged(bn, xs, Segments.of(arena, dy),
                    Segments.of(arena, single.mean()), chunks, arena);
            Runs.Backward b = backward(parallel, sums, x, dy, gamma, single.mean(), single.variance(), arena);
            Expect.bitwiseEqual("dx", singleBackward.dx(), b.dx(), at);
            Expect.bitwiseEqual("dgamma", singleBackward.dgamma(), b.dgamma(), at);
            Expect.bitwiseEqual("dbeta", singleBackward.dbeta(), b.dbeta(), at);
        }
    }

    @Property
    void anySplitIsWithinTheBounds(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                   @ForAll(supplier = Shapes.Epsilon.class) float eps,
                                   @ForAll long seed, @ForAll Distribution first) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] beta = TestData.gaussian(channels, seed + 2, 1);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        BatchNorm bn = BatchNorm.builder(shape).epsilon(eps).build();
        long[] chunks = bn.statisticsChunks();
        long[] split = randomSplit(chunks[chunks.length - 1], new SplittableRandom(seed));
        String at = shape + " eps " + eps + " split " + Arrays.toString(split);
        try (Arena arena = Arena.ofShared()) {
            MemorySegment xs = Segments.of(arena, x);
            Runs.Training got = normalise(bn, partsMerged(bn, xs, split, arena), xs, gamma, beta, arena);
            Expect.trainingMatchesReference(shape, x, gamma, beta, eps, got, at, refine(split, chunks));
            GradientStatistics sums = gradientPartsMerged(bn, xs, Segments.of(arena, dy),
                    Segments.of(arena, got.mean()), split, arena);
            Runs.Backward b = backward(bn, sums, x, dy, gamma, got.mean(), got.variance(), arena);
            BackwardProperties.checkBackward(shape, x, dy, gamma, got.mean(), got.variance(), eps, b, at);
        }
    }

    /**
     * Synchronized BatchNorm in one process: the batch's images split into shards of random
     * sizes, each shard a tensor of its own with its own BatchNorm; each accumulates its shard,
     * the partials are merged by shard index and every shard normalises itself (and computes dx)
     * with the merged statistics (sums). Together: the forward and backward of the whole batch,
     * within the bounds for the parts used (each shard's chunks, offset to the batch's units).
     */
    @Property(tries = 50)
    void shardsNormaliseAsTheWholeBatch(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                        @ForAll long seed, @ForAll Distribution first) {
        if (shape.batch() < 2) {
            return;
        }
        int channels = shape.channels();
        float eps = 1e-5f;
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] beta = TestData.gaussian(channels, seed + 2, 1);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        long[] images = randomSplit(shape.batch(), new SplittableRandom(seed));
        int shards = images.length - 1;
        long perImage = shape.elements() / shape.batch();
        long unitsPerImage = Expect.chunks(shape)[Expect.chunks(shape).length - 1] / shape.batch();
        String at = shape + " shards at images " + Arrays.toString(images);
        try (Arena arena = Arena.ofShared()) {
            BatchNorm[] bns = new BatchNorm[shards];
            MemorySegment[] xs = new MemorySegment[shards];
            List<ChannelStatistics> partials = new ArrayList<>();
            List<Long> parts = new ArrayList<>();
            for (int i = 0; i < shards; i++) {
                int n = (int) (images[i + 1] - images[i]);
                TensorShape sh = new TensorShape(n, channels, shape.spatial(), shape.layout());
                bns[i] = BatchNorm.builder(sh).epsilon(eps).build();
                xs[i] = Segments.of(arena, Arrays.copyOfRange(x, (int) (images[i] * perImage),
                        (int) (images[i + 1] * perImage)));
                partials.add(viaBytes(new ChannelStatistics(channels).accumulate(bns[i], xs[i]), arena));
                for (long b : bns[i].statisticsChunks()) {
                    parts.add(images[i] * unitsPerImage + b);
                }
            }
            ChannelStatistics merged = ChannelStatistics.merged(partials);
            float[] y = new float[x.length];
            float[] mean = null, var = null;
            for (int i = 0; i < shards; i++) {
                Runs.Training t = normalise(bns[i], merged, xs[i], gamma, beta, arena);
                System.arraycopy(t.y(), 0, y, (int) (images[i] * perImage), t.y().length);
                if (mean != null) {
                    Expect.bitwiseEqual("every shard's mean", mean, t.mean(), at);
                    Expect.bitwiseEqual("every shard's variance", var, t.variance(), at);
                }
                mean = t.mean();
                var = t.variance();
            }
            long[] used = parts.stream().mapToLong(Long::longValue).distinct().sorted().toArray();
            Expect.trainingMatchesReference(shape, x, gamma, beta, eps, new Runs.Training(y, mean, var), at, used);

            List<GradientStatistics> sums = new ArrayList<>();
            MemorySegment[] dys = new MemorySegment[shards];
            for (int i = 0; i < shards; i++) {
                dys[i] = Segments.of(arena, Arrays.copyOfRange(dy, (int) (images[i] * perImage),
                        (int) (images[i + 1] * perImage)));
                sums.add(viaBytes(new GradientStatistics(channels).accumulate(bns[i], xs[i], dys[i],
                        Segments.of(arena, mean)), arena));
            }
            GradientStatistics all = GradientStatistics.merged(sums);
            assertEquals(shape.perChannel(), all.count(), "gradient count");
            float[] dx = new float[x.length];
            Runs.Backward last = null;
            for (int i = 0; i < shards; i++) {
                Runs.Backward b = backward(bns[i], all, Segments.toArray(xs[i]), Segments.toArray(dys[i]),
                        gamma, mean, var, arena);
                System.arraycopy(b.dx(), 0, dx, (int) (images[i] * perImage), b.dx().length);
                last = b;
            }
            BackwardProperties.checkBackward(shape, x, dy, gamma, mean, var, eps,
                    new Runs.Backward(dx, last.dgamma(), last.dbeta()), at);
        }
    }
}
