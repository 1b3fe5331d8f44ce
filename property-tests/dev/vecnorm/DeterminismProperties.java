package dev.vecnorm;

import dev.vecnorm.TestData.Distribution;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.lifecycle.AfterContainer;

/**
 * Every output (y, mean, variance, dx, dgamma, dbeta) has the same bits for every parallelism:
 * the chunks of each reduction depend on the shape only and are merged in a fixed order.
 * Shapes include few channels and many threads, where NCHW switches from one task per channel to
 * chunk tasks, so both paths are compared with each other.
 */
class DeterminismProperties {

    private static final ExecutorService POOL = Executors.newFixedThreadPool(4);

    @AfterContainer
    static void shutdown() {
        POOL.shutdownNow();
    }

    /**
     * Shapes of 65 536 to about 200 000 elements (smaller ones always run on the calling thread):
     * few and many channels, so NCHW takes both its per-channel and its chunked path.
     */
    @Provide
    Arbitrary<TensorShape> shapes() {
        return net.jqwik.api.Combinators.combine(Arbitraries.integers().between(1, 8),
                Arbitraries.of(1, 2, 3, 5, 17, 64, 301), Arbitraries.longs().between(65_536, 200_000),
                Arbitraries.of(Layout.class)).as((n, c, total, layout) -> {
                    long spatial = Math.max(1, Math.ceilDiv(total, (long) n * c));
                    int batch = n * spatial < 2 ? 2 : n;
                    return new TensorShape(batch, c, spatial, layout);
                });
    }

    @Provide
    Arbitrary<Integer> parallelism() {
        return Arbitraries.of(2, 3, 7, 16);
    }

    @Property(tries = 40)
    void outputsAreIdenticalForEveryParallelism(@ForAll("shapes") TensorShape shape,
                                                @ForAll("parallelism") int threads,
                                                @ForAll boolean commonPool, @ForAll long seed,
                                                @ForAll Distribution first) {
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
        float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
        BatchNorm one = BatchNorm.builder(shape).build();
        BatchNorm.Builder b = BatchNorm.builder(shape).parallelism(threads);
        BatchNorm many = (commonPool ? b : b.executor(POOL)).build();
        String context = shape + ", parallelism " + threads;

        Runs.Training t1 = Runs.training(one, x, gamma, beta);
        Runs.Training tn = Runs.training(many, x, gamma, beta);
        Expect.bitwiseEqual("y", t1.y(), tn.y(), context);
        Expect.bitwiseEqual("mean", t1.mean(), tn.mean(), context);
        Expect.bitwiseEqual("variance", t1.variance(), tn.variance(), context);

        Expect.bitwiseEqual("inference y", Runs.inference(one, x, gamma, beta, t1.mean(), t1.variance()),
                Runs.inference(many, x, gamma, beta, t1.mean(), t1.variance()), context);

        for (boolean frozen : new boolean[] {false, true}) {
            Runs.Backward g1 = Runs.backward(one, frozen, x, dy, gamma, t1.mean(), t1.variance());
            Runs.Backward gn = Runs.backward(many, frozen, x, dy, gamma, t1.mean(), t1.variance());
            Expect.bitwiseEqual("dx", g1.dx(), gn.dx(), context + " frozen " + frozen);
            Expect.bitwiseEqual("dgamma", g1.dgamma(), gn.dgamma(), context + " frozen " + frozen);
            Expect.bitwiseEqual("dbeta", g1.dbeta(), gn.dbeta(), context + " frozen " + frozen);
        }
    }

    /** The fused calls (ReLU, the residual, the mask and dresidual), likewise. */
    @Property(tries = 20)
    void fusedOutputsAreIdenticalForEveryParallelism(@ForAll("shapes") TensorShape shape,
                                                     @ForAll("parallelism") int threads, @ForAll long seed,
                                                     @ForAll Distribution first) {
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] r = TestData.gaussian(x.length, seed + 9, 1);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
        float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
        BatchNorm one = BatchNorm.builder(shape).activation(Activation.RELU).build();
        BatchNorm many = BatchNorm.builder(shape).activation(Activation.RELU).parallelism(threads).executor(POOL).build();
        String context = shape + ", parallelism " + threads;
        Runs.Training t1 = Runs.fusedTraining(one, x, r, gamma, beta);
        Runs.Training tn = Runs.fusedTraining(many, x, r, gamma, beta);
        Expect.bitwiseEqual("fused y", t1.y(), tn.y(), context);
        Expect.bitwiseEqual("fused inference y", Runs.fusedInference(one, x, r, gamma, beta, t1.mean(), t1.variance()),
                Runs.fusedInference(many, x, r, gamma, beta, t1.mean(), t1.variance()), context);
        for (boolean frozen : new boolean[] {false, true}) {
            Runs.FusedBackward g1 = Runs.fusedBackward(one, frozen, x, dy, t1.y(), gamma, t1.mean(), t1.variance());
            Runs.FusedBackward gn = Runs.fusedBackward(many, frozen, x, dy, t1.y(), gamma, t1.mean(), t1.variance());
            Expect.bitwiseEqual("fused dx", g1.dx(), gn.dx(), context + " frozen " + frozen);
            Expect.bitwiseEqual("dresidual", g1.dresidual(), gn.dresidual(), context);
            Expect.bitwiseEqual("fused dgamma", g1.dgamma(), gn.dgamma(), context);
            Expect.bitwiseEqual("fused dbeta", g1.dbeta(), gn.dbeta(), context);
        }
    }
}
