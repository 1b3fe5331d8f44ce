package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.BatchNormFolding.WeightLayout;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * End to end: a ResNet basic block in inference,
 * {@code y = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)} (torchvision's {@code BasicBlock}: 3x3
 * convolutions, stride 1, padding 1, no bias), its state given as PyTorch's
 * {@code block.state_dict()} names it ({@code conv1.weight}, {@code bn1.weight},
 * {@code bn1.running_mean}, ..., {@code bn2.num_batches_tracked}) and loaded into two
 * {@link BatchNormLayer}s. The unfolded path (convolution, then the layer in eval mode) and the
 * folded one ({@link BatchNormLayer#fold} into each convolution) are each checked against the
 * block computed in double, and against each other.
 *
 * <p>Bounds, per element, u = 2^-24. The test's convolutions add in double and round the output
 * to float once. Stage by stage, with e the bound of the value's distance from its exact
 * counterpart, a = gamma / sqrt(var + eps), and relu 1-Lipschitz (it never widens an error):
 * <pre>
 *   unfolded  z1 = fl(conv(x, w1))         e = u |z1*|
 *             h1 = relu(bn1(z1))           e = |a1| e(z1) + inferenceOutput(a1, z1 - m1, beta1)
 *             z2 = fl(conv(h1, w2))        e = conv(e(h1), |w2|) + u |z2|
 *             u2 = bn2(z2)                 e = |a2| e(z2) + inferenceOutput(a2, z2 - m2, beta2)
 *             y  = relu(fl(u2 + x))        e = e(u2) + u |fl(u2 + x)|
 *   folded    h1 = relu(fl(conv(x, w1') + b1'))
 *                  e = u |a1| conv(|x|, |w1|) + u |b1'| + u |pre-relu value|
 *                  (each w1' = w1 a1 (1 + d), |d| <= u, and b1' rounded once)
 *             u2 = fl(conv(h1, w2') + b2')
 *                  e = conv(e(h1), |w2'|) + u |a2| conv(|h1| + e(h1), |w2|) + u |b2'| + u |u2|
 *             y  = relu(fl(u2 + x))        e = e(u2) + u |fl(u2 + x)|
 * </pre>
 * ({@link Bounds#inferenceOutput} is the kernel's own bound.) The double arithmetic of the three
 * evaluations (two paths and the exact block) does at most 2 (K + 10) roundings of relative size
 * w = 2^-53 along any term's path, on terms no larger than the absolute-value chain
 * G = |a2| (conv(|a1| (conv(|x|, |w1|) + |m1|) + |beta1|, |w2|) + |m2|) + |beta2| + |x|;
 * 8 (K + 10) w G covers them, plus 8 x 2^-150 for subnormal roundings.
 */
class ResNetBlockExampleTest {

    static final int N = 2, C = 4, H = 5, W = 6;
    static final TensorShape SHAPE = TensorShape.nchw(N, C, H, W);
    static final int K = C * 9;
    static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    Arena arena;
    Block block;

    @BeforeEach
    void setUp() {
        arena = Arena.ofShared();
        block = new Block(arena, pytorchStateDict(arena, 5));
    }

    @AfterEach
    void tearDown() {
        block.close();
        arena.close();
    }

    /** What {@code BasicBlock(4, 4).eval().state_dict()} holds, with random trained-looking values. */
    static Map<String, MemorySegment> pytorchStateDict(Arena arena, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        Map<String, MemorySegment> state = new LinkedHashMap<>();
        for (int layer = 1; layer <= 2; layer++) {
            state.put("conv" + layer + ".weight",
                    Segments.of(arena, TestData.gaussian(C * K, seed + layer, Math.sqrt(2.0 / K))));
            float[] gamma = new float[C], beta = new float[C], mean = new float[C], var = new float[C];
            for (int c = 0; c < C; c++) {
                gamma[c] = (float) r.nextDouble(0.5, 1.5);
                beta[c] = (float) r.nextDouble(-0.5, 0.5);
                mean[c] = (float) r.nextDouble(-1, 1);
                var[c] = (float) r.nextDouble(0.2, 3);
            }
            String bn = "bn" + layer + ".";
            state.put(bn + "weight", Segments.of(arena, gamma));
            state.put(bn + "bias", Segments.of(arena, beta));
            state.put(bn + "running_mean", Segments.of(arena, mean));
            state.put(bn + "running_var", Segments.of(arena, var));
            MemorySegment count = arena.allocate(8);
            count.set(ValueLayout.JAVA_LONG_UNALIGNED, 0, 1000L * layer);
            state.put(bn + "num_batches_tracked", count);
        }
        return state;
    }

    /** The entries under {@code prefix} with the prefix removed, as PyTorch's module loading splits them. */
    static Map<String, MemorySegment> under(Map<String, MemorySegment> state, String prefix) {
        Map<String, MemorySegment> sub = new LinkedHashMap<>();
        state.forEach((k, v) -> {
            if (k.startsWith(prefix)) {
                sub.put(k.substring(prefix.length()), v);
            }
        });
        return sub;
    }

    /** The block: two convolutions' weights and two BatchNorm layers loaded from the state. */
    static final class Block implements AutoCloseable {
        final Arena arena;
        final float[] w1, w2;
        final BatchNormLayer bn1, bn2;
        final float[] gamma1, beta1, mean1, var1, gamma2, beta2, mean2, var2;

        Block(Arena arena, Map<String, MemorySegment> state) {
            this.arena = arena;
            w1 = Segments.toArray(state.get("conv1.weight"));
            w2 = Segments.toArray(state.get("conv2.weight"));
            bn1 = BatchNormLayer.builder(C).build();
            bn2 = BatchNormLayer.builder(C).build();
            bn1.loadStateDict(under(state, "bn1."));
            bn2.loadStateDict(under(state, "bn2."));
            bn1.eval();
            bn2.eval();
            gamma1 = Segments.toArray(state.get("bn1.weight"));
            beta1 = Segments.toArray(state.get("bn1.bias"));
            mean1 = Segments.toArray(state.get("bn1.running_mean"));
            var1 = Segments.toArray(state.get("bn1.running_var"));
            gamma2 = Segments.toArray(state.get("bn2.weight"));
            beta2 = Segments.toArray(state.get("bn2.bias"));
            mean2 = Segments.toArray(state.get("bn2.running_mean"));
            var2 = Segments.toArray(state.get("bn2.running_var"));
        }

        static double[] conv(double[] x, float[] w, float[] bias) {
            return Convolution.conv3x3(SHAPE, H, W, x, C, WeightLayout.OUTPUT_CHANNELS_FIRST,
                    Reference.widen(w), bias == null ? null : Reference.widen(bias));
        }

        static double[] convAbs(double[] x, float[] w) {
            return conv(Convolution.abs(x), absolute(w), null);
        }

        /** The layer, in eval mode, on a float tensor. */
        float[] batchNorm(BatchNormLayer layer, float[] z) {
            MemorySegment y = Segments.zeros(arena, z.length);
            layer.forward(SHAPE, Segments.of(arena, z), y);
            return Segments.toArray(y);
        }

        /** conv1, bn1, relu, conv2, bn2, + x, relu: float tensors between the steps. */
        float[] unfolded(float[] x) {
            float[] h1 = relu(batchNorm(bn1, Convolution.round(conv(Reference.widen(x), w1, null))));
            float[] u2 = batchNorm(bn2, Convolution.round(conv(Reference.widen(h1), w2, null)));
            return relu(add(u2, x));
        }

        /**
         * The same block with the ReLUs and the residual add fused into the BatchNorm layers:
         * conv1, bn1 + relu, conv2, bn2 + x + relu.
         */
        float[] fused(Map<String, MemorySegment> state, float[] x) {
            try (BatchNormLayer f1 = BatchNormLayer.builder(C).activation(Activation.RELU).build();
                 BatchNormLayer f2 = BatchNormLayer.builder(C).activation(Activation.RELU).build()) {
                f1.loadStateDict(under(state, "bn1."));
                f2.loadStateDict(under(state, "bn2."));
                f1.eval();
                f2.eval();
                float[] z1 = Convolution.round(conv(Reference.widen(x), w1, null));
                MemorySegment h1 = Segments.zeros(arena, z1.length);
                f1.forward(SHAPE, Segments.of(arena, z1), h1);
                float[] z2 = Convolution.round(conv(Reference.widen(Segments.toArray(h1)), w2, null));
                MemorySegment y = Segments.zeros(arena, z2.length);
                f2.forward(SHAPE, Segments.of(arena, z2), Segments.of(arena, x), y);
                return Segments.toArray(y);
            }
        }

        record Folded(float[] w1, float[] b1, float[] w2, float[] b2) {
        }

        Folded fold() {
            MemorySegment fw1 = Segments.zeros(arena, w1.length), fb1 = Segments.zeros(arena, C);
            MemorySegment fw2 = Segments.zeros(arena, w2.length), fb2 = Segments.zeros(arena, C);
            bn1.fold(WeightLayout.OUTPUT_CHANNELS_FIRST, Segments.of(arena, w1), null, fw1, fb1);
            bn2.fold(WeightLayout.OUTPUT_CHANNELS_FIRST, Segments.of(arena, w2), null, fw2, fb2);
            return new Folded(Segments.toArray(fw1), Segments.toArray(fb1), Segments.toArray(fw2),
                    Segments.toArray(fb2));
        }

        /** conv1' + b1', relu, conv2' + b2', + x, relu. */
        float[] folded(Folded f, float[] x) {
            float[] h1 = relu(Convolution.round(conv(Reference.widen(x), f.w1(), f.b1())));
            float[] u2 = Convolution.round(conv(Reference.widen(h1), f.w2(), f.b2()));
            return relu(add(u2, x));
        }

        static double scale(float gamma, float var) {
            return gamma / Math.sqrt(var + (double) 1e-5f);
        }

        @Override
        public void close() {
            bn1.close();
            bn2.close();
        }
    }

    static float[] relu(float[] v) {
        float[] r = new float[v.length];
        for (int i = 0; i < v.length; i++) {
            r[i] = Math.max(0f, v[i]);
        }
        return r;
    }

    static float[] add(float[] a, float[] b) {
        float[] s = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            s[i] = a[i] + b[i];
        }
        return s;
    }

    static float[] absolute(float[] v) {
        float[] a = new float[v.length];
        for (int i = 0; i < v.length; i++) {
            a[i] = Math.abs(v[i]);
        }
        return a;
    }

    static int channel(int i) {
        return (i / (H * W)) % C;
    }

    /**
     * The fused layers round exactly where the unfused sequence does: bn(x) to float, the add
     * once in float, the ReLU exact (max(0, s) with -0 to +0), so the block's output is the same
     * bits, not only within the bounds.
     */
    @Test
    void fusedEqualsUnfused() {
        float[] x = TestData.gaussian((int) SHAPE.elements(), 11, 1);
        Expect.bitwiseEqual("block output", block.unfolded(x), block.fused(pytorchStateDict(arena, 5), x),
                "fused vs unfused");
    }

    @Test
    void stateLoadsUnderPyTorchsNames() {
        assertEquals(1000L, block.bn1.numBatchesTracked());
        assertEquals(2000L, block.bn2.numBatchesTracked());
        Map<String, MemorySegment> state = pytorchStateDict(arena, 5);
        for (String key : new String[] {"weight", "bias", "running_mean", "running_var"}) {
            Expect.bitwiseEqual(key, Segments.toArray(state.get("bn2." + key)),
                    Segments.toArray(block.bn2.stateDict().get(key)), "bn2");
        }
    }

    /** The folded block equals the unfolded one, both within their bounds of the exact block. */
    @Test
    void foldedInferenceEqualsUnfolded() {
        float[] x = TestData.gaussian((int) SHAPE.elements(), 77, 1);
        float[] unfolded = block.unfolded(x);
        Block.Folded f = block.fold();
        float[] folded = block.folded(f, x);

        double u = Bounds.U;
        double[] xd = Reference.widen(x);
        // The exact block.
        double[] z1 = Block.conv(xd, block.w1, null);
        double[] h1 = new double[z1.length];
        for (int i = 0; i < z1.length; i++) {
            int c = channel(i);
            h1[i] = Math.max(0, Block.scale(block.gamma1[c], block.var1[c]) * (z1[i] - block.mean1[c]) + block.beta1[c]);
        }
        double[] z2 = Block.conv(h1, block.w2, null);
        double[] exact = new double[z2.length];
        for (int i = 0; i < z2.length; i++) {
            int c = channel(i);
            exact[i] = Math.max(0, Block.scale(block.gamma2[c], block.var2[c]) * (z2[i] - block.mean2[c])
                    + block.beta2[c] + x[i]);
        }

        // The unfolded path's float tensors again, for their sizes in the bounds.
        float[] z1f = Convolution.round(z1);
        double[] s1 = Block.convAbs(xd, block.w1);
        double[] eH1 = new double[z1.length], g1 = new double[z1.length];
        double[] eH1Folded = new double[z1.length];
        float[] h1f = relu(block.batchNorm(block.bn1, z1f));
        float[] h1Folded = relu(Convolution.round(Block.conv(xd, f.w1(), f.b1())));
        double[] pre1Folded = Block.conv(xd, f.w1(), f.b1());
        for (int i = 0; i < z1.length; i++) {
            int c = channel(i);
            double a1 = Block.scale(block.gamma1[c], block.var1[c]);
            eH1[i] = Math.abs(a1) * u * Math.abs(z1[i])
                    + Bounds.inferenceOutput(a1, z1f[i] - block.mean1[c], block.beta1[c]);
            eH1Folded[i] = u * Math.abs(a1) * s1[i] + u * Math.abs(f.b1()[c]) + u * Math.abs(pre1Folded[i]);
            g1[i] = Math.abs(a1) * (s1[i] + Math.abs(block.mean1[c])) + Math.abs(block.beta1[c]);
        }
        float[] z2f = Convolution.round(Block.conv(Reference.widen(h1f), block.w2, null));
        float[] u2f = block.batchNorm(block.bn2, z2f);
        double[] eZ2 = Block.conv(eH1, absolute(block.w2), null);
        double[] propagatedFolded = Block.conv(eH1Folded, absolute(f.w2()), null);
        double[] h1FoldedSizes = new double[z1.length];
        for (int i = 0; i < z1.length; i++) {
            h1FoldedSizes[i] = Math.abs(h1Folded[i]) + eH1Folded[i];
        }
        double[] w2TimesH1 = Block.conv(h1FoldedSizes, absolute(block.w2), null);
        float[] u2Folded = Convolution.round(Block.conv(Reference.widen(h1Folded), f.w2(), f.b2()));
        double[] g2 = Block.conv(g1, absolute(block.w2), null);

        int positive = 0;
        for (int i = 0; i < exact.length; i++) {
            int c = channel(i);
            double a2 = Block.scale(block.gamma2[c], block.var2[c]);
            double doubles = 8 * (K + 10) * Bounds.W * (Math.abs(a2) * (g2[i] + Math.abs(block.mean2[c]))
                    + Math.abs(block.beta2[c]) + Math.abs(x[i])) + 8 * Bounds.TINY;
            double eU2 = Math.abs(a2) * (eZ2[i] + u * Math.abs(z2f[i]))
                    + Bounds.inferenceOutput(a2, z2f[i] - block.mean2[c], block.beta2[c]);
            double boundUnfolded = eU2 + u * Math.abs(u2f[i] + x[i]) + doubles;
            double eU2Folded = propagatedFolded[i] + u * Math.abs(a2) * w2TimesH1[i]
                    + u * Math.abs(f.b2()[c]) + u * Math.abs(u2Folded[i]);
            double boundFolded = eU2Folded + u * Math.abs(u2Folded[i] + x[i]) + doubles;
            String at = "element " + i + " (channel " + c + ")";
            Expect.within("unfolded block", unfolded[i], exact[i], boundUnfolded, at);
            Expect.within("folded block", folded[i], exact[i], boundFolded, at);
            Expect.within("folded against unfolded", folded[i], unfolded[i], boundUnfolded + boundFolded, at);
            positive += exact[i] > 0 ? 1 : 0;
        }
        // Not a block of zeros: the final relu lets a good share through.
        assertTrue(positive > exact.length / 4, positive + " of " + exact.length + " outputs positive");
    }
}
