package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * Bits across kernel configurations. Each Surefire run (vector at 512, 128 and 256 bits, scalar)
 * computes a fixed set of seeded problems, writes a hash of every output to
 * {@code vecnorm.determinismDir/<kernels>.txt}, and compares its hashes with those of every run
 * before it in the same build; the last run (scalar) is told how many it must find, so a
 * configuration that silently skipped this test fails the build.
 */
class DeterminismAcrossKernelsTest {

    private static final String DIR = System.getProperty("vecnorm.determinismDir");
    private static final int EXPECT_OTHERS = Integer.getInteger("vecnorm.determinismExpectOthers", 0);

    /** Shapes that exercise full 32-lane rows, half rows, tails, few/many channels, both layouts. */
    static final TensorShape[] PROBLEMS = {
        TensorShape.nchw(3, 5, 7, 7), TensorShape.nhwc(3, 5, 7, 7),
        TensorShape.nchw(2, 3, 13, 11), TensorShape.nhwc(2, 37, 5, 3),
        TensorShape.nchw(4, 17, 8, 8), TensorShape.nhwc(4, 17, 8, 8),
        TensorShape.nchw(64, 2, 1, 1), TensorShape.nc(33, 70),
        TensorShape.nchw(2, 2, 180, 200), TensorShape.nhwc(5, 300, 2, 3),
    };

    static Map<String, String> hashes() {
        Map<String, String> out = new TreeMap<>();
        int seed = 0;
        for (TensorShape shape : PROBLEMS) {
            seed++;
            for (TestData.Distribution kind : TestData.Distribution.values()) {
                float[] x = TestData.tensor(shape, seed * 31L + kind.ordinal(), ForwardProperties.kindsFrom(kind));
                float[] dy = TestData.gaussian(x.length, seed + 7, 1);
                float[] gamma = TestData.gaussian(shape.channels(), seed + 1, 1);
                float[] beta = TestData.gaussian(shape.channels(), seed + 2, 1);
                BatchNorm bn = BatchNorm.builder(shape).epsilon(1e-3f).build();
                Runs.Training t = Runs.training(bn, x, gamma, beta);
                Runs.Backward g = Runs.backward(bn, false, x, dy, gamma, t.mean(), t.variance());
                float[] inf = Runs.inference(bn, x, gamma, beta, t.mean(), t.variance());
                // The fused calls: ReLU with and without the residual, backward with the mask.
                float[] r = TestData.gaussian(x.length, seed + 9, 1);
                BatchNorm relu = BatchNorm.builder(shape).epsilon(1e-3f).activation(Activation.RELU).build();
                Runs.Training fr = Runs.fusedTraining(relu, x, r, gamma, beta);
                Runs.Training f0 = Runs.fusedTraining(relu, x, null, gamma, beta);
                float[] fi = Runs.fusedInference(relu, x, r, gamma, beta, t.mean(), t.variance());
                Runs.FusedBackward fg = Runs.fusedBackward(relu, false, x, dy, fr.y(), gamma, fr.mean(), fr.variance());
                Runs.FusedBackward ff = Runs.fusedBackward(relu, true, x, dy, fr.y(), gamma, fr.mean(), fr.variance());
                String fused = " " + hash(fr.y()) + " " + hash(f0.y()) + " " + hash(fi) + " " + hash(fg.dx())
                        + " " + hash(fg.dresidual()) + " " + hash(fg.dgamma()) + " " + hash(fg.dbeta())
                        + " " + hash(ff.dx()) + " " + hash(ff.dgamma());
                // The mask workspace: its forward's y and words, and the backward that reads it.
                Runs.Masked mw = Runs.workspaceRun(relu, x, r, dy, gamma, beta, 0);
                fused += " " + hash(mw.forward().y()) + " " + Long.toHexString(java.util.Arrays.hashCode(mw.mask()))
                        + " " + hash(mw.backward().dx()) + " " + hash(mw.backward().dresidual())
                        + " " + hash(mw.backward().dgamma());
                String key = shape.batch() + "x" + shape.channels() + "x" + shape.spatial() + " "
                        + shape.layout() + " " + kind;
                out.put(key, hash(t.y()) + " " + hash(t.mean()) + " " + hash(t.variance()) + " "
                        + hash(inf) + " " + hash(g.dx()) + " " + hash(g.dgamma()) + " " + hash(g.dbeta()) + fused);
            }
        }
        normHashes(out);
        return out;
    }

    /**
     * The norm family on rows with heads, strides, tails (features 37, 100, 1000) and Gemma's
     * offset, and GroupNorm and InstanceNorm in both layouts, every distribution but EXTREME.
     */
    static void normHashes(Map<String, String> out) {
        long[][] rows = {{3, 2, 37, 80}, {5, 1, 100, 100}, {7, 1, 1000, 1003}};
        TensorShape[] groups = {TensorShape.nchw(2, 12, 7, 7), TensorShape.nhwc(2, 12, 7, 7),
            TensorShape.nhwc(3, 64, 5, 5), TensorShape.nchw(1, 8, 33, 33)};
        int seed = 100;
        for (TestData.Distribution kind : TestData.Distribution.values()) {
            if (kind == TestData.Distribution.EXTREME) {
                continue;
            }
            for (long[] r : rows) {
                seed++;
                NormProperties.Rows g = new NormProperties.Rows(r[0], (int) r[1], (int) r[2], r[3]);
                float[] x = NormRuns.strided(NormProperties.rowValues(g, seed, kind), g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
                float[] dy = NormRuns.strided(TestData.gaussian(Math.toIntExact(g.units() * g.features()), seed + 1, 1),
                        g.rows(), g.heads(), g.features(), g.rowStride(), 0f);
                float[] w = TestData.gaussian(g.features(), seed + 2, 1), b = TestData.gaussian(g.features(), seed + 3, 1);
                LayerNorm ln = LayerNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).build();
                NormRuns.Forward f = NormRuns.layerNorm(ln, x, w, b, false, 0f);
                NormRuns.Backward d = NormRuns.layerNormBackward(ln, x, dy, w, f.mean(), f.rstd(), false);
                RMSNorm rms = RMSNorm.builder(g.rows(), g.features()).heads(g.heads()).rowStride(g.rowStride()).unitOffset(true).build();
                NormRuns.Forward q = NormRuns.rmsNorm(rms, x, w, false, 0f);
                NormRuns.Backward e = NormRuns.rmsNormBackward(rms, x, dy, w, q.rstd(), false);
                out.put("norm rows " + g + " " + kind, hash(f.y()) + " " + hash(f.mean()) + " " + hash(f.rstd()) + " "
                        + hash(d.dx()) + " " + hash(d.dw()) + " " + hash(d.db()) + " " + hash(q.y()) + " "
                        + hash(q.rstd()) + " " + hash(e.dx()) + " " + hash(e.dw()));
            }
            for (TensorShape shape : groups) {
                seed++;
                float[] x = TestData.tensor(shape, seed, NormProperties.from(kind));
                float[] dy = TestData.gaussian(x.length, seed + 1, 1);
                float[] w = TestData.gaussian(shape.channels(), seed + 2, 1), b = TestData.gaussian(shape.channels(), seed + 3, 1);
                StringBuilder h = new StringBuilder();
                for (int groupCount : new int[] {4, shape.channels()}) {
                    GroupNorm gn = GroupNorm.builder(shape, groupCount).build();
                    NormRuns.Forward f = NormRuns.groupNorm(gn, x, w, b, false, false);
                    NormRuns.Backward d = NormRuns.groupNormBackward(gn, x, dy, w, f.mean(), f.rstd(), false);
                    h.append(hash(f.y())).append(' ').append(hash(f.mean())).append(' ').append(hash(f.rstd())).append(' ')
                            .append(hash(d.dx())).append(' ').append(hash(d.dw())).append(' ').append(hash(d.db())).append(' ');
                }
                out.put("norm groups " + shape + " " + kind, h.toString().trim());
            }
        }
    }

    private static String hash(float[] v) {
        long h = 1125899906842597L;
        for (float f : v) {
            h = 31 * h + Float.floatToRawIntBits(f);
        }
        return Long.toHexString(h);
    }

    @Test
    void everyKernelConfigurationGivesTheSameBits() throws IOException {
        Map<String, String> mine = hashes();
        assertEquals(mine, hashes(), "the same run twice");
        if (DIR == null) {
            return;                 // run outside Maven: nothing to compare with
        }
        Path dir = Path.of(DIR);
        Files.createDirectories(dir);
        String me = BatchNorm.kernels().replaceAll("[^A-Za-z0-9-]+", "_");
        List<Path> others = new ArrayList<>();
        try (Stream<Path> files = Files.list(dir)) {
            files.filter(p -> !p.getFileName().toString().equals(me + ".txt")).forEach(others::add);
        }
        for (Path other : others) {
            Map<String, String> theirs = new TreeMap<>();
            for (String line : Files.readAllLines(other, StandardCharsets.UTF_8)) {
                int tab = line.indexOf('\t');
                theirs.put(line.substring(0, tab), line.substring(tab + 1));
            }
            for (Map.Entry<String, String> e : mine.entrySet()) {
                assertEquals(theirs.get(e.getKey()), e.getValue(), BatchNorm.kernels() + " vs "
                        + other.getFileName() + ": outputs differ for " + e.getKey());
            }
        }
        assertTrue(others.size() >= EXPECT_OTHERS, "expected hashes of " + EXPECT_OTHERS
                + " other kernel configurations in " + dir + ", found " + others);
        StringBuilder text = new StringBuilder();
        mine.forEach((k, v) -> text.append(k).append('\t').append(v).append('\n'));
        Files.writeString(dir.resolve(me + ".txt"), text, StandardCharsets.UTF_8);
    }
}
