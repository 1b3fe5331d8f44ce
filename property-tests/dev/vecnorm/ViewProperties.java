package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.TestData.Distribution;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;

/**
 * Strided views ({@link BatchNorm.Builder#inputStride}, {@link BatchNorm.Builder#outputStride})
 * against the same data made dense: every call gives the dense call's bits in the view's
 * blocks and leaves the gaps between them untouched (they hold a NaN pattern no kernel
 * writes). Strides are random: a few floats more than dense, or a channel slice's (whole
 * planes or pixels more).
 */
class ViewProperties {

    static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    /** A NaN with a payload: what the gaps hold. */
    static final float GAP = Float.intBitsToFloat(0x7fc0dead);

    /** One tensor geometry: units blocks of unit floats, stride floats apart. */
    record Geometry(long units, long unit, long stride) {
        long floats() {
            return (units - 1) * stride + unit;
        }

        MemorySegment view(Arena arena, float[] dense) {
            MemorySegment s = arena.allocate(4 * floats(), 64);
            s.fill((byte) 0);
            for (long i = 0; i < floats(); i++) {
                s.setAtIndex(F32, i, GAP);
            }
            for (long u = 0; u < units; u++) {
                MemorySegment.copy(dense, (int) (u * unit), s, F32, 4 * u * stride, (int) unit);
            }
            return s;
        }

        /** The blocks, made dense, gaps unchecked. */
        float[] blocks(MemorySegment s) {
            float[] d = new float[(int) (units * unit)];
            for (long u = 0; u < units; u++) {
                MemorySegment.copy(s, F32, 4 * u * stride, d, (int) (u * unit), (int) unit);
            }
            return d;
        }

        /** The blocks, made dense; fails if a gap lost its pattern. */
        float[] dense(MemorySegment s, String what) {
            float[] d = new float[(int) (units * unit)];
            for (long u = 0; u < units; u++) {
                MemorySegment.copy(s, F32, 4 * u * stride, d, (int) (u * unit), (int) unit);
                for (long g = u * stride + unit; u + 1 < units && g < (u + 1) * stride; g++) {
                    int bits = Float.floatToRawIntBits(s.getAtIndex(F32, g));
                    assertTrue(bits == Float.floatToRawIntBits(GAP), what + ": gap float " + g + " written");
                }
            }
            return d;
        }
    }

    static long randomStride(TensorShape shape, SplittableRandom r) {
        boolean nchw = shape.layout() == Layout.NCHW;
        long unit = nchw ? shape.channels() * shape.spatial() : shape.channels();
        return switch (r.nextInt(3)) {
            case 0 -> unit;                                             // dense
            case 1 -> unit + 1 + r.nextInt(37);                         // a few floats more
            default -> unit + (1 + r.nextInt(3)) * (nchw ? shape.spatial() : 1) * (1 + r.nextInt(8)); // a channel slice
        };
    }

    @Property(tries = 60)
    void everyCallOnViewsGivesTheDenseBits(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                           @ForAll long seed, @ForAll boolean relu) {
        SplittableRandom r = new SplittableRandom(seed);
        int channels = shape.channels();
        long inStride = randomStride(shape, r), outStride = randomStride(shape, r);
        int parallelism = 1 + r.nextInt(3);
        boolean nchw = shape.layout() == Layout.NCHW;
        long units = nchw ? shape.batch() : shape.perChannel(), unit = shape.elements() / units;
        Geometry in = new Geometry(units, unit, inStride), out = new Geometry(units, unit, outStride);
        Activation act = relu ? Activation.RELU : Activation.NONE;
        BatchNorm dense = BatchNorm.builder(shape).activation(act).parallelism(parallelism).build();
        BatchNorm view = BatchNorm.builder(shape).activation(act).parallelism(parallelism)
                .inputStride(inStride).outputStride(outStride).build();
        String at = shape + " strides " + inStride + ", " + outStride + " relu " + relu + " threads " + parallelism;

        float[] x = TestData.tensor(shape, seed, ForwardProperties.kindsFrom(Distribution.NORMAL));
        float[] res = TestData.gaussian(x.length, seed + 3, 1);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        float[] gamma = TestData.gaussian(channels, seed + 1, 1), beta = TestData.gaussian(channels, seed + 2, 1);
        try (Arena arena = Arena.ofShared()) {
            MemorySegment g = Segments.of(arena, gamma), b = Segments.of(arena, beta);
            MemorySegment xd = Segments.of(arena, x), rd = Segments.of(arena, res), dyd = Segments.of(arena, dy);
            MemorySegment xv = in.view(arena, x), rv = out.view(arena, res), dyv = out.view(arena, dy);
            MemorySegment mean = Segments.zeros(arena, channels), var = Segments.zeros(arena, channels);
            MemorySegment mean2 = Segments.zeros(arena, channels), var2 = Segments.zeros(arena, channels);

            // forwardTraining with a residual: y = act(bn(x) + residual)
            MemorySegment yd = Segments.zeros(arena, x.length), yv = out.view(arena, new float[x.length]);
            dense.forwardTraining(xd, rd, g, b, yd, mean, var);
            view.forwardTraining(xv, rv, g, b, yv, mean2, var2);
            Expect.bitwiseEqual("training y", Segments.toArray(yd), out.dense(yv, "training y"), at);
            Expect.bitwiseEqual("mean", Segments.toArray(mean), Segments.toArray(mean2), at);
            Expect.bitwiseEqual("variance", Segments.toArray(var), Segments.toArray(var2), at);

            // inference, plain
            MemorySegment yi = Segments.zeros(arena, x.length), yiv = out.view(arena, new float[x.length]);
            dense.forwardInference(xd, g, b, mean, var, yi);
            view.forwardInference(xv, g, b, mean, var, yiv);
            Expect.bitwiseEqual("inference y", Segments.toArray(yi), out.dense(yiv, "inference y"), at);

            // statistics accumulated from the view, then normalising with them
            ChannelStatistics s = new ChannelStatistics(channels).accumulate(view, xv);
            MemorySegment ys = out.view(arena, new float[x.length]);
            view.forwardTraining(s, xv, rv, g, b, ys, mean2, var2);
            Expect.bitwiseEqual("y from statistics", Segments.toArray(yd), out.dense(ys, "y from statistics"), at);

            // backward, fused (ReLU's mask from y, the residual's gradient), then frozen
            MemorySegment dxd = Segments.zeros(arena, x.length), drd = Segments.zeros(arena, x.length);
            MemorySegment dxv = in.view(arena, new float[x.length]), drv = out.view(arena, new float[x.length]);
            MemorySegment dgd = Segments.zeros(arena, channels), dbd = Segments.zeros(arena, channels);
            MemorySegment dgv = Segments.zeros(arena, channels), dbv = Segments.zeros(arena, channels);
            dense.backward(xd, dyd, yd, g, mean, var, dxd, drd, dgd, dbd);
            view.backward(xv, dyv, yv, g, mean, var, dxv, drv, dgv, dbv);
            Expect.bitwiseEqual("dx", Segments.toArray(dxd), in.dense(dxv, "dx"), at);
            Expect.bitwiseEqual("dresidual", Segments.toArray(drd), out.dense(drv, "dresidual"), at);
            Expect.bitwiseEqual("dgamma", Segments.toArray(dgd), Segments.toArray(dgv), at);
            Expect.bitwiseEqual("dbeta", Segments.toArray(dbd), Segments.toArray(dbv), at);
            MemorySegment dxv2 = in.view(arena, new float[x.length]);
            dense.backward(xd, dyd, yd, g, mean, var, dxd, null, dgd, dbd);
            view.backward(xv, dyv, yv, g, mean, var, dxv2, null, dgv, dbv);
            Expect.bitwiseEqual("dx without dresidual", Segments.toArray(dxd), in.dense(dxv2, "dx"), at);
            dense.backwardWithFrozenStatistics(xd, dyd, yd, g, mean, var, dxd, null, null, null);
            view.backwardWithFrozenStatistics(xv, dyv, yv, g, mean, var, dxv2, null, null, null);
            Expect.bitwiseEqual("frozen dx", Segments.toArray(dxd), in.dense(dxv2, "frozen dx"), at);
            if (!relu) {
                dense.backwardWithFrozenStatistics(xd, dyd, g, mean, var, dxd, dgd, dbd);
                view.backwardWithFrozenStatistics(xv, dyv, g, mean, var, dxv2, dgv, dbv);
                Expect.bitwiseEqual("plain frozen dx", Segments.toArray(dxd), in.dense(dxv2, "plain frozen dx"), at);
                GradientStatistics sums = new GradientStatistics(channels).accumulate(view, xv, dyv, mean);
                dense.backward(xd, dyd, g, mean, var, dxd, dgd, dbd);
                view.backward(sums, xv, dyv, g, mean, var, dxv2, dgv, dbv);
                Expect.bitwiseEqual("dx from sums", Segments.toArray(dxd), in.dense(dxv2, "dx from sums"), at);
                Expect.bitwiseEqual("dgamma from sums", Segments.toArray(dgd), Segments.toArray(dgv), at);
            }
        }
    }

    /** In place with equal strides: y over x, dx over dy, the dense in-place bits. */
    @Property(tries = 40)
    void inPlaceViewsWithEqualStrides(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                      @ForAll long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        long stride = randomStride(shape, r);
        boolean nchw = shape.layout() == Layout.NCHW;
        long units = nchw ? shape.batch() : shape.perChannel(), unit = shape.elements() / units;
        Geometry v = new Geometry(units, unit, stride);
        BatchNorm dense = BatchNorm.builder(shape).build();
        BatchNorm view = BatchNorm.builder(shape).inputStride(stride).outputStride(stride).build();
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        float[] dy = BackwardProperties.upstream(x.length, seed + 5);
        int c = shape.channels();
        try (Arena arena = Arena.ofShared()) {
            MemorySegment xd = Segments.of(arena, x), xv = v.view(arena, x);
            MemorySegment m = Segments.zeros(arena, c), s2 = Segments.zeros(arena, c);
            MemorySegment xd0 = Segments.of(arena, x), xv0 = v.view(arena, x);
            dense.forwardTraining(xd, null, null, xd, m, s2);
            view.forwardTraining(xv, null, null, xv, Segments.zeros(arena, c), Segments.zeros(arena, c));
            Expect.bitwiseEqual("in-place y", Segments.toArray(xd), v.dense(xv, "y"), shape + " stride " + stride);
            MemorySegment dyd = Segments.of(arena, dy), dyv = v.view(arena, dy);
            dense.backward(xd0, dyd, null, m, s2, dyd, null, null);
            view.backward(xv0, dyv, null, m, s2, dyv, null, null);
            Expect.bitwiseEqual("in-place dx", Segments.toArray(dyd), v.dense(dyv, "dx"), shape + " stride " + stride);
        }
    }

    /**
     * Two channel slices of one buffer (the halves of a concatenation) are disjoint although
     * their byte ranges interleave: normalising one into the other is accepted and correct;
     * slices that share a plane (or pixel) are rejected before anything is written.
     */
    @Property(tries = 30)
    void interleavedSlicesOfOneBuffer(@ForAll(supplier = Shapes.Any.class) TensorShape shape,
                                      @ForAll long seed) {
        int c = shape.channels();
        boolean nchw = shape.layout() == Layout.NCHW;
        long perChannel = nchw ? shape.spatial() : 1;             // floats of one channel in a block
        long units = nchw ? shape.batch() : shape.perChannel(), unit = shape.elements() / units;
        long stride = 2 * unit;                                  // a buffer of 2C channels
        Geometry half = new Geometry(units, unit, stride);
        BatchNorm view = BatchNorm.builder(shape).inputStride(stride).outputStride(stride).build();
        BatchNorm dense = BatchNorm.builder(shape).build();
        float[] x = TestData.tensor(shape, seed, Distribution.NORMAL);
        try (Arena arena = Arena.ofShared()) {
            MemorySegment buffer = arena.allocate(4 * (half.floats() + unit), 64);
            MemorySegment xs = buffer.asSlice(0, 4 * half.floats());
            MemorySegment ys = buffer.asSlice(4 * unit, 4 * half.floats());
            MemorySegment.copy(half.view(arena, x), 0, xs, 0, xs.byteSize());
            MemorySegment m = Segments.zeros(arena, c), v = Segments.zeros(arena, c);
            view.forwardTraining(xs, null, null, ys, m, v);
            MemorySegment yd = Segments.zeros(arena, x.length);
            dense.forwardTraining(Segments.of(arena, x), null, null, yd, Segments.zeros(arena, c), Segments.zeros(arena, c));
            // Each slice's gaps are the other's blocks.
            Expect.bitwiseEqual("y in the other half", Segments.toArray(yd), half.blocks(ys), shape.toString());
            Expect.bitwiseEqual("x kept", x, half.blocks(xs), shape.toString());
            if (c > 1) {
                long by = perChannel;                             // shifted by one channel: shares planes
                MemorySegment overlapping = buffer.asSlice(4 * by, 4 * half.floats());
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> view.forwardTraining(xs, null, null, overlapping, m, v));
                assertTrue(e.getMessage().startsWith("y:"), e.getMessage());
            }
        }
    }
}
