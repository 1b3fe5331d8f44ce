package dev.vecnorm.bench;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Problem shapes in benchdnn's notation ({@code mb50ic64ih56iw56}) and test data for them.
 * The default set is ResNet-50's BatchNorm layers, copied from oneDNN's benchdnn inputs into
 * {@code bench/resources/bnorm_shapes_resnet50.txt}.
 */
public final class Problem {

    private static final Pattern SHAPE = Pattern.compile(
            "mb(\\d+)_?ic(\\d+)_?ih(\\d+)_?iw(\\d+)(?:_?n\"([^\"]*)\")?");

    private Problem() {
    }

    /** Parses {@code mbNicCihHiwW} into a shape of the given layout. */
    public static TensorShape parse(String descriptor, Layout layout) {
        Matcher m = SHAPE.matcher(descriptor.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException("shape: expected mbNicCihHiwW (e.g. mb32ic64ih56iw56), got '"
                    + descriptor + "'");
        }
        int n = Integer.parseInt(m.group(1)), c = Integer.parseInt(m.group(2));
        int h = Integer.parseInt(m.group(3)), w = Integer.parseInt(m.group(4));
        return layout == Layout.NCHW ? TensorShape.nchw(n, c, h, w) : TensorShape.nhwc(n, c, h, w);
    }

    /** {N, C, H, W} of {@code mbNicCihHiwW}. */
    public static long[] dims(String descriptor) {
        Matcher m = SHAPE.matcher(descriptor.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException("shape: expected mbNicCihHiwW, got '" + descriptor + "'");
        }
        return new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)), Long.parseLong(m.group(3)),
            Long.parseLong(m.group(4))};
    }

    /** Layer names by descriptor, e.g. "resnet_50:bn_conv1". */
    public record Named(String descriptor, String name) {
    }

    /** The uncommented shapes of the built-in ResNet-50 list, in file order. */
    public static List<Named> resnet50() {
        List<Named> shapes = new ArrayList<>();
        try (InputStream in = Problem.class.getResourceAsStream("/bnorm_shapes_resnet50.txt")) {
            if (in == null) {
                throw new IllegalStateException("bnorm_shapes_resnet50.txt is not on the classpath");
            }
            BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
            for (String line; (line = r.readLine()) != null; ) {
                line = line.trim();
                if (line.isEmpty() || line.startsWith("#")) {
                    continue;
                }
                Matcher m = SHAPE.matcher(line);
                if (m.matches()) {
                    shapes.add(new Named("mb" + m.group(1) + "ic" + m.group(2) + "ih" + m.group(3)
                            + "iw" + m.group(4), m.group(5) == null ? "" : m.group(5)));
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (shapes.isEmpty()) {
            throw new IllegalStateException("bnorm_shapes_resnet50.txt: expected lines like"
                    + " mb50_ic64_ih56iw56_n\"name\", found none");
        }
        return shapes;
    }

    /** Values generated per block; larger tensors repeat the block (filling 40 M values one by one took seconds per trial). */
    private static final int BLOCK = 1 << 20;

    /**
     * A 64-byte aligned segment of {@code floats} values from a fixed xorshift stream: a block of
     * 2^20 values, tiled. Repetition does not matter to a memory-bound kernel; the data still
     * occupies every byte of the segment.
     */
    public static MemorySegment random(Arena arena, long floats, long seed, float mean, float scale) {
        MemorySegment s = arena.allocate(floats * Float.BYTES, 64);
        long first = Math.min(floats, BLOCK);
        long state = seed * 0x9E3779B97F4A7C15L + 1;
        for (long i = 0; i < first; i++) {
            state ^= state << 13;
            state ^= state >>> 7;
            state ^= state << 17;
            // Sum of two uniforms: a cheap bell shape in [-1, 1).
            float u = ((state >>> 40) + ((state >>> 16) & 0xFFFFFF)) * 0x1p-24f - 1f;
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, mean + scale * u);
        }
        for (long i = first; i < floats; i += first) {
            MemorySegment.copy(s, 0, s, 4 * i, 4 * Math.min(first, floats - i));
        }
        return s;
    }

    /** Bytes a kernel must move at least (the traffic model of the report). */
    public static long minimumTraffic(String benchmark, long elements) {
        return benchmark.equals("backward") || benchmark.equals("vectorTriad") ? 12 * elements : 8 * elements;
    }
}
