package dev.vecnorm;

import dev.vecnorm.kernel.KernelProvider;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.lifecycle.AfterContainer;

/**
 * The norm family's outputs have the same bits for every parallelism and for the scalar kernels:
 * a unit's statistics and transform are one task's, and the per-feature or per-channel sums are
 * cut into chunks fixed by the shape and added in chunk order. Problems of 65 536 floats or more
 * (smaller ones run on the calling thread whatever the parallelism).
 */
class NormDeterminismProperties {

    private static final ExecutorService POOL = Executors.newFixedThreadPool(4);

    @AfterContainer
    static void shutdown() {
        POOL.shutdownNow();
    }

    @Provide
    Arbitrary<NormProperties.Rows> rows() {
        return Combinators.combine(Arbitraries.of(1, 2, 3, 17, 64, 100), Arbitraries.of(1, 2),
                Arbitraries.of(100, 768, 1000, 2048, 4096), Arbitraries.of(0, 5)).as((r, h, f, gap) -> {
                    long rows = Math.max(r, Math.ceilDiv(65_536, (long) h * f));
                    return new NormProperties.Rows(rows, h, f, (long) h * f + gap);
                });
    }

    @Provide
    Arbitrary<NormProperties.Groups> groups() {
        return Combinators.combine(Arbitraries.integers().between(1, 4), Arbitraries.of(4, 32, 64, 96),
                Arbitraries.longs().between(65_536, 150_000), Arbitraries.of(Layout.class),
                Arbitraries.of(1, 2, 4)).as((n, c, total, layout, perGroup) -> {
                    long spatial = Math.max(1, Math.ceilDiv(total, (long) n * c));
                    return new NormProperties.Groups(new TensorShape(n, c, spatial, layout), c / perGroup);
                });
    }

    @Provide
    Arbitrary<Integer> parallelism() {
        return Arbitraries.of(2, 3, 7);
    }

    @Property(tries = 30)
    void rowNormsAreIdenticalForEveryParallelismAndTheScalarKernels(@ForAll("rows") NormProperties.Rows g,
                                                                    @ForAll("parallelism") int threads,
                                                                    @ForAll boolean commonPool, @ForAll long seed) {
        float[] x = NormRuns.strided(NormProperties.rowValues(g, seed, TestData.Distribution.NORMAL), g.rows(),
                g.heads(), g.features(), g.rowStride(), 0f);
        float[] dy = NormRuns.strided(TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed + 1, 1),
                g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
        float[] w = TestData.gaussian(g.features(), seed + 2, 1), b = TestData.gaussian(g.features(), seed + 3, 1);
        LayerNorm.Builder lb = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride());
        LayerNorm one = lb.build();
        LayerNorm many = (commonPool ? lb : lb.executor(POOL)).parallelism(threads).build();
        LayerNorm scalar = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride())
                .kernels(KernelProvider.scalar()).build();
        String context = g + " parallelism " + threads;
        NormRuns.Forward f1 = NormRuns.layerNorm(one, x, w, b, false, 0f);
        for (LayerNorm other : new LayerNorm[] {many, scalar}) {
            NormRuns.Forward f = NormRuns.layerNorm(other, x, w, b, false, 0f);
            Expect.bitwiseEqual("LayerNorm y", f1.y(), f.y(), context + " " + other);
            Expect.bitwiseEqual("LayerNorm rstd", f1.rstd(), f.rstd(), context);
            NormRuns.Backward b1 = NormRuns.layerNormBackward(one, x, dy, w, f1.mean(), f1.rstd(), false);
            NormRuns.Backward bo = NormRuns.layerNormBackward(other, x, dy, w, f1.mean(), f1.rstd(), false);
            Expect.bitwiseEqual("LayerNorm dx", b1.dx(), bo.dx(), context + " " + other);
            Expect.bitwiseEqual("LayerNorm dweight", b1.dw(), bo.dw(), context + " " + other);
            Expect.bitwiseEqual("LayerNorm dbias", b1.db(), bo.db(), context + " " + other);
        }
        RMSNorm.Builder rb = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).unitOffset(true);
        RMSNorm r1 = rb.build();
        RMSNorm rs = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).unitOffset(true)
                .kernels(KernelProvider.scalar()).build();
        RMSNorm rm = (commonPool ? rb : rb.executor(POOL)).parallelism(threads).build();
        NormRuns.Forward q1 = NormRuns.rmsNorm(r1, x, w, false, 0f);
        for (RMSNorm other : new RMSNorm[] {rm, rs}) {
            NormRuns.Forward q = NormRuns.rmsNorm(other, x, w, false, 0f);
            Expect.bitwiseEqual("RMSNorm y", q1.y(), q.y(), context + " " + other);
            NormRuns.Backward d1 = NormRuns.rmsNormBackward(r1, x, dy, w, q1.rstd(), false);
            NormRuns.Backward d = NormRuns.rmsNormBackward(other, x, dy, w, q1.rstd(), false);
            Expect.bitwiseEqual("RMSNorm dx", d1.dx(), d.dx(), context + " " + other);
            Expect.bitwiseEqual("RMSNorm dweight", d1.dw(), d.dw(), context + " " + other);
        }
    }

    @Property(tries = 30)
    void groupNormIsIdenticalForEveryParallelismAndTheScalarKernels(@ForAll("groups") NormProperties.Groups g,
                                                                    @ForAll("parallelism") int threads,
                                                                    @ForAll boolean commonPool, @ForAll long seed) {
        TensorShape shape = g.shape();
        float[] x = TestData.tensor(shape, seed, NormProperties.from(TestData.Distribution.NORMAL));
        float[] dy = TestData.gaussian(x.length, seed + 1, 1);
        float[] w = TestData.gaussian(shape.channels(), seed + 2, 1), b = TestData.gaussian(shape.channels(), seed + 3, 1);
        GroupNorm.Builder gb = GroupNorm.builder(shape, g.groups());
        GroupNorm one = gb.build();
        GroupNorm many = (commonPool ? gb : gb.executor(POOL)).parallelism(threads).build();
        GroupNorm scalar = GroupNorm.builder(shape, g.groups()).kernels(KernelProvider.scalar()).build();
        String context = g + " parallelism " + threads;
        NormRuns.Forward f1 = NormRuns.groupNorm(one, x, w, b, false, false);
        NormRuns.Backward b1 = NormRuns.groupNormBackward(one, x, dy, w, f1.mean(), f1.rstd(), false);
        for (GroupNorm other : new GroupNorm[] {many, scalar}) {
            NormRuns.Forward f = NormRuns.groupNorm(other, x, w, b, false, false);
            Expect.bitwiseEqual("GroupNorm y", f1.y(), f.y(), context + " " + other);
            Expect.bitwiseEqual("GroupNorm mean", f1.mean(), f.mean(), context + " " + other);
            Expect.bitwiseEqual("GroupNorm rstd", f1.rstd(), f.rstd(), context + " " + other);
            NormRuns.Backward bo = NormRuns.groupNormBackward(other, x, dy, w, f1.mean(), f1.rstd(), false);
            Expect.bitwiseEqual("GroupNorm dx", b1.dx(), bo.dx(), context + " " + other);
            Expect.bitwiseEqual("GroupNorm dweight", b1.dw(), bo.dw(), context + " " + other);
            Expect.bitwiseEqual("GroupNorm dbias", b1.db(), bo.db(), context + " " + other);
        }
    }
}
