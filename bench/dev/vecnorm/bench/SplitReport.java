package dev.vecnorm.bench;

import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;

/**
 * The report's "split statistics and views" table ({@code dev.vecnorm.SplitBenchmark}): training
 * whose statistics are accumulated per image while a producer writes x, against producing x and
 * then today's forwardTraining, with the one-read target (producing x, then inference); and the
 * kernels on channel-slice views against dense tensors (target within 5 %). Runs with
 * {@code --split}, and in {@code --full} and {@code --smoke}.
 */
final class SplitReport {

    private SplitReport() {
    }

    static boolean wanted(String[] args) {
        return List.of(args).stream().anyMatch(a -> a.equals("--split") || a.equals("--full") || a.equals("--smoke"));
    }

    static String run(Report.Settings s) throws RunnerException {
        Collection<RunResult> results = new Runner(Report.options(s, s.out().resolve("jmh-result-split.json"))
                .include("dev\\.vecnorm\\.SplitBenchmark\\.")
                .param("shape", s.shapes().toArray(String[]::new))
                .param("layout", s.layouts().toArray(String[]::new))
                .build()).run();
        Map<String, Double> ms = new LinkedHashMap<>();
        for (RunResult r : results) {
            var p = r.getParams();
            String b = p.getBenchmark();
            ms.put(b.substring(b.lastIndexOf('.') + 1) + "/" + p.getParam("shape") + "/" + p.getParam("layout"),
                    Report.median(r.getPrimaryResult()));
        }
        StringBuilder t = new StringBuilder("\nSplit statistics and views (vector kernels, 1 thread, ms)."
                + " A producer writes x tile by tile (a copy, standing in for a convolution; a tile fills half the L2); then"
                + " forwardTraining (x read twice more), or each tile's statistics accumulated while it"
                + " is in cache and forwardTraining with them (x read once more), or inference (the"
                + " one-read target). share = (accumulated - produce) / (inference - produce): 1.00 is"
                + " the target. Views: channel slices [0, C) of tensors of 2C channels against dense"
                + " tensors (target: within 5 %):\n\n").append(Report.SHAPE_HEADER)
                .append(" layout | produce | then training | accumulated | then inference | share |"
                        + " training | view | view / dense | backward | view | view / dense |\n")
                .append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (String shape : s.shapes()) {
            for (String layout : s.layouts()) {
                String k = "/" + shape + "/" + layout;
                double produce = get(ms, "produce" + k), then = get(ms, "produceThenTraining" + k);
                double acc = get(ms, "produceAccumulateTraining" + k), inf = get(ms, "produceThenInference" + k);
                double tr = get(ms, "training" + k), vtr = get(ms, "viewTraining" + k);
                double bw = get(ms, "backward" + k), vbw = get(ms, "viewBackward" + k);
                t.append(String.format(Locale.ROOT,
                        "| %s | %s | %.4g | %.4g | %.4g | %.4g | %.2f | %.4g | %.4g | %+.0f %% | %.4g | %.4g | %+.0f %% |\n",
                        s.cells(shape), layout, produce, then, acc, inf, (acc - produce) / (inf - produce),
                        tr, vtr, 100 * (vtr / tr - 1), bw, vbw, 100 * (vbw / bw - 1)));
            }
        }
        return t.toString();
    }

    private static double get(Map<String, Double> ms, String key) {
        Double v = ms.get(key);
        return v == null ? Double.NaN : v;
    }
}
