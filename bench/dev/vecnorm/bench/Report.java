package dev.vecnorm.bench;

import dev.vecnorm.BatchNorm;
import dev.vecnorm.Layout;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.profile.GCProfiler;
import org.openjdk.jmh.results.Result;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.results.format.ResultFormatType;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;
import org.openjdk.jmh.runner.options.ChainedOptionsBuilder;
import org.openjdk.jmh.runner.options.OptionsBuilder;
import org.openjdk.jmh.runner.options.TimeValue;

/**
 * The performance report: runs the JMH benchmarks through JMH's Java API, then prints and writes
 * (to {@code target/vecnorm-report/}) a table of milliseconds, GB/s under the minimum-traffic
 * model, the fraction of the copy ceilings measured in the same run, and the vector/scalar
 * speed-up. JMH's own JSON is kept beside it.
 *
 * <pre>
 * arguments: [--quick | --full | --smoke]
 *            [--suite=resnet50|mobilenet_v2|vgg16_bn|resnet50_batch1|batchnorm1d|all[,...]]
 *            [--shapes=mb32ic64ih56iw56,...] [--threads=1,2] [--kernels=vector,scalar]
 *            [--layouts=NCHW,NHWC] [--fused] [--split] [--cost] [--norms | --norms-only] [--peers] [--out=DIR]
 * </pre>
 *
 * The shapes: {@code --shapes} if given, else the {@code --suite}s' (see {@link Problem#SUITES}),
 * else {@link #DEFAULT_MIX} ({@code --quick}), all suites ({@code --full}) or one tiny shape
 * ({@code --smoke}). The norm family's section follows ({@link NormReport}: its own mix, every
 * norm shape with {@code --norms} or {@code --full}); {@code --norms-only} runs only that section.
 */
public final class Report {

    static final String[] KERNELS = {"forwardTraining", "forwardInference", "forwardInferenceInPlace", "backward"};
    /**
     * A shape whose arithmetic takes a few dozen nanoseconds, so its time per call is the fixed
     * cost of a call (validation, working arrays, parameters, dispatch). Spatial size 1: the same
     * [N, C] path in both layouts, free of the per-plane cost that small NCHW planes add.
     */
    static final String OVERHEAD_SHAPE = "mb8ic64ih1iw1";
    /**
     * The default (quick) run's shapes: a few of each suite and of each regime, grouped by suite,
     * so that the run stays near five minutes on 2 cores (17 forks of JMH per shape).
     */
    static final List<String> DEFAULT_MIX = List.of(
            "mb50ic256ih56iw56",    // resnet50 bn2a_branch1*4, 153 MiB: memory-resident
            "mb50ic2048ih7iw7",     // resnet50 bn5a_branch1*4, 19 MiB: between
            "mb32ic96ih56iw56",     // mobilenet_v2 b2_dw, 37 MiB: between
            "mb32ic960ih7iw7",      // mobilenet_v2 b14_expand*6, 5.7 MiB: cache-resident
            "mb16ic512ih28iw28",    // vgg16_bn block4*3, 24.5 MiB: between
            "mb1ic64ih56iw56",      // resnet50_batch1 res2_a*6, 0.8 MiB
            "mb1ic1024ih14iw14",    // resnet50_batch1 res4_c*7, 0.8 MiB
            "mb256ic4096ih1iw1",    // batchnorm1d mlp_4096, 4 MiB
            "mb8192ic16ih1iw1");    // batchnorm1d narrow_16, 0.5 MiB
    /** The tiny shape of {@code --smoke}. */
    static final String SMOKE_SHAPE = "mb2ic16ih8iw8";

    private Report() {
    }

    record Settings(List<Problem.Named> problems, List<String> threads, List<String> kernels,
                    List<String> layouts, int forks, int warmups, int iterations, long millis,
                    Path out, boolean cost, boolean peers, String mode) {

        /** One measured iteration fewer (at least one): for the scalar kernels, which only give a ratio. */
        Settings fewerIterations() {
            return new Settings(problems, threads, kernels, layouts, forks, warmups, Math.max(1, iterations - 1),
                    millis, out, cost, peers, mode);
        }

        /** The shapes' descriptors, the JMH parameter. */
        List<String> shapes() {
            return problems.stream().map(Problem.Named::descriptor).toList();
        }

        /** The suites of the shapes, in order. */
        List<String> suites() {
            return problems.stream().map(Problem.Named::suite).distinct().toList();
        }

        /** The suite, layer and shape cells of a table row for a shape. */
        String cells(String shape) {
            Problem.Named p = problems.stream().filter(n -> n.descriptor().equals(shape)).findFirst().orElseThrow();
            return p.suite() + " | " + p.layer() + " | " + shape;
        }
    }

    /** The header cells that go with {@link Settings#cells}. */
    static final String SHAPE_HEADER = "| suite | layer | shape |";

    public static void main(String[] args) throws RunnerException, IOException {
        Settings s = settings(args);
        Files.createDirectories(s.out);
        System.out.println("vecnorm report: " + BatchNorm.kernels() + "; " + s.problems.size() + " shapes of "
                + s.suites() + " x "
                + s.layouts + " x " + s.kernels + " x threads " + s.threads + "; " + s.forks + " fork(s), "
                + s.iterations + " x " + s.millis + " ms per benchmark");
        List<RunResult> results = new ArrayList<>();
        boolean normsOnly = List.of(args).contains("--norms-only");
        String table = "";
        if (!normsOnly) {
            table = batchNorm(s, args, results);
        }
        table += NormReport.run(s, NormReport.problems(args, s.mode()));
        System.out.println();
        System.out.println(table);
        Path md = s.out.resolve("report.md");
        Path svg = s.out.resolve("report.svg");
        if (!results.isEmpty()) {                  // the chart is BatchNorm's
            Chart.write(byKey(results), s, svg);
        }
        Files.writeString(md, header(s) + (results.isEmpty() ? ""
                : "![GB/s per kernel against the copy ceiling](report.svg)\n\n") + table, StandardCharsets.UTF_8);
        System.out.println("written: " + md + (results.isEmpty() ? "" : ", " + svg) + " and JMH's JSON in " + s.out);
    }

    /** The BatchNorm sections (kernels, overhead, peers, fused, cost); fills {@code results}. */
    private static String batchNorm(Settings s, String[] args, List<RunResult> results) throws RunnerException {
        // Vector kernels and the ceilings; then the scalar kernels, without the in-place variant
        // (the vector/scalar ratio is reported for the three main kernels).
        List<String> vectorKernels = s.kernels.contains("vector") ? List.of("vector") : List.of();
        if (!vectorKernels.isEmpty()) {
            results.addAll(run(s, "dev\\.vecnorm\\.BatchNormBenchmark\\.(" + String.join("|", KERNELS) + ")$",
                    true, "vector", s.out.resolve("jmh-result.json")));
        }
        if (s.kernels.contains("scalar")) {
            // Beside the vector kernels the scalar ones only give the vs-scalar ratio: one
            // measured iteration fewer keeps the default report near five minutes.
            results.addAll(run(vectorKernels.isEmpty() ? s : s.fewerIterations(),
                    "dev\\.vecnorm\\.BatchNormBenchmark\\.(forwardTraining|forwardInference|backward)$",
                    vectorKernels.isEmpty(), "scalar", s.out.resolve("jmh-result-scalar.json")));
        }
        String table = table(results, s);
        if (!vectorKernels.isEmpty()) {
            table += overhead(runOverhead(s, s.out.resolve("jmh-result-overhead.json")));
        }
        if (s.peers) {
            table += peers(results, run(s, "dev\\.vecnorm\\.peers\\.(OneDnn|PyTorch|OnnxRuntime)Benchmark\\.", false, null,
                    s.out.resolve("jmh-result-peers.json")), s);
        }
        if (FusedReport.wanted(args)) {
            table += FusedReport.run(s, results);
        }
        if (SplitReport.wanted(args)) {
            table += SplitReport.run(s);
        }
        if (s.cost) {
            table += cost(run(s, "dev\\.vecnorm\\.bench\\.DeterminismCostBenchmark\\.", false, null,
                    s.out.resolve("jmh-result-cost.json")), s);
        }
        return table;
    }

    private static Collection<RunResult> run(Settings s, String kernels, boolean ceilings, String which,
                                             Path json) throws RunnerException {
        ChainedOptionsBuilder options = options(s, json)
                .include(kernels)
                .param("shape", s.shapes().toArray(String[]::new))
                .param("threads", s.threads.toArray(String[]::new))
                .param("layout", s.layouts.toArray(String[]::new));
        if (which != null) {
            options.param("kernels", which);
        }
        if (ceilings) {
            options.include("dev\\.vecnorm\\.bench\\.CeilingBenchmark\\.");
        }
        return new Runner(options.build()).run();
    }

    /** Forks, iterations, JVM flags and the JSON file: the same for every part of the report. */
    static ChainedOptionsBuilder options(Settings s, Path json) {
        return new OptionsBuilder()
                .forks(s.forks)
                .warmupIterations(s.warmups)
                .warmupTime(TimeValue.milliseconds(s.millis))
                .measurementIterations(s.iterations)
                .measurementTime(TimeValue.milliseconds(s.millis))
                .jvmArgs("--add-modules=jdk.incubator.vector", "--sun-misc-unsafe-memory-access=allow",
                        "-Xms1g", "-XX:+UseParallelGC")
                .resultFormat(ResultFormatType.JSON)
                .result(json.toString());
    }

    static Settings settings(String[] args) {
        List<String> shapes = null;
        List<String> suites = null;
        List<String> threads = null;
        Boolean cost = null;
        boolean peers = false;
        List<String> kernels = List.of("vector", "scalar");
        List<String> layouts = List.of("NCHW", "NHWC");
        String mode = "quick";
        Path out = Path.of("target", "vecnorm-report");
        for (String a : args) {
            if (a.isBlank()) {
                continue;
            }
            if (a.equals("--quick") || a.equals("--full") || a.equals("--smoke")) {
                mode = a.substring(2);
            } else if (a.startsWith("--shapes=")) {
                shapes = split(a);
            } else if (a.startsWith("--suite=")) {
                suites = split(a);
            } else if (a.startsWith("--threads=")) {
                threads = split(a);
            } else if (a.startsWith("--kernels=")) {
                kernels = split(a);
            } else if (a.startsWith("--layouts=")) {
                layouts = split(a);
            } else if (a.equals("--peers")) {
                peers = true;
            } else if (a.equals("--fused") || a.equals("--split") || a.equals("--norms") || a.equals("--norms-only")) {
                continue;                          // read by FusedReport.wanted, NormReport.problems and main
            } else if (a.equals("--cost")) {
                cost = true;
            } else if (a.startsWith("--out=")) {
                out = Path.of(a.substring("--out=".length()));
            } else {
                throw new IllegalArgumentException("argument: expected --quick, --full, --smoke, --suite=, --shapes=,"
                        + " --threads=, --kernels=, --layouts=, --cost, --fused, --split, --norms, --norms-only, --peers or --out=,"
                        + " got '" + a + "'");
            }
        }
        boolean full = mode.equals("full");
        if (suites == null && shapes == null && full) {
            suites = List.of("all");
        }
        List<Problem.Named> problems;
        if (shapes == null && suites != null) {
            // A shape in two of the suites asked for is measured once, under the first.
            Map<String, Problem.Named> unique = new LinkedHashMap<>();
            suites.forEach(n -> Problem.suite(n).forEach(p -> unique.putIfAbsent(p.descriptor(), p)));
            problems = List.copyOf(unique.values());
        } else {
            problems = Problem.named(shapes != null ? shapes
                    : mode.equals("smoke") ? List.of(SMOKE_SHAPE) : DEFAULT_MIX);
        }
        if (threads == null) {
            threads = full ? List.of("1", "2") : List.of("1");
        }
        boolean withCost = cost != null ? cost : full;
        return switch (mode) {
            case "smoke" -> new Settings(problems, threads, kernels, layouts, 1, 1, 1, 100, out, withCost, peers, mode);
            case "full" -> new Settings(problems, threads, kernels, layouts, 2, 3, 5, 1000, out, withCost, peers, mode);
            default -> new Settings(problems, threads, kernels, layouts, 1, 1, 3, 200, out, withCost, peers, mode);
        };
    }

    private static List<String> split(String arg) {
        return Arrays.stream(arg.substring(arg.indexOf('=') + 1).split(",")).map(String::trim)
                .filter(t -> !t.isEmpty()).toList();
    }

    private static String header(Settings s) {
        return "# vecnorm performance report\n\n"
                + "Kernels: " + BatchNorm.kernels() + ". JVM: " + System.getProperty("java.vm.name") + " "
                + System.getProperty("java.runtime.version") + ", " + Runtime.getRuntime().availableProcessors()
                + " CPUs. JMH: " + s.forks + " fork(s), " + s.warmups + " warm-up and " + s.iterations
                + " measured iterations of " + s.millis + " ms; times are medians of the iterations.\n\n"
                + "GB/s counts the minimum traffic (training and inference: read x, write y = 8 bytes per"
                + " element; backward: read x and dy, write dx = 12). `copy` is MemorySegment.copy (8 bytes"
                + " per element, streaming stores on large buffers): the machine's limit. `loop` is a Vector"
                + " API loop on the same bytes (load/store copy for the 8-byte kernels, dx = x + dy for"
                + " backward): the limit for ordinary stores. `vs scalar` is the scalar kernel's time over"
                + " the vector kernel's.\n\n"
                + "Shapes: " + s.problems.size() + ", of the suites " + String.join(", ", s.suites()) + " (layer names"
                + " as in bench/resources; '*K': K layers share the shape). Regimes by the size of x: "
                + String.join(", ", Problem.REGIMES) + ".\n\n";
    }

    /** One benchmark's result, keyed by name and params (null where a benchmark has none). */
    record Key(String benchmark, String shape, String layout, String kernels, String threads) {
    }

    static Map<Key, Result<?>> byKey(Collection<RunResult> results) {
        Map<Key, Result<?>> byKey = new LinkedHashMap<>();
        for (RunResult r : results) {
            var p = r.getParams();
            String name = p.getBenchmark().substring(p.getBenchmark().lastIndexOf('.') + 1);
            byKey.put(new Key(name, p.getParam("shape"), p.getParam("layout"), p.getParam("kernels"),
                    p.getParam("threads")), r.getPrimaryResult());
        }
        return byKey;
    }

    /** Median ms of a ceiling benchmark (they have no layout or kernels). */
    static double ceiling(Map<Key, Result<?>> byKey, String name, String shape, String threads) {
        return median(byKey.get(new Key(name, shape, null, null, threads)));
    }

    static String table(Collection<RunResult> results, Settings s) {
        Map<Key, Result<?>> byKey = byKey(results);
        StringBuilder t = new StringBuilder();
        t.append(SHAPE_HEADER).append(" layout | threads | kernel | ms | ± | GB/s | of copy | of loop | scalar ms | vs scalar |\n");
        t.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        StringBuilder ceilings = new StringBuilder();
        for (String shape : s.shapes()) {
            long elements = Problem.parse(shape, Layout.NCHW).elements();
            for (String threads : s.threads) {
                double copy = ceiling(byKey, "copy", shape, threads);
                double loop8 = ceiling(byKey, "vectorCopy", shape, threads);
                double loop12 = ceiling(byKey, "vectorTriad", shape, threads);
                ceilings.append(String.format(Locale.ROOT, "| %s | %s | %.4g ms, %.1f GB/s | %.4g ms, %.1f GB/s | %.4g ms, %.1f GB/s |%n",
                        shape, threads, copy, gbs(8 * elements, copy), loop8, gbs(8 * elements, loop8), loop12,
                        gbs(12 * elements, loop12)));
            }
            for (String layout : s.layouts) {
                for (String threads : s.threads) {
                    double copyGb = gbs(8 * elements, ceiling(byKey, "copy", shape, threads));
                    for (String kernel : KERNELS) {
                        Result<?> vec = byKey.get(new Key(kernel, shape, layout, "vector", threads));
                        Result<?> sca = byKey.get(new Key(kernel, shape, layout, "scalar", threads));
                        Result<?> main = vec != null ? vec : sca;
                        if (main == null) {
                            continue;
                        }
                        double ms = median(main);
                        double gb = gbs(Problem.minimumTraffic(kernel, elements), ms);
                        double loopGb = kernel.equals("backward")
                                ? gbs(12 * elements, ceiling(byKey, "vectorTriad", shape, threads))
                                : gbs(8 * elements, ceiling(byKey, "vectorCopy", shape, threads));
                        double scalarMs = sca == null ? Double.NaN : median(sca);
                        t.append(String.format(Locale.ROOT, "| %s | %s | %s | %s%s | %.4g | %.2g | %.1f | %s | %s | %s | %s |%n",
                                s.cells(shape), layout, threads, kernel, vec == null ? " (scalar)" : "", ms,
                                main.getScoreError(), gb, pct(gb / copyGb), pct(gb / loopGb),
                                Double.isNaN(scalarMs) ? "" : String.format(Locale.ROOT, "%.4g", scalarMs),
                                Double.isNaN(scalarMs) || vec == null ? "" : String.format(Locale.ROOT, "%.1fx", scalarMs / ms)));
                    }
                }
            }
        }
        t.append("\nCeilings, measured in the same run:\n\n| shape | threads | copy | vector copy loop | vector triad loop |\n|---|---|---|---|---|\n");
        t.append(ceilings);
        t.append(targets(byKey, s));
        if (s.threads.size() > 1) {
            t.append(scaling(byKey, s));
        }
        return t.toString();
    }

    /** A target of the report: a kernel's speed as a fraction of a ceiling of the same bytes. */
    record Target(String text, String kernel, String ceiling, double fraction) {
    }

    static final Target[] TARGETS = {
        new Target("training forward >= 75 % of the vector copy loop", "forwardTraining", "vectorCopy", 0.75),
        new Target("inference >= 90 % of the vector copy loop", "forwardInference", "vectorCopy", 0.90),
        new Target("in-place inference >= 85 % of copy", "forwardInferenceInPlace", "copy", 0.85),
        new Target("backward >= 65 % of the vector triad loop", "backward", "vectorTriad", 0.65),
    };

    /**
     * The shapes of each suite, in order; with {@code summary}, first all of them (where there are
     * several suites) and last those of each regime ({@link Problem#REGIMES}) that has any.
     */
    static Map<String, List<String>> groups(Settings s, boolean summary) {
        Map<String, List<String>> groups = new LinkedHashMap<>();
        if (summary && s.suites().size() > 1) {
            groups.put("all", s.shapes());
        }
        s.problems.forEach(p -> groups.computeIfAbsent(p.suite(), k -> new ArrayList<>()).add(p.descriptor()));
        for (String regime : summary ? Problem.REGIMES : List.<String>of()) {
            List<String> shapes = s.shapes().stream().filter(shape -> Problem.regime(shape).equals(regime)).toList();
            if (!shapes.isEmpty()) {
                groups.put(regime, shapes);
            }
        }
        return groups;
    }

    /**
     * How many shapes of each suite meet each target, per layout (vector kernels, first thread
     * count), and which miss it. A ceiling moves the bytes its kernel's minimum traffic counts, so
     * the fraction is the ceiling's time over the kernel's.
     */
    static String targets(Map<Key, Result<?>> byKey, Settings s) {
        String threads = s.threads.get(0);
        StringBuilder t = new StringBuilder("\nTargets (vector kernels, " + threads + " thread; per suite, shapes"
                + " that meet each, of those measured, and those that miss):\n\n| target | suite |");
        s.layouts.forEach(l -> t.append(' ').append(l).append(" |"));
        t.append("\n|---|---|");
        s.layouts.forEach(l -> t.append("---|"));
        t.append('\n');
        boolean any = false;
        for (Target target : TARGETS) {
            for (var group : groups(s, false).entrySet()) {
                t.append("| ").append(target.text()).append(" | ").append(group.getKey()).append(" |");
                for (String layout : s.layouts) {
                    String cell = targetCell(byKey, target, group.getValue(), layout, threads);
                    any |= cell != null;
                    t.append(' ').append(cell == null ? "0 of 0" : cell).append(" |");
                }
                t.append('\n');
            }
        }
        return any ? t.toString() : "";
    }

    /** "met of measured (misses)" for one target, layout and group of shapes; null where none was measured. */
    private static String targetCell(Map<Key, Result<?>> byKey, Target target, List<String> shapes, String layout,
                                     String threads) {
        int met = 0, measured = 0;
        List<String> missed = new ArrayList<>();
        for (String shape : shapes) {
            double ms = median(byKey.get(new Key(target.kernel(), shape, layout, "vector", threads)));
            double ceiling = ceiling(byKey, target.ceiling(), shape, threads);
            if (Double.isNaN(ms) || Double.isNaN(ceiling)) {
                continue;
            }
            measured++;
            if (ceiling / ms >= target.fraction()) {
                met++;
            } else {
                // Rounded down: a miss never shows the target's own figure.
                missed.add(shape + String.format(Locale.ROOT, " %.0f %%", Math.floor(100 * ceiling / ms)));
            }
        }
        return measured == 0 ? null : String.format(Locale.ROOT, "%d of %d%s", met, measured,
                missed.isEmpty() ? "" : " (" + String.join(", ", missed) + ")");
    }

    static final String[] PEER_KERNELS = {"forwardTraining", "forwardInference", "backward"};
    /** The targets against the fastest peer, in the order of {@link #PEER_KERNELS}. */
    static final double[] PEER_TARGETS = {1.2, 1.05, 1.2};
    static final String[] PEER_LABELS = {"training forward", "inference", "backward"};

    /**
     * vecnorm (vector kernels, first thread count) against every peer layout measured, and the
     * ratio to the fastest peer: peer ms / vecnorm ms, above 1 when vecnorm is faster. The last
     * column is the fastest peer over the Vector API loop ceiling of the same traffic (copy loop,
     * or triad loop for backward): the ratio a kernel that ran at that ceiling would get, the
     * most any kernel with ordinary stores can reach. Under it, the targets against the fastest
     * peer per group of shapes ({@link #groups}: all, each suite, each regime) with the geometric
     * mean of the ratio.
     */
    static String peers(Collection<RunResult> ours, Collection<RunResult> theirs, Settings s) {
        Map<Key, Result<?>> mine = byKey(ours);
        Map<String, Double> peer = new LinkedHashMap<>();
        java.util.Set<String> names = new java.util.TreeSet<>();
        for (RunResult r : theirs) {
            var p = r.getParams();
            String bench = p.getBenchmark();
            String kernel = bench.substring(bench.lastIndexOf('.') + 1);
            String lib = bench.contains("OneDnn") ? "oneDNN " + p.getParam("format")
                    : bench.contains("PyTorch") ? "PyTorch " + p.getParam("format") : "ONNX Runtime nchw";
            names.add(lib);
            peer.put(p.getParam("shape") + "/" + kernel + "/" + lib, median(r.getPrimaryResult()));
        }
        String threads = s.threads.get(0);
        StringBuilder t = new StringBuilder("\nAgainst the peers (" + threads + " thread, ms; ratio = fastest peer / vecnorm,"
                + " above 1 means vecnorm is faster; at loop = fastest peer / the vector loop ceiling of the same"
                + " traffic, the ratio a kernel with ordinary stores would reach at that ceiling):\n\n"
                + SHAPE_HEADER + " kernel | vecnorm NCHW | vecnorm NHWC |");
        names.forEach(n -> t.append(' ').append(n).append(" |"));
        t.append(" fastest peer | ratio NCHW | ratio NHWC | at loop |\n|---|---|---|---|---|---|");
        names.forEach(n -> t.append("---|"));
        t.append("---|---|---|---|\n");
        // Per shape, the ratio to the fastest peer per kernel and layout (NCHW, NHWC).
        Map<String, double[][]> ratios = new LinkedHashMap<>();
        for (String shape : s.shapes()) {
            double[][] ratio = new double[PEER_KERNELS.length][];
            ratios.put(shape, ratio);
            for (int k = 0; k < PEER_KERNELS.length; k++) {
                String kernel = PEER_KERNELS[k];
                double nchw = median(mine.get(new Key(kernel, shape, "NCHW", "vector", threads)));
                double nhwc = median(mine.get(new Key(kernel, shape, "NHWC", "vector", threads)));
                t.append(String.format(Locale.ROOT, "| %s | %s | %.4g | %.4g |", s.cells(shape), kernel, nchw, nhwc));
                double best = Double.NaN;
                String bestName = "";
                for (String n : names) {
                    Double ms = peer.get(shape + "/" + kernel + "/" + n);
                    t.append(ms == null ? " — |" : String.format(Locale.ROOT, " %.4g |", ms));
                    if (ms != null && !(ms >= best)) {
                        best = ms;
                        bestName = n;
                    }
                }
                double loop = ceiling(mine, kernel.equals("backward") ? "vectorTriad" : "vectorCopy", shape, threads);
                ratio[k] = new double[] {best / nchw, best / nhwc};
                t.append(String.format(Locale.ROOT, " %s | %.2fx | %.2fx | %.2fx |%n", bestName, ratio[k][0],
                        ratio[k][1], best / loop));
            }
        }
        t.append("\nTargets against the fastest peer (any of its layouts), per suite and per regime: shapes where"
                + " vecnorm meets each, of those measured, and the geometric mean of the ratio over them:\n\n"
                + "| target | shapes | NCHW | geomean NCHW | NHWC | geomean NHWC |\n|---|---|---|---|---|---|\n");
        for (int k = 0; k < PEER_KERNELS.length; k++) {
            for (var group : groups(s, true).entrySet()) {
                t.append(String.format(Locale.ROOT, "| %s >= %sx the fastest peer's speed | %s |", PEER_LABELS[k],
                        PEER_TARGETS[k], group.getKey()));
                for (int l = 0; l < 2; l++) {
                    int kernel = k, layout = l;
                    double[] measured = group.getValue().stream().mapToDouble(shape -> ratios.get(shape)[kernel][layout])
                            .filter(r -> !Double.isNaN(r)).toArray();
                    long met = Arrays.stream(measured).filter(r -> r >= PEER_TARGETS[kernel]).count();
                    double geomean = Math.exp(Arrays.stream(measured).map(Math::log).average().orElse(Double.NaN));
                    t.append(String.format(Locale.ROOT, " %d of %d | %s |", met, measured.length,
                            Double.isNaN(geomean) ? "—" : String.format(Locale.ROOT, "%.2fx", geomean)));
                }
                t.append('\n');
            }
        }
        return t.toString();
    }

    /**
     * The per-call overhead: the vector kernels on {@link #OVERHEAD_SHAPE} (512 values), one
     * thread, in nanoseconds, with JMH's GC profiler for the bytes each call allocates. Five times
     * the usual warm-up: a call this short takes a while to reach its compiled steady state.
     */
    private static Collection<RunResult> runOverhead(Settings s, Path json) throws RunnerException {
        return new Runner(options(s, json)
                .include("dev\\.vecnorm\\.BatchNormBenchmark\\.(forwardTraining|forwardInference|backward)$")
                .param("shape", OVERHEAD_SHAPE)
                .param("threads", "1")
                .param("layout", "NCHW")
                .param("kernels", "vector")
                .timeUnit(TimeUnit.NANOSECONDS)
                .addProfiler(GCProfiler.class)
                .warmupIterations(5 * s.warmups)
                .build()).run();
    }

    static String overhead(Collection<RunResult> results) {
        StringBuilder t = new StringBuilder("\nPer-call overhead (vector kernels, " + OVERHEAD_SHAPE
                + " = 512 values, the same path in both layouts, 1 thread; allocation from JMH's GC"
                + " profiler):\n\n| kernel | ns per call | ± | bytes allocated per call |\n|---|---|---|---|\n");
        for (RunResult r : results) {
            var p = r.getParams();
            String name = p.getBenchmark().substring(p.getBenchmark().lastIndexOf('.') + 1);
            Result<?> alloc = r.getSecondaryResults().entrySet().stream()
                    .filter(e -> e.getKey().endsWith("gc.alloc.rate.norm")).map(Map.Entry::getValue)
                    .findFirst().orElse(null);
            t.append(String.format(Locale.ROOT, "| %s | %.0f | %.0f | %s |%n", name,
                    median(r.getPrimaryResult()), r.getPrimaryResult().getScoreError(),
                    alloc == null ? "" : String.format(Locale.ROOT, "%.0f", alloc.getScore())));
        }
        return t.toString();
    }

    /** Deterministic training forward against the float-lanes variant, per shape and layout. */
    static String cost(Collection<RunResult> results, Settings s) {
        Map<Key, Result<?>> byKey = byKey(results);
        StringBuilder t = new StringBuilder("\nCost of determinism (training forward, 1 thread): vecnorm against"
                + " the fastest variant without the bitwise guarantee (float lanes, reduceLanes):\n\n"
                + "| shape | layout | deterministic ms | float lanes ms | cost |\n|---|---|---|---|---|\n");
        for (String shape : s.shapes()) {
            for (String layout : s.layouts) {
                double det = median(byKey.get(new Key("deterministic", shape, layout, null, null)));
                double fast = median(byKey.get(new Key("floatLanes", shape, layout, null, null)));
                t.append(String.format(Locale.ROOT, "| %s | %s | %.4g | %.4g | %+.0f %% |%n", shape, layout, det,
                        fast, 100 * (det / fast - 1)));
            }
        }
        return t.toString();
    }

    /** Speed-up of each thread count over the first, and efficiency = speed-up / threads. */
    static String scaling(Map<Key, Result<?>> byKey, Settings s) {
        String base = s.threads.get(0);
        StringBuilder t = new StringBuilder("\nScaling (vector kernels; efficiency = speed-up / thread ratio):\n\n"
                + "| shape | layout | kernel | threads | speed-up | efficiency | copy speed-up |\n|---|---|---|---|---|---|---|\n");
        for (String shape : s.shapes()) {
            for (String layout : s.layouts) {
                for (String kernel : KERNELS) {
                    double one = median(byKey.get(new Key(kernel, shape, layout, "vector", base)));
                    for (String threads : s.threads.subList(1, s.threads.size())) {
                        double many = median(byKey.get(new Key(kernel, shape, layout, "vector", threads)));
                        if (Double.isNaN(one) || Double.isNaN(many)) {
                            continue;
                        }
                        double ratio = Double.parseDouble(threads) / Double.parseDouble(base);
                        double copyUp = ceiling(byKey, "copy", shape, base) / ceiling(byKey, "copy", shape, threads);
                        t.append(String.format(Locale.ROOT, "| %s | %s | %s | %s | %.2fx | %s | %.2fx |%n", shape,
                                layout, kernel, threads, one / many, pct(one / many / ratio), copyUp));
                    }
                }
            }
        }
        return t.toString();
    }

    /** The median of a result's samples (its score where it has none); NaN for no result. */
    static double median(Result<?> r) {
        if (r == null) {
            return Double.NaN;
        }
        return r.getStatistics().getN() > 0 ? r.getStatistics().getPercentile(50) : r.getScore();
    }

    private static double gbs(long bytes, double ms) {
        return bytes / (ms * 1e-3) / 1e9;
    }

    private static String pct(double fraction) {
        return Double.isNaN(fraction) ? "" : String.format(Locale.ROOT, "%.0f %%", 100 * fraction);
    }

}
