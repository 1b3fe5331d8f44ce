package dev.vecnorm.bench;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;

/**
 * The report's norm-family section ({@link dev.vecnorm.NormBenchmark}): forward and backward per
 * problem in ms and GB/s (forward reads x and writes y: 8 bytes per element; backward reads x and
 * dy and writes dx: 12), as a fraction of the vector copy loop on the same bytes, against the plain
 * scalar loops of JVM engines for the row norms, and with {@code --peers} against PyTorch and
 * oneDNN. Problems: a mix of each norm ({@link #DEFAULT_MIX}), all of
 * {@code norm_shapes.txt} with {@code --norms} or {@code --full}, tiny ones with {@code --smoke}.
 */
final class NormReport {

    static final List<String> DEFAULT_MIX = List.of(
            "rms_norm/rows1_d4096", "rms_norm/rows32_d4096", "rms_norm/rows2048_d4096",
            "layer_norm/rows32_d4096", "layer_norm/rows512_d1024",
            "group_norm/mb2_ic320_ih64iw64_g32/NCHW", "group_norm/mb2_ic320_ih64iw64_g32/NHWC",
            "instance_norm/mb4_ic128_ih128iw128/NCHW");
    static final List<String> SMOKE = List.of("rms_norm/rows4_d256", "layer_norm/rows4_d256",
            "group_norm/mb1_ic32_ih8iw8_g8/NHWC");

    /** The targets of the norm issue. */
    static final double COPY_TARGET = 0.90, CACHE_PEER_TARGET = 1.2, MEMORY_PEER_TARGET = 1.0, ENGINE_TARGET = 4.0;

    private NormReport() {
    }

    /** The problems the arguments ask for, each with its layer's name where it has one. */
    static List<NormProblem.Named> problems(String[] args, String mode) {
        List<String> given = List.of(args);
        if (given.contains("--norms") || mode.equals("full")) {
            return NormProblem.NORMS.stream().flatMap(n -> NormProblem.suite(n).stream()).toList();
        }
        Map<String, String> layers = new LinkedHashMap<>();
        NormProblem.NORMS.forEach(n -> NormProblem.suite(n).forEach(p -> layers.putIfAbsent(p.problem(), p.layer())));
        return (mode.equals("smoke") ? SMOKE : DEFAULT_MIX).stream()
                .map(p -> new NormProblem.Named(p, layers.getOrDefault(p, ""))).toList();
    }

    /** Runs the norm benchmarks (the peers' with {@code s.peers()}) and returns the section. */
    static String run(Report.Settings s, List<NormProblem.Named> problems) throws RunnerException {
        String[] all = problems.stream().map(NormProblem.Named::problem).toArray(String[]::new);
        String[] rows = problems.stream().map(NormProblem.Named::problem).filter(p -> NormProblem.parse(p).rowNorm())
                .toArray(String[]::new);
        List<RunResult> results = new ArrayList<>(run(s, "dev\\.vecnorm\\.NormBenchmark\\.(forward|backward|copy|vectorCopy)$",
                all, "jmh-result-norms.json"));
        if (rows.length > 0) {
            results.addAll(run(s, "dev\\.vecnorm\\.NormBenchmark\\.engineLoops$", rows, "jmh-result-norms-engines.json"));
        }
        if (s.peers()) {
            results.addAll(run(s, "dev\\.vecnorm\\.peers\\.OneDnnNormBenchmark\\.", all, "jmh-result-norms-onednn.json"));
            results.addAll(run(s, "dev\\.vecnorm\\.peers\\.PyTorchNormBenchmark\\.forward$", all, "jmh-result-norms-pytorch.json"));
            // PyTorch has no CPU rms_norm backward of its own (autograd composes it): not timed.
            String[] notRms = problems.stream().map(NormProblem.Named::problem).filter(p -> !p.startsWith("rms_norm/"))
                    .toArray(String[]::new);
            if (notRms.length > 0) {
                results.addAll(run(s, "dev\\.vecnorm\\.peers\\.PyTorchNormBenchmark\\.backward$", notRms,
                        "jmh-result-norms-pytorch-backward.json"));
            }
        }
        return table(results, problems, s.peers());
    }

    private static Collection<RunResult> run(Report.Settings s, String include, String[] problems, String json)
            throws RunnerException {
        return new Runner(Report.options(s, s.out().resolve(json)).include(include).param("problem", problems)
                .param("threads", "1").build()).run();
    }

    static String table(Collection<RunResult> results, List<NormProblem.Named> problems, boolean peers) {
        Map<String, Double> ms = new LinkedHashMap<>();
        for (RunResult r : results) {
            var p = r.getParams();
            String b = p.getBenchmark();
            String who = b.contains(".peers.OneDnn") ? "oneDNN/" : b.contains(".peers.PyTorch") ? "PyTorch/" : "";
            ms.put(who + b.substring(b.lastIndexOf('.') + 1) + "/" + p.getParam("problem"), Report.median(r.getPrimaryResult()));
        }
        StringBuilder t = new StringBuilder("\nNorm family (vector kernels, 1 thread, ms; GB/s under the minimum"
                + " traffic: forward 8 bytes per element, backward 12; `of vector copy` = GB/s over the Vector API"
                + " copy loop's on the same bytes; `engine loops` = the scalar row loops of JVM engines today,"
                + " reimplemented in bench scope (llama3.java's RMSNorm, Jlama's LayerNorm)"
                + (peers ? "; ratio = fastest peer / vecnorm" : "") + "):\n\n"
                + "| problem | layer | x | forward | GB/s | of vector copy | backward | GB/s | engine loops | vs engine |");
        if (peers) {
            t.append(" oneDNN fwd | PyTorch fwd | fwd ratio | oneDNN bwd | PyTorch bwd | bwd ratio |");
        }
        t.append("\n|---|---|---|---|---|---|---|---|---|---|").append(peers ? "---|---|---|---|---|---|\n" : "\n");
        int copyMet = 0, copyAsked = 0, engineMet = 0, engineAsked = 0, peerMet = 0, peerAsked = 0;
        for (NormProblem.Named n : problems) {
            String p = n.problem();
            NormProblem q = NormProblem.parse(p);
            long e = q.elements();
            double fwd = get(ms, "forward/" + p), bwd = get(ms, "backward/" + p), vcopy = get(ms, "vectorCopy/" + p);
            double engine = get(ms, "engineLoops/" + p);
            double ofCopy = vcopy / fwd;
            t.append(String.format(Locale.ROOT, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", p, n.layer(),
                    size(4 * e), fmt(fwd), fmt(gbs(8 * e, fwd)), pct(ofCopy), fmt(bwd), fmt(gbs(12 * e, bwd)),
                    fmt(engine), ratio(engine / fwd)));
            if (q.rowNorm() && 4L * q.features() >= 16 << 10 && !Double.isNaN(ofCopy)) {
                copyAsked++;
                copyMet += ofCopy >= COPY_TARGET ? 1 : 0;
            }
            if (!Double.isNaN(engine)) {
                engineAsked++;
                engineMet += engine / fwd >= ENGINE_TARGET ? 1 : 0;
            }
            if (peers) {
                double df = get(ms, "oneDNN/forward/" + p), tf = get(ms, "PyTorch/forward/" + p);
                double db = get(ms, "oneDNN/backward/" + p), tb = get(ms, "PyTorch/backward/" + p);
                double rf = fastest(df, tf) / fwd, rb = fastest(db, tb) / bwd;
                t.append(String.format(Locale.ROOT, " %s | %s | %s | %s | %s | %s |", fmt(df), fmt(tf), ratio(rf),
                        fmt(db), fmt(tb), ratio(rb)));
                double target = 4 * e <= 12L << 20 ? CACHE_PEER_TARGET : 4 * e >= 64L << 20 ? MEMORY_PEER_TARGET : Double.NaN;
                for (double r : new double[] {rf, rb}) {
                    if (!Double.isNaN(r) && !Double.isNaN(target)) {
                        peerAsked++;
                        peerMet += r >= target ? 1 : 0;
                    }
                }
            }
            t.append('\n');
        }
        t.append(String.format(Locale.ROOT, "\nTargets: rows of 16 KiB and more at >= %.0f %% of the vector copy loop:"
                + " %d of %d; >= %.0fx the engine loops: %d of %d", 100 * COPY_TARGET, copyMet, copyAsked, ENGINE_TARGET,
                engineMet, engineAsked));
        if (peers) {
            t.append(String.format(Locale.ROOT, "; >= %.1fx the fastest peer (x <= 12 MiB) and >= %.1fx (x >= 64 MiB):"
                    + " %d of %d", CACHE_PEER_TARGET, MEMORY_PEER_TARGET, peerMet, peerAsked));
        }
        return t.append(".\n").toString();
    }

    private static double get(Map<String, Double> ms, String key) {
        Double v = ms.get(key);
        return v == null ? Double.NaN : v;
    }

    private static double fastest(double a, double b) {
        return Double.isNaN(a) ? b : Double.isNaN(b) ? a : Math.min(a, b);
    }

    private static String size(long bytes) {
        return bytes >= 1 << 20 ? (bytes >> 20) + " MiB" : (bytes >> 10) + " KiB";
    }

    private static double gbs(long bytes, double ms) {
        return bytes / ms / 1e6;
    }

    private static String fmt(double v) {
        return Double.isNaN(v) ? "—" : String.format(Locale.ROOT, "%.4g", v);
    }

    private static String pct(double f) {
        return Double.isNaN(f) ? "—" : String.format(Locale.ROOT, "%.0f %%", 100 * f);
    }

    private static String ratio(double r) {
        return Double.isNaN(r) ? "—" : String.format(Locale.ROOT, "%.2fx", r);
    }
}
