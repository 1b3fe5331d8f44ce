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
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Problem shapes in benchdnn's notation ({@code mb50ic64ih56iw56}) and test data for them. The
 * built-in suites are files in {@code bench/resources}, one per suite: ResNet-50's BatchNorm layers
 * copied from oneDNN's benchdnn inputs ({@code bnorm_shapes_resnet50.txt}), and MobileNet-V2,
 * VGG-16-BN, ResNet-50 at batch 1 and BatchNorm1d layers worked out from the networks' architectures.
 */
public final class Problem {

    private static final Pattern SHAPE = Pattern.compile(
            "mb(\\d+)_?ic(\\d+)_?ih(\\d+)_?iw(\\d+)(?:_?n\"([^\"]*)\")?");

    /** The built-in suites, in report order; {@code bench/resources/bnorm_shapes_NAME.txt} each. */
    public static final List<String> SUITES = List.of("resnet50", "mobilenet_v2", "vgg16_bn", "resnet50_batch1",
            "batchnorm1d");

    /** The suite of a shape that is in none of the built-in ones. */
    public static final String OTHER = "other";

    /** The report's regimes by the bytes of x, in order of size: see {@link #regime}. */
    public static final List<String> REGIMES = List.of("cache-resident (x <= 12 MiB)", "between (12-64 MiB)",
            "memory-resident (x >= 64 MiB)");

    private Problem() {
    }

    private static Matcher matcher(String descriptor) {
        Matcher m = SHAPE.matcher(descriptor.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException("shape: expected mbNicCihHiwW (e.g. mb32ic64ih56iw56), got '"
                    + descriptor + "'");
        }
        return m;
    }

    /** Parses {@code mbNicCihHiwW} into a shape of the given layout. */
    public static TensorShape parse(String descriptor, Layout layout) {
        return shape(dims(descriptor), layout);
    }

    /** The shape of {N, C, H, W} in the given layout. */
    public static TensorShape shape(long[] d, Layout layout) {
        int n = Math.toIntExact(d[0]), c = Math.toIntExact(d[1]), h = Math.toIntExact(d[2]), w = Math.toIntExact(d[3]);
        return layout == Layout.NCHW ? TensorShape.nchw(n, c, h, w) : TensorShape.nhwc(n, c, h, w);
    }

    /** {N, C, H, W} of {@code mbNicCihHiwW}. */
    public static long[] dims(String descriptor) {
        Matcher m = matcher(descriptor);
        return new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)), Long.parseLong(m.group(3)),
            Long.parseLong(m.group(4))};
    }

    /** {@code mbNicCihHiwW} without underscores or name: the same shape always reads the same. */
    private static String canonical(String descriptor) {
        long[] d = dims(descriptor);
        return "mb" + d[0] + "ic" + d[1] + "ih" + d[2] + "iw" + d[3];
    }

    /**
     * A shape of a suite: its descriptor, the suite's name ({@link #SUITES}, or {@link #OTHER}) and
     * the layer's name in the suite's file without the network prefix (e.g. "bn2a_branch1*4").
     */
    public record Named(String descriptor, String suite, String layer) {
    }

    /**
     * The uncommented shapes of a built-in suite, in file order, or of all of them, one after the
     * other, for {@code "all"}.
     */
    public static List<Named> suite(String name) {
        if (name.equals("all")) {
            return SUITES.stream().flatMap(n -> suite(n).stream()).toList();
        }
        if (!SUITES.contains(name)) {
            throw new IllegalArgumentException("suite: expected one of " + String.join(", ", SUITES)
                    + " or all, got '" + name + "'");
        }
        String file = "bnorm_shapes_" + name + ".txt";
        List<Named> shapes = new ArrayList<>();
        try (InputStream in = Problem.class.getResourceAsStream("/" + file)) {
            if (in == null) {
                throw new IllegalStateException(file + " is not on the classpath");
            }
            BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
            for (String line; (line = r.readLine()) != null; ) {
                line = line.trim();
                if (line.isEmpty() || line.startsWith("#")) {
                    continue;
                }
                Matcher m = SHAPE.matcher(line);
                if (m.matches()) {
                    String layer = m.group(5) == null ? "" : m.group(5);
                    shapes.add(new Named(canonical(line), name, layer.substring(layer.indexOf(':') + 1)));
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (shapes.isEmpty()) {
            throw new IllegalStateException(file + ": expected lines like mb50_ic64_ih56iw56_n\"name\", found none");
        }
        return shapes;
    }

    /**
     * The given descriptors, each with the suite and layer of the first built-in shape it equals
     * (suite {@link #OTHER}, no layer, where none); the descriptors themselves are kept as given.
     */
    public static List<Named> named(List<String> descriptors) {
        Map<String, Named> known = new HashMap<>();
        suite("all").forEach(n -> known.putIfAbsent(n.descriptor(), n));
        return descriptors.stream().map(d -> {
            Named k = known.get(canonical(d));
            return k == null ? new Named(d, OTHER, "") : new Named(d, k.suite(), k.layer());
        }).toList();
    }

    /** The regime of a shape, one of {@link #REGIMES}: x up to 12 MiB, between, or from 64 MiB on. */
    public static String regime(String descriptor) {
        long bytes = Float.BYTES * parse(descriptor, Layout.NCHW).elements();
        return REGIMES.get(bytes <= 12L << 20 ? 0 : bytes < 64L << 20 ? 1 : 2);
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
