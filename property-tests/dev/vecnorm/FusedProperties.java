package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vecnorm.TestData.Distribution;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;

/**
 * The fused calls (activation RELU or NONE, with and without a residual) against the
 * double-precision reference extended with ReLU and the residual.
 *
 * <p>Bounds. The fused forward computes t = the plain call's float (whose error against the exact
 * bn(x) is at most B, {@link Bounds#trainingOutput} or {@link Bounds#inferenceOutput}), then
 * s = fl(t + r), one more float rounding: |s - (t + r)| <= u |t + r| <= u (|bn(x) + r| + B),
 * and an exact sum when it is subnormal. So |s - (bn(x) + r)| <= B + u (|bn(x) + r| + B). ReLU is
 * exact and 1-Lipschitz (|max(0, p) - max(0, q)| <= |p - q|), so the same bound holds for y.
 * Without a residual there is no add and the bound stays B.
 *
 * <p>The fused backward is the plain backward with dy replaced by g = (y <= 0 ? 0 : dy), computed
 * exactly from the given y (a comparison), so {@link BackwardProperties#checkBackward}'s bounds
 * apply with dy := g, and dresidual must be g bit for bit.
 */
class FusedProperties {

    /** A residual of the same magnitude as y, so the add and the ReLU both matter. */
    static float[] residual(int count, long seed) {
        return TestData.gaussian(count, seed, 1);
    }

    static BatchNorm fused(TensorShape shape, float eps, boolean relu) {
        return BatchNorm.builder(shape).epsilon(eps).activation(relu ? Activation.RELU : Activation.NONE).build();
    }

    @Property
    void trainingMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                  @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                  @ForAll Distribution first, @ForAll boolean withResidual,
                                  @ForAll boolean relu) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] r = withResidual ? residual(x.length, seed + 9) : null;
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] beta = TestData.gaussian(channels, seed + 2, 1);
        Runs.Training got = Runs.fusedTraining(fused(shape, eps, relu), x, r, gamma, beta);
        Reference.Moments ref = Reference.moments(shape, x);
        double[] pre = Reference.transform(shape, x, Reference.widen(gamma), Reference.widen(beta),
                ref.mean(), ref.variance(), eps);
        double[] expected = Reference.activate(pre, r, relu);
        double[] plainBounds = Expect.trainingOutputBounds(shape, x, gamma, beta, eps);
        // The statistics are those of x alone: the plain call's bits (ForwardProperties checks those).
        Runs.Training plain = Runs.training(BatchNorm.builder(shape).epsilon(eps).build(), x, gamma, beta);
        Expect.bitwiseEqual("mean", plain.mean(), got.mean(), shape.toString());
        Expect.bitwiseEqual("variance", plain.variance(), got.variance(), shape.toString());
        for (int i = 0; i < x.length; i++) {
            double s = pre[i] + (r == null ? 0 : r[i]);
            Expect.within("fused y", got.y()[i], expected[i], fusedBound(plainBounds[i], s, r != null),
                    shape + " relu " + relu + " residual " + withResidual + ", element " + i + ", x " + x[i]);
        }
    }

    /** B, or with a residual B + u (|bn(x) + r| + B): see the class comment. */
    static double fusedBound(double plainBound, double exactSum, boolean withResidual) {
        return withResidual ? plainBound + Bounds.U * (Math.abs(exactSum) + plainBound) : plainBound;
    }

    @Property
    void inferenceMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                   @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                   @ForAll Distribution first, @ForAll boolean withResidual,
                                   @ForAll boolean relu) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] r = withResidual ? residual(x.length, seed + 9) : null;
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] beta = TestData.gaussian(channels, seed + 2, 1);
        Reference.Moments batch = Reference.moments(shape, x);
        float[] mean = new float[channels], variance = new float[channels];
        for (int c = 0; c < channels; c++) {
            mean[c] = (float) batch.mean()[c];
            variance[c] = (float) batch.variance()[c];
        }
        float[] y = Runs.fusedInference(fused(shape, eps, relu), x, r, gamma, beta, mean, variance);
        double[] g = Reference.widen(gamma), b = Reference.widen(beta);
        double[] pre = Reference.transform(shape, x, g, b, Reference.widen(mean), Reference.widen(variance), eps);
        double[] expected = Reference.activate(pre, r, relu);
        for (int c = 0; c < channels; c++) {
            double a = g[c] / Math.sqrt((double) variance[c] + eps);
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    double bound = Bounds.inferenceOutput(a, (double) x[i] - mean[c], b[c]);
                    Expect.within("fused inference y", y[i], expected[i],
                            fusedBound(bound, pre[i] + (r == null ? 0 : r[i]), r != null),
                            shape + ", channel " + c + " relu " + relu + " residual " + withResidual);
                }
            }
        }
    }

    @Property
    void backwardMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                  @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                  @ForAll Distribution first, @ForAll boolean withResidual,
                                  @ForAll boolean relu) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] r = withResidual ? residual(x.length, seed + 9) : null;
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        BatchNorm bn = fused(shape, eps, relu);
        Runs.Training fwd = Runs.fusedTraining(bn, x, r, gamma, null);
        Runs.FusedBackward got = Runs.fusedBackward(bn, false, x, dy, fwd.y(), gamma, fwd.mean(), fwd.variance());
        float[] g = exactly(relu ? Reference.reluBackward(dy, fwd.y()) : Reference.widen(dy));
        Expect.bitwiseEqual("dresidual", g, got.dresidual(), shape.toString());
        BackwardProperties.checkBackward(shape, x, g, gamma, fwd.mean(), fwd.variance(), eps, got.plain(),
                shape + " relu " + relu + " residual " + withResidual);
    }

    /** Frozen statistics: dx = fl(fl(A) g), 2u |A g| as for the plain frozen backward; dbeta = sum(g). */
    @Property
    void frozenBackwardMatchesReference(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                        @ForAll(supplier = Shapes.Epsilon.class) float eps, @ForAll long seed,
                                        @ForAll boolean relu) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] y = TestData.gaussian(x.length, seed + 6, 1);   // any forward output will do
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        float[] mean = TestData.gaussian(channels, seed + 2, 1);
        float[] var = TestData.gaussian(channels, seed + 3, 1);
        for (int c = 0; c < channels; c++) {
            var[c] = Math.abs(var[c]);
        }
        Runs.FusedBackward got = Runs.fusedBackward(fused(shape, eps, relu), true, x, dy, y, gamma, mean, var);
        double[] g = relu ? Reference.reluBackward(dy, y) : Reference.widen(dy);
        Reference.Gradients ref = Reference.backward(shape, Reference.widen(x), g, Reference.widen(gamma),
                Reference.widen(mean), Reference.widen(var), eps);
        Expect.bitwiseEqual("dresidual", exactly(g), got.dresidual(), shape.toString());
        for (int c = 0; c < channels; c++) {
            double a = gamma[c] / Math.sqrt((double) var[c] + eps);
            double absG = 0;
            for (int n = 0; n < shape.batch(); n++) {
                for (long s = 0; s < shape.spatial(); s++) {
                    int i = Reference.index(shape, n, c, s);
                    absG += Math.abs(g[i]);
                    Expect.within("frozen fused dx", got.dx()[i], a * g[i],
                            (2 * Bounds.U + 8 * Bounds.W) * Math.abs(a * g[i]) + 2 * Bounds.TINY,
                            shape + ", channel " + c);
                }
            }
            Expect.within("frozen fused dbeta", got.dbeta()[c], ref.dbeta()[c], Bounds.U * Math.abs(ref.dbeta()[c])
                    + 2.0 * (shape.perChannel() + 8) * Bounds.W * absG + Bounds.TINY, shape.toString());
        }
    }

    /**
     * Where the forward output is 0 the gradient is masked: dy there is never used, so replacing
     * it (by NaN, even) leaves every output's bits unchanged, and dresidual there is +0.
     */
    @Property(tries = 200)
    void maskedElementsContributeNothing(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                         @ForAll long seed, @ForAll boolean frozen) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        float[] r = residual(x.length, seed + 9);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        BatchNorm bn = fused(shape, 1e-5f, true);
        Runs.Training fwd = Runs.fusedTraining(bn, x, r, null, null);
        float[] other = dy.clone();
        for (int i = 0; i < x.length; i++) {
            if (fwd.y()[i] == 0) {
                other[i] = i % 2 == 0 ? Float.NaN : 1e30f;
            }
        }
        Runs.FusedBackward a = Runs.fusedBackward(bn, frozen, x, dy, fwd.y(), null, fwd.mean(), fwd.variance());
        Runs.FusedBackward b = Runs.fusedBackward(bn, frozen, x, other, fwd.y(), null, fwd.mean(), fwd.variance());
        String at = shape + " frozen " + frozen;
        Expect.bitwiseEqual("dx", a.dx(), b.dx(), at);
        Expect.bitwiseEqual("dresidual", a.dresidual(), b.dresidual(), at);
        Expect.bitwiseEqual("dgamma", a.dgamma(), b.dgamma(), at);
        Expect.bitwiseEqual("dbeta", a.dbeta(), b.dbeta(), at);
        for (int i = 0; i < x.length; i++) {
            if (fwd.y()[i] == 0) {
                assertEquals(0, Float.floatToRawIntBits(a.dresidual()[i]), "dresidual at " + i + " " + at);
            }
        }
        assertEquals(channels, a.dbeta().length);
    }

    /**
     * The fused calls of an instance with activation NONE and no residual, or with a residual of
     * zeros, are the plain calls bit for bit (t + 0 = t; the 10-argument backward without a mask
     * is the 8-argument one), and RELU's y is the plain y through v <= 0 ? +0 : v.
     */
    @Property(tries = 200)
    void fusedCallsReduceToThePlainOnes(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                        @ForAll long seed, @ForAll Distribution first) {
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
        float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
        BatchNorm plain = BatchNorm.builder(shape).build();
        Runs.Training p = Runs.training(plain, x, gamma, beta);
        Runs.Training zeros = Runs.fusedTraining(plain, x, new float[x.length], gamma, beta);
        String at = shape.toString();
        for (int i = 0; i < x.length; i++) {
            // t + (+0) = t except for t = -0, which gives +0.
            float t = p.y()[i];
            assertEquals(Float.floatToRawIntBits(t + 0f), Float.floatToRawIntBits(zeros.y()[i]), "y + 0 at " + i);
        }
        Runs.Training relu = Runs.training(fused(shape, 1e-5f, true), x, gamma, beta);
        float[] expected = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            float v = p.y()[i];
            expected[i] = v <= 0f ? 0f : v;
            assertEquals(Float.valueOf(Math.max(0f, v)), Float.valueOf(expected[i]), "the same as max(0, y)");
        }
        Expect.bitwiseEqual("relu y", expected, relu.y(), at);
        for (boolean frozen : new boolean[] {false, true}) {
            Runs.Backward b8 = Runs.backward(plain, frozen, x, dy, gamma, p.mean(), p.variance());
            Runs.FusedBackward b10 = Runs.fusedBackward(plain, frozen, x, dy, null, gamma, p.mean(), p.variance());
            Expect.bitwiseEqual("dx", b8.dx(), b10.dx(), at + " frozen " + frozen);
            Expect.bitwiseEqual("dgamma", b8.dgamma(), b10.dgamma(), at);
            Expect.bitwiseEqual("dbeta", b8.dbeta(), b10.dbeta(), at);
            Expect.bitwiseEqual("dresidual = dy", dy, b10.dresidual(), at);
        }
    }

    /**
     * The mask workspace: the forward that writes it gives the y, mean and variance of the
     * forward without it, and bit i is set exactly where !(y[i] <= 0); the backward that reads it
     * gives the bits of the backward that takes y (out of place, dx over dy, dresidual over dy),
     * at any parallelism. Bits, not bounds: g = bit ? dy : +0 is the same float as y's mask gives.
     */
    @Property(tries = 100)
    void workspaceGivesTheBitsOfTheYForm(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                         @ForAll long seed, @ForAll Distribution first,
                                         @ForAll boolean withResidual,
                                         @ForAll @net.jqwik.api.constraints.IntRange(min = 0, max = 2) int inPlace,
                                         @ForAll @net.jqwik.api.constraints.IntRange(min = 1, max = 3) int parallelism) {
        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(first));
        float[] r = withResidual ? residual(x.length, seed + 9) : null;
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
        float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
        BatchNorm bn = BatchNorm.builder(shape).activation(Activation.RELU).parallelism(parallelism).build();
        Runs.Training fwd = Runs.fusedTraining(bn, x, r, gamma, beta);
        Runs.FusedBackward yForm = Runs.fusedBackward(bn, false, x, dy, fwd.y(), gamma, fwd.mean(), fwd.variance());
        Runs.Masked w = Runs.workspaceRun(bn, x, r, dy, gamma, beta, inPlace);
        String at = shape + " residual " + withResidual + " inPlace " + inPlace + " parallelism " + parallelism;
        Expect.bitwiseEqual("y", fwd.y(), w.forward().y(), at);
        Expect.bitwiseEqual("mean", fwd.mean(), w.forward().mean(), at);
        Expect.bitwiseEqual("variance", fwd.variance(), w.forward().variance(), at);
        assertEquals(Math.ceilDiv(x.length, 64) + 1, w.mask().length, "words of the mask and the spare one");
        for (int i = 0; i < w.mask().length * 64; i++) {
            boolean bit = (w.mask()[i >>> 6] >>> (i & 63) & 1) != 0;
            assertEquals(i < x.length && !(fwd.y()[i] <= 0f), bit, "mask bit " + i + " " + at);
        }
        Expect.bitwiseEqual("dx", yForm.dx(), w.backward().dx(), at);
        Expect.bitwiseEqual("dresidual", yForm.dresidual(), w.backward().dresidual(), at);
        Expect.bitwiseEqual("dgamma", yForm.dgamma(), w.backward().dgamma(), at);
        Expect.bitwiseEqual("dbeta", yForm.dbeta(), w.backward().dbeta(), at);
    }

    /** In place (y over x, y over the residual, dx or dresidual over dy) gives the same bits. */
    @Property(tries = 60)
    void inPlaceEqualsOutOfPlace(@ForAll(supplier = Shapes.Any.class) TensorShape shape, @ForAll long seed,
                                 @ForAll boolean training) {
        int channels = shape.channels();
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        float[] r = residual(x.length, seed + 9);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(channels, seed + 1, 1);
        BatchNorm bn = fused(shape, 1e-5f, true);
        Runs.Training out = Runs.fusedTraining(bn, x, r, gamma, null);
        float[] inference = Runs.fusedInference(bn, x, r, gamma, null, out.mean(), out.variance());
        float[] expectY = training ? out.y() : inference;
        Runs.FusedBackward grads = Runs.fusedBackward(bn, false, x, dy, out.y(), gamma, out.mean(), out.variance());
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment g = Segments.of(arena, gamma);
            MemorySegment mean = training ? Segments.zeros(arena, channels) : Segments.of(arena, out.mean());
            MemorySegment var = training ? Segments.zeros(arena, channels) : Segments.of(arena, out.variance());
            for (boolean overX : new boolean[] {true, false}) {
                MemorySegment xs = Segments.of(arena, x), rs = Segments.of(arena, r);
                MemorySegment y = overX ? xs : rs;
                if (training) {
                    bn.forwardTraining(xs, rs, g, null, y, mean, var);
                } else {
                    bn.forwardInference(xs, rs, g, null, mean, var, y);
                }
                Expect.bitwiseEqual("y over " + (overX ? "x" : "residual"), expectY, Segments.toArray(y), shape.toString());
            }
            MemorySegment xs = Segments.of(arena, x), ys = Segments.of(arena, out.y());
            MemorySegment ms = Segments.of(arena, out.mean()), vs = Segments.of(arena, out.variance());
            MemorySegment dys = Segments.of(arena, dy), dres = Segments.zeros(arena, x.length);
            bn.backward(xs, dys, ys, g, ms, vs, dys, dres, null, null);
            Expect.bitwiseEqual("dx over dy", grads.dx(), Segments.toArray(dys), shape.toString());
            Expect.bitwiseEqual("dresidual", grads.dresidual(), Segments.toArray(dres), shape.toString());
            dys = Segments.of(arena, dy);
            MemorySegment dx = Segments.zeros(arena, x.length);
            bn.backward(xs, dys, ys, g, ms, vs, dx, dys, null, null);
            Expect.bitwiseEqual("dx", grads.dx(), Segments.toArray(dx), shape.toString());
            Expect.bitwiseEqual("dresidual over dy", grads.dresidual(), Segments.toArray(dys), shape.toString());
        }
    }

    /** Values that are floats (dy, or 0), as floats: exact. */
    private static float[] exactly(double[] v) {
        float[] f = new float[v.length];
        for (int i = 0; i < v.length; i++) {
            f[i] = (float) v[i];
            if (f[i] != v[i] && !Double.isNaN(v[i])) {
                throw new AssertionError("not a float: " + v[i]);
            }
        }
        return f;
    }
}
