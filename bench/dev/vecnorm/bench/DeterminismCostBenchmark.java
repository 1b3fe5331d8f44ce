package dev.vecnorm.bench;

import dev.vecnorm.BatchNorm;
import dev.vecnorm.Layout;
import dev.vecnorm.TensorShape;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * What determinism costs in training forward: vecnorm's kernel against the fastest variant
 * written here without that constraint: float accumulators at the hardware's width (16 values
 * per register instead of 8 doubles), {@code reduceLanes} (order unspecified) per plane or
 * row block, the same shift and the same normalisation pass. Its results depend on the vector
 * width, and its float sums lose accuracy as planes grow; it exists only to be timed.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class DeterminismCostBenchmark {

    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final int L = S.length();
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"NCHW", "NHWC"})
    public Layout layout;

    private Arena arena;
    private TensorShape t;
    private MemorySegment x, y, mean, var;
    private BatchNorm bn;
    private float[] mu, scale, offset, shift;
    private double[] s1, s2;

    @Setup
    public void setUp() {
        t = Problem.parse(shape, layout);
        arena = Arena.ofShared();
        x = Problem.random(arena, t.elements(), 1, 0.5f, 2f);
        y = arena.allocate(4 * t.elements(), 64);
        mean = arena.allocate(4L * t.channels());
        var = arena.allocate(4L * t.channels());
        bn = BatchNorm.builder(t).build();
        int c = t.channels();
        mu = new float[c];
        scale = new float[c];
        offset = new float[c];
        shift = new float[c];
        s1 = new double[c];
        s2 = new double[c];
    }

    @TearDown
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public void deterministic() {
        bn.forwardTraining(x, null, null, y, mean, var);
    }

    @Benchmark
    public void floatLanes() {
        int channels = t.channels();
        long spatial = t.spatial(), m = t.perChannel();
        java.util.Arrays.fill(s1, 0);
        java.util.Arrays.fill(s2, 0);
        if (layout == Layout.NCHW) {
            for (int c = 0; c < channels; c++) {
                shift[c] = x.getAtIndex(F32, (long) c * spatial);
            }
            for (int n = 0; n < t.batch(); n++) {
                for (int c = 0; c < channels; c++) {
                    long base = 4 * ((long) n * channels + c) * spatial;
                    FloatVector k = FloatVector.broadcast(S, shift[c]);
                    FloatVector a0 = FloatVector.zero(S), a1 = a0, q0 = a0, q1 = a0;
                    long end = base + 4 * (spatial - spatial % (2L * L));
                    for (long o = base; o < end; o += 8L * L) {
                        FloatVector d0 = FloatVector.fromMemorySegment(S, x, o, NATIVE).sub(k);
                        FloatVector d1 = FloatVector.fromMemorySegment(S, x, o + 4L * L, NATIVE).sub(k);
                        a0 = a0.add(d0);
                        q0 = d0.fma(d0, q0);
                        a1 = a1.add(d1);
                        q1 = d1.fma(d1, q1);
                    }
                    double t1 = a0.add(a1).reduceLanes(VectorOperators.ADD);
                    double t2 = q0.add(q1).reduceLanes(VectorOperators.ADD);
                    for (long o = end; o < base + 4 * spatial; o += 4) {
                        double d = x.get(F32, o) - shift[c];
                        t1 += d;
                        t2 += d * d;
                    }
                    s1[c] += t1;
                    s2[c] += t2;
                }
            }
        } else {
            for (int c = 0; c < channels; c++) {
                shift[c] = x.getAtIndex(F32, c);
            }
            float[] a = new float[channels], q = new float[channels];
            int vectorEnd = channels - channels % L;
            for (long r = 0; r < m; r++) {
                long base = 4 * r * channels;
                for (int c = 0; c < vectorEnd; c += L) {
                    FloatVector d = FloatVector.fromMemorySegment(S, x, base + 4L * c, NATIVE)
                            .sub(FloatVector.fromArray(S, shift, c));
                    FloatVector.fromArray(S, a, c).add(d).intoArray(a, c);
                    d.fma(d, FloatVector.fromArray(S, q, c)).intoArray(q, c);
                }
                for (int c = vectorEnd; c < channels; c++) {
                    float d = x.get(F32, base + 4L * c) - shift[c];
                    a[c] += d;
                    q[c] += d * d;
                }
                if ((r & 255) == 255 || r == m - 1) {       // fold to double every 256 rows
                    for (int c = 0; c < channels; c++) {
                        s1[c] += a[c];
                        s2[c] += q[c];
                        a[c] = 0;
                        q[c] = 0;
                    }
                }
            }
        }
        for (int c = 0; c < channels; c++) {
            double mean = shift[c] + s1[c] / m;
            double variance = Math.max(0, s2[c] / m - (s1[c] / m) * (s1[c] / m));
            mu[c] = (float) mean;
            scale[c] = (float) (1 / Math.sqrt(variance + 1e-5));
            offset[c] = 0;
        }
        normalize();
    }

    private void normalize() {
        int channels = t.channels();
        long spatial = t.spatial();
        if (layout == Layout.NCHW) {
            for (long p = 0; p < (long) t.batch() * channels; p++) {
                int c = (int) (p % channels);
                FloatVector m = FloatVector.broadcast(S, mu[c]), a = FloatVector.broadcast(S, scale[c]);
                long base = 4 * p * spatial, end = base + 4 * (spatial - spatial % L);
                for (long o = base; o < end; o += 4L * L) {
                    FloatVector.fromMemorySegment(S, x, o, NATIVE).sub(m).mul(a).intoMemorySegment(y, o, NATIVE);
                }
                for (long o = end; o < base + 4 * spatial; o += 4) {
                    y.set(F32, o, (x.get(F32, o) - mu[c]) * scale[c]);
                }
            }
        } else {
            int vectorEnd = channels - channels % L;
            for (long r = 0; r < t.perChannel(); r++) {
                long base = 4 * r * channels;
                for (int c = 0; c < vectorEnd; c += L) {
                    FloatVector.fromMemorySegment(S, x, base + 4L * c, NATIVE).sub(FloatVector.fromArray(S, mu, c))
                            .mul(FloatVector.fromArray(S, scale, c)).intoMemorySegment(y, base + 4L * c, NATIVE);
                }
                for (int c = vectorEnd; c < channels; c++) {
                    y.set(F32, base + 4L * c, (x.get(F32, base + 4L * c) - mu[c]) * scale[c]);
                }
            }
        }
    }
}
