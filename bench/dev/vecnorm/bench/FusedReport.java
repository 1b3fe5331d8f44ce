package dev.vecnorm.bench;

import dev.vecnorm.FusedBenchmark;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.openjdk.jmh.results.Result;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;

/**
 * The report's "fused kernels" table: vecnorm's fused BatchNorm + ReLU and BatchNorm + add + ReLU
 * ({@link FusedBenchmark}) against vecnorm's plain kernel of the same call (the target:
 * within 5 %), against the plain kernel with a separate element-wise pass, and with
 * {@code --peers} against oneDNN's {@code fuse_norm_relu} / {@code fuse_norm_add_relu} and
 * PyTorch's batch_norm then relu_ (target: 1.2x the fastest on cache-resident layers). Runs with
 * {@code --fused}, and in {@code --full} and {@code --smoke}.
 */
final class FusedReport {

    /** The plain kernel each fused one is compared with. */
    private static final Map<String, String> PLAIN = Map.of("reluTraining", "forwardTraining",
            "addReluTraining", "forwardTraining", "reluInference", "forwardInference",
            "addReluInference", "forwardInference", "reluBackward", "backward", "addReluBackward", "backward");

    private FusedReport() {
    }

    /** Whether the arguments ask for the table. */
    static boolean wanted(String[] args) {
        return List.of(args).stream().anyMatch(a -> a.equals("--fused") || a.equals("--full") || a.equals("--smoke"));
    }

    /** Runs the fused benchmarks (and the peers' with {@code s.peers()}) and returns the table. */
    static String run(Report.Settings s, Collection<RunResult> plain) throws RunnerException {
        List<String> layouts = s.layouts();
        String threads = s.threads().get(0);
        Collection<RunResult> ours = new Runner(Report.options(s, s.out().resolve("jmh-result-fused.json"))
                .include("dev\\.vecnorm\\.FusedBenchmark\\.")
                .param("shape", s.shapes().toArray(String[]::new))
                .param("layout", layouts.toArray(String[]::new))
                .param("threads", threads)
                .build()).run();
        Collection<RunResult> theirs = !s.peers() ? List.of()
                : new Runner(Report.options(s, s.out().resolve("jmh-result-fused-peers.json"))
                        .include("dev\\.vecnorm\\.peers\\..*FusedBenchmark\\.")
                        .param("shape", s.shapes().toArray(String[]::new))
                        .param("threads", threads)
                        .build()).run();
        return table(ours, plain, theirs, s, threads);
    }

    static String table(Collection<RunResult> ours, Collection<RunResult> plain, Collection<RunResult> theirs,
                        Report.Settings s, String threads) {
        Map<String, Double> ms = new LinkedHashMap<>();
        for (RunResult r : ours) {
            var p = r.getParams();
            ms.put(name(p.getBenchmark()) + "/" + p.getParam("shape") + "/" + p.getParam("layout"), Report.median(r.getPrimaryResult()));
        }
        Map<Report.Key, Result<?>> mine = Report.byKey(plain);
        // The fastest format of each peer library, per shape and kernel.
        Map<String, Double> peer = new LinkedHashMap<>();
        for (RunResult r : theirs) {
            var p = r.getParams();
            String lib = p.getBenchmark().contains("OneDnn") ? "oneDNN" : "PyTorch";
            peer.merge(lib + "/" + p.getParam("shape") + "/" + name(p.getBenchmark()), Report.median(r.getPrimaryResult()), Math::min);
        }
        StringBuilder t = new StringBuilder("\nFused kernels (vector kernels, " + threads + " thread, ms): vecnorm fused"
                + " against vecnorm's plain kernel of the same call (cost = fused / plain - 1; target within 5 %),"
                + " against the plain kernel plus a separate element-wise pass (saving = separate / fused)");
        t.append(s.peers() ? ", and against oneDNN's fused kernels (fastest of its formats) and PyTorch's"
                + " batch_norm then relu_ (ratio = fastest peer / vecnorm fused; target 1.2x on cache-resident"
                + " layers)" : "").append(":\n\n").append(Report.SHAPE_HEADER)
                .append(" layout | kernel | fused | plain | cost | separate | saving |");
        if (s.peers()) {
            t.append(" oneDNN fused | PyTorch | ratio |");
        }
        t.append("\n|---|---|---|---|---|---|---|---|---|---|").append(s.peers() ? "---|---|---|\n" : "\n");
        for (String shape : s.shapes()) {
            for (String layout : s.layouts()) {
                for (String kernel : FusedBenchmark.KERNELS) {
                    Double fused = ms.get(kernel + "/" + shape + "/" + layout);
                    if (fused == null) {
                        continue;
                    }
                    String form = kernel.replace("Workspace", "");     // the same call without the workspace
                    double separate = orNaN(ms.get(form + "Separate/" + shape + "/" + layout));
                    double base = Report.median(mine.get(new Report.Key(PLAIN.get(form), shape, layout, "vector", threads)));
                    t.append(String.format(Locale.ROOT, "| %s | %s | %s | %.4g | %s | %s | %.4g | %.2fx |", s.cells(shape), layout,
                            kernel, fused, fmt(base), Double.isNaN(base) ? "" : String.format(Locale.ROOT, "%+.0f %%",
                                    100 * (fused / base - 1)), separate, separate / fused));
                    if (s.peers()) {
                        double dnnl = orNaN(peer.get("oneDNN/" + shape + "/" + form));
                        double torch = orNaN(peer.get("PyTorch/" + shape + "/" + form));
                        double best = Math.min(Double.isNaN(dnnl) ? Double.MAX_VALUE : dnnl,
                                Double.isNaN(torch) ? Double.MAX_VALUE : torch);
                        t.append(String.format(Locale.ROOT, " %s | %s | %s |", fmt(dnnl), fmt(torch),
                                best == Double.MAX_VALUE ? "" : String.format(Locale.ROOT, "%.2fx", best / fused)));
                    }
                    t.append('\n');
                }
            }
        }
        return t.toString();
    }

    private static String name(String benchmark) {
        return benchmark.substring(benchmark.lastIndexOf('.') + 1);
    }

    private static double orNaN(Double d) {
        return d == null ? Double.NaN : d;
    }

    private static String fmt(double v) {
        return Double.isNaN(v) ? "—" : String.format(Locale.ROOT, "%.4g", v);
    }
}
