package dev.vecnorm.bench;

import dev.vecnorm.Layout;
import java.awt.Color;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.knowm.xchart.CategoryChart;
import org.knowm.xchart.CategoryChartBuilder;
import org.knowm.xchart.VectorGraphicsEncoder;
import org.knowm.xchart.style.Styler;
import org.openjdk.jmh.results.Result;

/**
 * The report's picture: per shape, the GB/s each vector kernel achieves (first thread count),
 * beside the two ceilings measured in the same run. Drawn with XChart (benchmark scope only).
 */
final class Chart {

    private Chart() {
    }

    static void write(Map<Report.Key, Result<?>> byKey, Report.Settings s, Path svg) throws IOException {
        String threads = s.threads().get(0);
        List<String> shapes = s.shapes();
        CategoryChart chart = new CategoryChartBuilder().width(Math.max(1100, 200 + 160 * shapes.size())).height(600)
                .title("vecnorm, " + threads + " thread(s): achieved GB/s (minimum traffic) vs the copy ceilings")
                .xAxisTitle("shape").yAxisTitle("GB/s").build();
        chart.getStyler().setLegendPosition(Styler.LegendPosition.OutsideE);
        chart.getStyler().setLegendLayout(Styler.LegendLayout.Vertical);
        // The two ceilings in greys, the kernels in colours: NCHW warm, NHWC cool.
        chart.getStyler().setSeriesColors(new Color[] {
            new Color(0x40, 0x40, 0x40), new Color(0xA0, 0xA0, 0xA0),
            new Color(0xD6, 0x27, 0x28), new Color(0xFF, 0x7F, 0x0E), new Color(0xE3, 0x77, 0xC2),
            new Color(0x8C, 0x56, 0x4B), new Color(0x1F, 0x77, 0xB4), new Color(0x17, 0xBE, 0xCF),
            new Color(0x2C, 0xA0, 0x2C), new Color(0x94, 0x67, 0xBD)});
        chart.getStyler().setXAxisLabelRotation(20);
        chart.getStyler().setChartBackgroundColor(Color.WHITE);
        chart.getStyler().setAvailableSpaceFill(0.9);
        series(chart, "MemorySegment.copy", shapes, shape ->
                gbs(8, shape, Report.ceiling(byKey, "copy", shape, threads)));
        series(chart, "vector copy loop", shapes, shape ->
                gbs(8, shape, Report.ceiling(byKey, "vectorCopy", shape, threads)));
        for (String layout : s.layouts()) {
            for (String kernel : Report.KERNELS) {
                series(chart, layout + " " + kernel, shapes, shape -> {
                    Result<?> r = byKey.get(new Report.Key(kernel, shape, layout, "vector", threads));
                    return r == null ? 0 : gbs(Problem.minimumTraffic(kernel, 1) / 1.0, shape,
                            r.getStatistics().getPercentile(50));
                });
            }
        }
        VectorGraphicsEncoder.saveVectorGraphic(chart, svg.toString(), VectorGraphicsEncoder.VectorGraphicsFormat.SVG);
    }

    private interface Value {
        double of(String shape);
    }

    private static void series(CategoryChart chart, String name, List<String> shapes, Value value) {
        List<Double> ys = new ArrayList<>();
        for (String shape : shapes) {
            double v = value.of(shape);
            ys.add(Double.isFinite(v) ? v : 0);
        }
        if (ys.stream().anyMatch(v -> v > 0)) {
            chart.addSeries(name, new ArrayList<>(shapes), ys);
        }
    }

    private static double gbs(double bytesPerElement, String shape, double ms) {
        long elements = Problem.parse(shape, Layout.NCHW).elements();
        return bytesPerElement * elements / (ms * 1e-3) / 1e9;
    }
}
