package dev.vecnorm.bench;

import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A norm-family problem, the {@code problem} parameter of the norm benchmarks:
 * {@code layer_norm/rows32_d4096}, {@code rms_norm/rows1_d4096},
 * {@code group_norm/mb2_ic320_ih64iw64_g32/NHWC}, {@code instance_norm/mb4_ic64_ih256iw256/NCHW}.
 * The suites are the sections of {@code bench/resources/norm_shapes.txt}.
 */
public record NormProblem(String norm, long rows, int features, long[] dims, int groups, Layout layout) {

    /** The norms, in report order. */
    public static final List<String> NORMS = List.of("layer_norm", "rms_norm", "group_norm", "instance_norm");

    private static final Pattern ROWS = Pattern.compile("rows(\\d+)_d(\\d+)");
    private static final Pattern IMAGE = Pattern.compile("mb(\\d+)_ic(\\d+)_ih(\\d+)iw(\\d+)(?:_g(\\d+))?");
    private static final Pattern LINE = Pattern.compile("(\\S+?)_n\"([^\"]*)\"");

    /** A problem of a suite file: its parameter and the layer's name there. */
    public record Named(String problem, String layer) {
    }

    /** Parses a {@code problem} parameter. */
    public static NormProblem parse(String problem) {
        String[] p = problem.split("/");
        if (p.length < 2 || !NORMS.contains(p[0])) {
            throw new IllegalArgumentException("problem: expected NORM/SHAPE[/LAYOUT] with NORM one of " + NORMS
                    + ", got '" + problem + "'");
        }
        if (p[0].equals("layer_norm") || p[0].equals("rms_norm")) {
            Matcher m = ROWS.matcher(p[1]);
            if (!m.matches()) {
                throw new IllegalArgumentException("problem: expected rowsR_dD after " + p[0] + "/, got '" + p[1] + "'");
            }
            return new NormProblem(p[0], Long.parseLong(m.group(1)), Integer.parseInt(m.group(2)), null, 0, null);
        }
        Matcher m = IMAGE.matcher(p[1]);
        if (!m.matches() || (p[0].equals("group_norm") != (m.group(5) != null))) {
            throw new IllegalArgumentException("problem: expected mbN_icC_ihHiwW" + (p[0].equals("group_norm") ? "_gG" : "")
                    + " after " + p[0] + "/, got '" + p[1] + "'");
        }
        long[] d = {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)), Long.parseLong(m.group(3)),
            Long.parseLong(m.group(4))};
        int groups = m.group(5) != null ? Integer.parseInt(m.group(5)) : Math.toIntExact(d[1]);
        return new NormProblem(p[0], 0, 0, d, groups, p.length > 2 ? Layout.valueOf(p[2]) : Layout.NCHW);
    }

    /** Whether this is a row norm (LayerNorm, RMSNorm). */
    public boolean rowNorm() {
        return dims == null;
    }

    /** The tensor shape of GroupNorm and InstanceNorm problems. */
    public TensorShape shape() {
        return Problem.shape(dims, layout);
    }

    /** The floats of the tensor. */
    public long elements() {
        return rowNorm() ? rows * features : dims[0] * dims[1] * dims[2] * dims[3];
    }

    /**
     * The problems of a norm's suite in file order, each in both layouts for GroupNorm and
     * InstanceNorm.
     */
    public static List<Named> suite(String norm) {
        String section = norm.equals("layer_norm") || norm.equals("rms_norm") ? "layer_norm" : norm;
        List<Named> out = new ArrayList<>();
        try (InputStream in = NormProblem.class.getResourceAsStream("/norm_shapes.txt")) {
            if (in == null) {
                throw new IllegalStateException("norm_shapes.txt is not on the classpath");
            }
            BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
            boolean inSection = false;
            for (String line; (line = r.readLine()) != null; ) {
                line = line.trim();
                if (line.startsWith("### SUITE")) {
                    inSection = line.substring("### SUITE".length()).trim().startsWith(section);
                    continue;
                }
                Matcher m = LINE.matcher(line);
                if (!inSection || line.startsWith("#") || !m.matches()) {
                    continue;
                }
                if (section.equals("layer_norm")) {
                    out.add(new Named(norm + "/" + m.group(1), m.group(2)));
                } else {
                    for (Layout l : Layout.values()) {
                        out.add(new Named(norm + "/" + m.group(1) + "/" + l, m.group(2)));
                    }
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (out.isEmpty()) {
            throw new IllegalStateException("norm_shapes.txt: no shapes in the section of " + norm);
        }
        return out;
    }
}
