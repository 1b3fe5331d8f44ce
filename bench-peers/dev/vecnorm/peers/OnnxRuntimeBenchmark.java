package dev.vecnorm.peers;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import dev.vecnorm.bench.Problem;
import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.TimeUnit;
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
 * ONNX Runtime's CPU BatchNormalization (opset 15) on one-node models written here as protobuf
 * bytes, inputs and outputs pinned to direct buffers over Java-owned off-heap memory. ONNX
 * Runtime has no BatchNorm backward. Threads: intra-op = the {@code threads} parameter.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class OnnxRuntimeBenchmark {

    @Param({"mb32ic64ih56iw56"})
    public String shape;

    @Param({"1"})
    public int threads;

    private Arena arena;
    private OrtSession training, inference;
    private Map<String, OnnxTensor> inputs, trainingOutputs, inferenceOutputs;

    @Setup
    public void setUp() throws OrtException {
        long[] dims = Problem.dims(shape);
        long e = dims[0] * dims[1] * dims[2] * dims[3];
        int c = (int) dims[1];
        arena = Arena.ofShared();
        OrtEnvironment env = OrtEnvironment.getEnvironment();
        OrtSession.SessionOptions options = new OrtSession.SessionOptions();
        options.setIntraOpNumThreads(threads);
        options.setInterOpNumThreads(1);
        float[] scale = new float[c], bias = new float[c], mean = new float[c], var = new float[c];
        java.util.Arrays.fill(scale, 1f);
        java.util.Arrays.fill(var, 1f);
        training = env.createSession(OnnxModels.batchNorm(dims, scale, bias, mean, var, true), options);
        inference = env.createSession(OnnxModels.batchNorm(dims, scale, bias, mean, var, false), options);
        inputs = Map.of("X", tensor(env, Problem.random(arena, e, 1, 0.5f, 2f), dims));
        OnnxTensor y = tensor(env, arena.allocate(4 * e, 64), dims);
        inferenceOutputs = Map.of("Y", y);
        trainingOutputs = Map.of("Y", y,
                "running_mean", tensor(env, arena.allocate(4L * c, 64), new long[] {c}),
                "running_var", tensor(env, arena.allocate(4L * c, 64), new long[] {c}));
    }

    private static OnnxTensor tensor(OrtEnvironment env, MemorySegment s, long[] dims) throws OrtException {
        FloatBuffer b = s.asByteBuffer().order(ByteOrder.nativeOrder()).asFloatBuffer();
        return OnnxTensor.createTensor(env, b, dims);
    }

    @TearDown
    public void tearDown() throws OrtException {
        training.close();
        inference.close();
        arena.close();
    }

    @Benchmark
    public void forwardTraining() throws OrtException {
        training.run(inputs, trainingOutputs).close();
    }

    @Benchmark
    public void forwardInference() throws OrtException {
        inference.run(inputs, inferenceOutputs).close();
    }

    /** A one-node ONNX model in protobuf wire format, written by hand (no protobuf dependency). */
    static final class OnnxModels {

        private OnnxModels() {
        }

        static byte[] batchNorm(long[] dims, float[] scale, float[] bias, float[] mean, float[] var,
                                boolean trainingMode) {
            long c = dims[1];
            Proto node = new Proto()
                    .string(1, "X").string(1, "scale").string(1, "B").string(1, "mean").string(1, "var")
                    .string(2, "Y");
            if (trainingMode) {
                node.string(2, "running_mean").string(2, "running_var");
            }
            node.string(4, "BatchNormalization")
                    .message(5, new Proto().string(1, "epsilon").fixed32(2, Float.floatToIntBits(1e-5f)).varint(20, 1))
                    .message(5, new Proto().string(1, "momentum").fixed32(2, Float.floatToIntBits(0.9f)).varint(20, 1))
                    .message(5, new Proto().string(1, "training_mode").varint(3, trainingMode ? 1 : 0).varint(20, 2));
            Proto graph = new Proto().message(1, node).string(2, "bn")
                    .message(5, initializer("scale", scale)).message(5, initializer("B", bias))
                    .message(5, initializer("mean", mean)).message(5, initializer("var", var))
                    .message(11, valueInfo("X", dims))
                    .message(12, valueInfo("Y", dims));
            if (trainingMode) {
                graph.message(12, valueInfo("running_mean", new long[] {c}))
                        .message(12, valueInfo("running_var", new long[] {c}));
            }
            return new Proto().varint(1, 8)
                    .message(8, new Proto().string(1, "").varint(2, 15))
                    .message(7, graph).bytes();
        }

        private static Proto initializer(String name, float[] values) {
            Proto t = new Proto().varint(1, values.length).varint(2, 1).string(8, name);
            java.nio.ByteBuffer raw = java.nio.ByteBuffer.allocate(4 * values.length).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : values) {
                raw.putFloat(v);
            }
            return t.raw(9, raw.array());
        }

        private static Proto valueInfo(String name, long[] dims) {
            Proto shape = new Proto();
            for (long d : dims) {
                shape.message(1, new Proto().varint(1, d));
            }
            Proto tensor = new Proto().varint(1, 1).message(2, shape);
            return new Proto().string(1, name).message(2, new Proto().message(1, tensor));
        }
    }

    /** Protobuf wire format: varints, length-delimited fields and 32-bit fields. */
    static final class Proto {
        private final ByteArrayOutputStream out = new ByteArrayOutputStream();

        private void key(int field, int wireType) {
            writeVarint((long) field << 3 | wireType);
        }

        private void writeVarint(long v) {
            while ((v & ~0x7FL) != 0) {
                out.write((int) (v & 0x7F) | 0x80);
                v >>>= 7;
            }
            out.write((int) v);
        }

        Proto varint(int field, long value) {
            key(field, 0);
            writeVarint(value);
            return this;
        }

        Proto fixed32(int field, int bits) {
            key(field, 5);
            for (int i = 0; i < 4; i++) {
                out.write(bits >>> (8 * i) & 0xFF);
            }
            return this;
        }

        Proto raw(int field, byte[] data) {
            key(field, 2);
            writeVarint(data.length);
            out.writeBytes(data);
            return this;
        }

        Proto string(int field, String s) {
            return raw(field, s.getBytes(StandardCharsets.UTF_8));
        }

        Proto message(int field, Proto m) {
            return raw(field, m.bytes());
        }

        byte[] bytes() {
            return out.toByteArray();
        }
    }
}
