package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vecnorm.TestData.Distribution;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;
import java.util.TreeSet;
import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.broadcast.Broadcast;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import scala.Product;
import scala.Tuple2;
import scala.Tuple3;
import scala.Tuple4;

/**
 * Synchronized BatchNorm as an Apache Spark job: a batch split into partitions of unequal sizes,
 * one shard of whole images each, every shard a tensor of its own with its own BatchNorm.
 * <ol>
 *   <li>each partition accumulates its shard's {@link ChannelStatistics} and returns them as
 *       bytes, tagged with its partition index;</li>
 *   <li>the driver collects them, orders them by partition index itself, merges them with
 *       {@link ChannelStatistics#merged} and broadcasts the merged bytes;</li>
 *   <li>each partition normalises its shard with the merged statistics;</li>
 *   <li>backward likewise: {@link GradientStatistics} per shard (with the merged float mean),
 *       merged by index on the driver, broadcast, dx per shard.</li>
 * </ol>
 * Not {@code treeAggregate} or {@code reduce}: they combine partials in the order tasks finish,
 * which changes from run to run, and so would the bits. Merged by index, the result depends on
 * the shards only: it is checked against the double reference within the bounds of the parts
 * actually reduced (each shard's chunks, offset into the batch, as in
 * {@code StatisticsProperties.shardsNormaliseAsTheWholeBatch}), and its bits against the same
 * shards accumulated, merged and normalised in this process, for local[1], local[2] and local[4]
 * (hence also the same bits for every number of executor threads).
 */
class SparkSyncBatchNormTest {

    private static final int CHANNELS = 24;
    private static final int HEIGHT = 7;
    private static final int WIDTH = 9;
    /** Images per partition. */
    private static final int[] SHARD_IMAGES = {2, 5, 3, 4};
    private static final int BATCH = Arrays.stream(SHARD_IMAGES).sum();
    private static final int PER_IMAGE = CHANNELS * HEIGHT * WIDTH;
    private static final float EPS = 1e-5f;
    private static final long SEED = 0x5eed_5a4bL;
    private static final List<String> MASTERS = List.of("local[1]", "local[2]", "local[4]");

    /**
     * What a training step gives: the forward's y, mean and variance, the backward's gradients,
     * and the merged statistics and gradient sums (the bytes of their doubles) they came from.
     */
    record Step(Runs.Training forward, Runs.Backward backward, byte[] statistics, byte[] sums) {
    }

    @ParameterizedTest
    @EnumSource(Layout.class)
    @Timeout(180)
    void partitionsNormaliseAsTheWholeBatch(Layout layout) {
        TensorShape shape = shape(layout, BATCH);
        float[] x = TestData.tensor(shape, SEED, ForwardProperties.kindsFrom(Distribution.NORMAL));
        float[] gamma = TestData.gaussian(CHANNELS, SEED + 1, 1);
        float[] beta = TestData.gaussian(CHANNELS, SEED + 2, 1);
        float[] dy = BackwardProperties.upstream(x.length, SEED + 5);
        List<float[]> xs = shards(x), dys = shards(dy);
        long[] parts = partsInBatchUnits(shape);
        String at = shape + " in partitions of " + Arrays.toString(SHARD_IMAGES) + " images";

        Step inProcess = inProcess(layout, xs, dys, gamma, beta);
        Step first = null;
        for (String master : MASTERS) {
            Step spark = onSpark(master, layout, xs, dys, gamma, beta);
            String where = at + ", " + master;
            Expect.trainingMatchesReference(shape, x, gamma, beta, EPS, spark.forward(), where, parts);
            BackwardProperties.checkBackward(shape, x, dy, gamma, spark.forward().mean(),
                    spark.forward().variance(), EPS, spark.backward(), where);
            if (first != null) {
                expectSameBits(first, spark, where + " against " + MASTERS.getFirst());
            }
            expectSameBits(inProcess, spark, where + " against the same shards in this process");
            first = spark;
        }
    }

    // ---- The Spark job. Tasks are static methods whose closures capture only serializable
    // values (the layout, gamma, beta, the mean, broadcasts), as on a cluster.

    static Step onSpark(String master, Layout layout, List<float[]> xs, List<float[]> dys,
                        float[] gamma, float[] beta) {
        SparkConf conf = new SparkConf()
                .setMaster(master)
                .setAppName("vecnorm synchronized BatchNorm")
                .set("spark.ui.enabled", "false")
                .set("spark.driver.host", "127.0.0.1")
                .set("spark.driver.bindAddress", "127.0.0.1");
        int partitions = xs.size();
        // One SparkContext per JVM at a time: closed before the next master starts its own.
        try (JavaSparkContext sc = new JavaSparkContext(conf)) {
            List<Tuple2<Integer, float[]>> xElements = new ArrayList<>();
            List<Tuple3<Integer, float[], float[]>> gradElements = new ArrayList<>();
            for (int i = 0; i < partitions; i++) {
                xElements.add(new Tuple2<>(i, xs.get(i)));
                gradElements.add(new Tuple3<>(i, xs.get(i), dys.get(i)));
            }
            // As many slices as elements: partition i holds shard i.
            JavaRDD<Tuple2<Integer, float[]>> shards = sc.parallelize(xElements, partitions);

            // Stage 1: each shard's statistics, as bytes.
            List<Tuple2<Integer, byte[]>> partials = shards.mapPartitionsWithIndex(
                    (Integer p, Iterator<Tuple2<Integer, float[]>> it) ->
                            List.of(new Tuple2<>(p, statistics(layout, only(p, it)._2()))).iterator(),
                    true).collect();
            byte[] statistics = mergeStatistics(partials, partitions);
            Broadcast<byte[]> merged = sc.broadcast(statistics);

            // Stage 2: every shard normalised with the merged statistics.
            List<Tuple4<Integer, float[], float[], float[]>> normalised = shards.mapPartitionsWithIndex(
                    (Integer p, Iterator<Tuple2<Integer, float[]>> it) ->
                            List.of(normalise(p, layout, merged.value(), only(p, it)._2(), gamma, beta)).iterator(),
                    true).collect();
            Runs.Training forward = gatherForward(normalised, partitions);

            // Stage 3: each shard's gradient sums, with the merged mean that stage 2 wrote.
            float[] mean = forward.mean(), variance = forward.variance();
            JavaRDD<Tuple3<Integer, float[], float[]>> grads = sc.parallelize(gradElements, partitions);
            List<Tuple2<Integer, byte[]>> gradPartials = grads.mapPartitionsWithIndex(
                    (Integer p, Iterator<Tuple3<Integer, float[], float[]>> it) -> {
                        Tuple3<Integer, float[], float[]> t = only(p, it);
                        return List.of(new Tuple2<>(p, gradientSums(layout, t._2(), t._3(), mean))).iterator();
                    }, true).collect();
            byte[] gradientSums = mergeGradients(gradPartials, partitions);
            Broadcast<byte[]> sums = sc.broadcast(gradientSums);

            // Stage 4: every shard's dx (and the batch's dgamma, dbeta) from the merged sums.
            List<Tuple4<Integer, float[], float[], float[]>> backward = grads.mapPartitionsWithIndex(
                    (Integer p, Iterator<Tuple3<Integer, float[], float[]>> it) -> {
                        Tuple3<Integer, float[], float[]> t = only(p, it);
                        return List.of(backward(p, layout, sums.value(), t._2(), t._3(), gamma, mean,
                                variance)).iterator();
                    }, true).collect();
            Tuple2<float[], float[][]> dx = gather(backward, partitions, "dgamma", "dbeta");
            merged.destroy();
            sums.destroy();
            return new Step(forward, new Runs.Backward(dx._1(), dx._2()[0], dx._2()[1]), statistics, gradientSums);
        }
    }

    /** The partition's only element, whose index must be the partition's. */
    static <T extends Product> T only(int partition, Iterator<T> it) {
        if (!it.hasNext()) {
            throw new IllegalStateException("partition " + partition + ": expected one shard, got none");
        }
        T t = it.next();
        if (!t.productElement(0).equals(partition) || it.hasNext()) {
            throw new IllegalStateException("partition " + partition + ": expected its own shard only, got "
                    + t.productElement(0) + (it.hasNext() ? " and more" : ""));
        }
        return t;
    }

    /** Stage 1, on an executor. */
    static byte[] statistics(Layout layout, float[] x) {
        BatchNorm bn = norm(layout, x.length);
        ChannelStatistics s = new ChannelStatistics(CHANNELS).accumulate(bn, MemorySegment.ofArray(x));
        byte[] bytes = new byte[8 * (int) ChannelStatistics.doubles(CHANNELS)];
        s.writeTo(MemorySegment.ofArray(bytes));
        return bytes;
    }

    /** On the driver: the partials read and merged in partition order, as bytes to broadcast. */
    static byte[] mergeStatistics(List<Tuple2<Integer, byte[]>> partials, int partitions) {
        List<ChannelStatistics> parts = new ArrayList<>();
        for (byte[] b : byIndex(partials, partitions)) {
            parts.add(ChannelStatistics.readFrom(MemorySegment.ofArray(b), CHANNELS));
        }
        byte[] bytes = new byte[8 * (int) ChannelStatistics.doubles(CHANNELS)];
        ChannelStatistics.merged(parts).writeTo(MemorySegment.ofArray(bytes));
        return bytes;
    }

    /** Stage 2, on an executor: (index, y, mean, variance). */
    static Tuple4<Integer, float[], float[], float[]> normalise(int p, Layout layout, byte[] merged,
                                                              float[] x, float[] gamma, float[] beta) {
        BatchNorm bn = norm(layout, x.length);
        float[] y = new float[x.length], mean = new float[CHANNELS], variance = new float[CHANNELS];
        bn.forwardTraining(ChannelStatistics.readFrom(MemorySegment.ofArray(merged), CHANNELS),
                MemorySegment.ofArray(x), MemorySegment.ofArray(gamma), MemorySegment.ofArray(beta),
                MemorySegment.ofArray(y), MemorySegment.ofArray(mean), MemorySegment.ofArray(variance));
        return new Tuple4<>(p, y, mean, variance);
    }

    /** Stage 3, on an executor. */
    static byte[] gradientSums(Layout layout, float[] x, float[] dy, float[] mean) {
        BatchNorm bn = norm(layout, x.length);
        GradientStatistics s = new GradientStatistics(CHANNELS).accumulate(bn, MemorySegment.ofArray(x),
                MemorySegment.ofArray(dy), MemorySegment.ofArray(mean));
        byte[] bytes = new byte[8 * (int) GradientStatistics.doubles(CHANNELS)];
        s.writeTo(MemorySegment.ofArray(bytes));
        return bytes;
    }

    /** On the driver: the gradient sums added in partition order, as bytes to broadcast. */
    static byte[] mergeGradients(List<Tuple2<Integer, byte[]>> partials, int partitions) {
        List<GradientStatistics> parts = new ArrayList<>();
        for (byte[] b : byIndex(partials, partitions)) {
            parts.add(GradientStatistics.readFrom(MemorySegment.ofArray(b), CHANNELS));
        }
        byte[] bytes = new byte[8 * (int) GradientStatistics.doubles(CHANNELS)];
        GradientStatistics.merged(parts).writeTo(MemorySegment.ofArray(bytes));
        return bytes;
    }

    /** Stage 4, on an executor: (index, dx, dgamma, dbeta). */
    static Tuple4<Integer, float[], float[], float[]> backward(int p, Layout layout, byte[] sums, float[] x,
                                                             float[] dy, float[] gamma, float[] mean,
                                                             float[] variance) {
        BatchNorm bn = norm(layout, x.length);
        float[] dx = new float[x.length], dgamma = new float[CHANNELS], dbeta = new float[CHANNELS];
        bn.backward(GradientStatistics.readFrom(MemorySegment.ofArray(sums), CHANNELS),
                MemorySegment.ofArray(x), MemorySegment.ofArray(dy), MemorySegment.ofArray(gamma),
                MemorySegment.ofArray(mean), MemorySegment.ofArray(variance),
                MemorySegment.ofArray(dx), MemorySegment.ofArray(dgamma), MemorySegment.ofArray(dbeta));
        return new Tuple4<>(p, dx, dgamma, dbeta);
    }

    /** The partials ordered by the index they carry (not by arrival): each index exactly once. */
    static byte[][] byIndex(List<Tuple2<Integer, byte[]>> partials, int partitions) {
        byte[][] out = new byte[partitions][];
        for (Tuple2<Integer, byte[]> t : partials) {
            int p = t._1();
            if (p < 0 || p >= partitions || out[p] != null) {
                throw new IllegalStateException("partial of partition " + p + ": expected each of 0 to "
                        + (partitions - 1) + " once");
            }
            out[p] = t._2();
        }
        for (int p = 0; p < partitions; p++) {
            if (out[p] == null) {
                throw new IllegalStateException("no partial from partition " + p);
            }
        }
        return out;
    }

    private static Runs.Training gatherForward(List<Tuple4<Integer, float[], float[], float[]>> results,
                                               int partitions) {
        Tuple2<float[], float[][]> g = gather(results, partitions, "mean", "variance");
        return new Runs.Training(g._1(), g._2()[0], g._2()[1]);
    }

    /**
     * The shards' tensors concatenated in partition order, and the two per-channel vectors that
     * every partition must have written with the same bits.
     */
    private static Tuple2<float[], float[][]> gather(List<Tuple4<Integer, float[], float[], float[]>> results,
                                                     int partitions, String second, String third) {
        List<Tuple4<Integer, float[], float[], float[]>> byIndex = new ArrayList<>(results);
        byIndex.sort(Comparator.comparing(Tuple4::_1));
        assertEquals(partitions, byIndex.size(), "results");
        float[] all = new float[BATCH * PER_IMAGE];
        int offset = 0;
        for (int p = 0; p < partitions; p++) {
            assertEquals(p, byIndex.get(p)._1(), "the index of result " + p);
            float[] part = byIndex.get(p)._2();
            assertEquals(SHARD_IMAGES[p] * PER_IMAGE, part.length, "partition " + p + "'s tensor");
            System.arraycopy(part, 0, all, offset, part.length);
            offset += part.length;
            Expect.bitwiseEqual("partition " + p + "'s " + second, byIndex.getFirst()._3(), byIndex.get(p)._3(), "");
            Expect.bitwiseEqual("partition " + p + "'s " + third, byIndex.getFirst()._4(), byIndex.get(p)._4(), "");
        }
        return new Tuple2<>(all, new float[][] {byIndex.getFirst()._3(), byIndex.getFirst()._4()});
    }

    // ---- The same shards in this process (StatisticsProperties.shardsNormaliseAsTheWholeBatch).

    static Step inProcess(Layout layout, List<float[]> xs, List<float[]> dys, float[] gamma, float[] beta) {
        int shards = xs.size();
        try (Arena arena = Arena.ofShared()) {
            BatchNorm[] bns = new BatchNorm[shards];
            MemorySegment[] x = new MemorySegment[shards];
            List<ChannelStatistics> partials = new ArrayList<>();
            for (int i = 0; i < shards; i++) {
                bns[i] = norm(layout, xs.get(i).length);
                x[i] = Segments.of(arena, xs.get(i));
                partials.add(StatisticsProperties.viaBytes(new ChannelStatistics(CHANNELS).accumulate(bns[i], x[i]), arena));
            }
            ChannelStatistics merged = ChannelStatistics.merged(partials);
            float[] y = new float[BATCH * PER_IMAGE];
            Runs.Training t = null;
            for (int i = 0, offset = 0; i < shards; offset += xs.get(i).length, i++) {
                t = StatisticsProperties.normalise(bns[i], merged, x[i], gamma, beta, arena);
                System.arraycopy(t.y(), 0, y, offset, t.y().length);
            }
            float[] mean = t.mean(), var = t.variance();
            List<GradientStatistics> sums = new ArrayList<>();
            for (int i = 0; i < shards; i++) {
                sums.add(StatisticsProperties.viaBytes(new GradientStatistics(CHANNELS).accumulate(bns[i], x[i],
                        Segments.of(arena, dys.get(i)), Segments.of(arena, mean)), arena));
            }
            GradientStatistics all = GradientStatistics.merged(sums);
            float[] dx = new float[BATCH * PER_IMAGE];
            Runs.Backward b = null;
            for (int i = 0, offset = 0; i < shards; offset += xs.get(i).length, i++) {
                b = StatisticsProperties.backward(bns[i], all, xs.get(i), dys.get(i), gamma, mean, var, arena);
                System.arraycopy(b.dx(), 0, dx, offset, b.dx().length);
            }
            MemorySegment statistics = arena.allocate(8 * ChannelStatistics.doubles(CHANNELS));
            merged.writeTo(statistics);
            MemorySegment sumBytes = arena.allocate(8 * GradientStatistics.doubles(CHANNELS));
            all.writeTo(sumBytes);
            return new Step(new Runs.Training(y, mean, var), new Runs.Backward(dx, b.dgamma(), b.dbeta()),
                    statistics.toArray(ValueLayout.JAVA_BYTE), sumBytes.toArray(ValueLayout.JAVA_BYTE));
        }
    }

    // ---- Shapes, shards, bounds.

    static TensorShape shape(Layout layout, int images) {
        return layout == Layout.NCHW ? TensorShape.nchw(images, CHANNELS, HEIGHT, WIDTH)
                : TensorShape.nhwc(images, CHANNELS, HEIGHT, WIDTH);
    }

    /** A shard's BatchNorm: its shape has the shard's images. */
    static BatchNorm norm(Layout layout, int floats) {
        return BatchNorm.builder(shape(layout, floats / PER_IMAGE)).epsilon(EPS).build();
    }

    /** The batch's images (N is outermost in both layouts) cut into the shards. */
    static List<float[]> shards(float[] whole) {
        List<float[]> out = new ArrayList<>();
        int from = 0;
        for (int n : SHARD_IMAGES) {
            out.add(Arrays.copyOfRange(whole, from, from + n * PER_IMAGE));
            from += n * PER_IMAGE;
        }
        return out;
    }

    /**
     * The parts the statistics were reduced in, in the whole batch's units (images for NCHW,
     * rows for NHWC): each shard's chunks, offset by the units of the shards before it.
     */
    static long[] partsInBatchUnits(TensorShape whole) {
        long[] chunks = Expect.chunks(whole);
        long unitsPerImage = chunks[chunks.length - 1] / whole.batch();
        TreeSet<Long> parts = new TreeSet<>();
        long firstImage = 0;
        for (int n : SHARD_IMAGES) {
            for (long b : norm(whole.layout(), n * PER_IMAGE).statisticsChunks()) {
                parts.add(firstImage * unitsPerImage + b);
            }
            firstImage += n;
        }
        return parts.stream().mapToLong(Long::longValue).toArray();
    }

    static void expectSameBits(Step expected, Step got, String where) {
        // The doubles first: float outputs can round two slightly different merges alike.
        assertArrayEquals(expected.statistics(), got.statistics(), "merged statistics' bytes, " + where);
        assertArrayEquals(expected.sums(), got.sums(), "merged gradient sums' bytes, " + where);
        Expect.bitwiseEqual("mean", expected.forward().mean(), got.forward().mean(), where);
        Expect.bitwiseEqual("variance", expected.forward().variance(), got.forward().variance(), where);
        Expect.bitwiseEqual("y", expected.forward().y(), got.forward().y(), where);
        Expect.bitwiseEqual("dx", expected.backward().dx(), got.backward().dx(), where);
        Expect.bitwiseEqual("dgamma", expected.backward().dgamma(), got.backward().dgamma(), where);
        Expect.bitwiseEqual("dbeta", expected.backward().dbeta(), got.backward().dbeta(), where);
    }
}
