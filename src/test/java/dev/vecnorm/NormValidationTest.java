package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * Bad arguments of the norm family: each is rejected with an exception whose message names the
 * argument and says what was expected and what was given, before any output is written (every
 * output starts as 7 and must still be 7).
 */
class NormValidationTest {

    private static void rejects(Class<? extends RuntimeException> type, String argument, String given,
                                Executable call, MemorySegment... outputs) {
        RuntimeException e = assertThrows(type, call);
        assertTrue(e.getMessage().startsWith(argument + ": expected"), e.getMessage());
        assertTrue(e.getMessage().contains(given), e.getMessage());
        for (MemorySegment out : outputs) {
            for (long i = 0; i < out.byteSize() / 4; i++) {
                assertEquals(7f, out.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i), "nothing written");
            }
        }
    }

    private static MemorySegment sevens(Arena a, long floats) {
        MemorySegment s = a.allocate(4 * floats);
        for (long i = 0; i < floats; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, 7f);
        }
        return s;
    }

    @Test
    void buildersRejectBadConfigurations() {
        rejects(IllegalArgumentException.class, "rows", "got 0", () -> LayerNorm.builder(0, 8));
        rejects(IllegalArgumentException.class, "features", "got -1", () -> RMSNorm.builder(2, -1));
        rejects(IllegalArgumentException.class, "heads", "got 0", () -> LayerNorm.builder(2, 8).heads(0));
        rejects(IllegalArgumentException.class, "rowStride", "got 15", () -> RMSNorm.builder(2, 8).heads(2).rowStride(15).build());
        rejects(IllegalArgumentException.class, "epsilon", "got 0.0", () -> LayerNorm.builder(2, 8).epsilon(0f));
        rejects(IllegalArgumentException.class, "epsilon", "got NaN", () -> RMSNorm.builder(2, 8).epsilon(Float.NaN));
        rejects(IllegalArgumentException.class, "epsilon", "got Infinity", () -> GroupNorm.builder(TensorShape.nchw(1, 4, 2, 2), 2).epsilon(Float.POSITIVE_INFINITY));
        rejects(IllegalArgumentException.class, "parallelism", "got 0", () -> InstanceNorm.builder(TensorShape.nchw(1, 4, 2, 2)).parallelism(0));
        rejects(IllegalArgumentException.class, "groups", "got 3", () -> GroupNorm.builder(TensorShape.nchw(1, 4, 2, 2), 3));
        rejects(IllegalArgumentException.class, "momentum", "got 1.5", () -> InstanceNorm.builder(TensorShape.nchw(1, 4, 2, 2)).momentum(1.5f));
        rejects(NullPointerException.class, "executor", "got null", () -> LayerNorm.builder(2, 8).executor(null));
        rejects(NullPointerException.class, "shape", "got null", () -> GroupNorm.builder(null, 1));
    }

    @Test
    void callsRejectBadSegmentsBeforeWriting() {
        try (Arena a = Arena.ofConfined()) {
            LayerNorm ln = LayerNorm.builder(3, 4).heads(2).rowStride(10).build();  // 2 x 10 + 8 = 28 floats
            assertEquals(28, ln.tensorFloats());
            MemorySegment x = sevens(a, 28), y = sevens(a, 28), mean = sevens(a, 6), rstd = sevens(a, 6);
            MemorySegment w = sevens(a, 4), shortW = sevens(a, 3), shortX = sevens(a, 27);
            rejects(IllegalArgumentException.class, "x", "got 108 bytes", () -> ln.forward(shortX, w, null, y, mean, rstd), y, mean, rstd);
            rejects(IllegalArgumentException.class, "weight", "got 12 bytes", () -> ln.forward(x, shortW, null, y, mean, rstd), y, mean, rstd);
            rejects(IllegalArgumentException.class, "mean", "got 20 bytes", () -> ln.forward(x, w, null, y, sevens(a, 5), rstd), y, rstd);
            rejects(NullPointerException.class, "y", "got null", () -> ln.forward(x, w, null, null, mean, rstd), mean, rstd);
            rejects(IllegalArgumentException.class, "y", "read-only", () -> ln.forward(x, w, null, y.asReadOnly(), mean, rstd), y, mean, rstd);
            rejects(IllegalArgumentException.class, "mean", "overlapping", () -> ln.forward(x, w, null, y, mean, mean), y);
            MemorySegment big = sevens(a, 40);
            rejects(IllegalArgumentException.class, "y", "overlapping", () -> ln.forward(big.asSlice(0, 112), w, null,
                    big.asSlice(8, 112), mean, rstd), mean, rstd);
            MemorySegment dx = sevens(a, 28), dw = sevens(a, 4);
            rejects(NullPointerException.class, "mean", "got null", () -> ln.backward(x, x, w, null, rstd, dx, dw, null), dx, dw);
            rejects(IllegalArgumentException.class, "dweight", "got 12 bytes", () -> ln.backward(x, x, w, mean, rstd, dx, shortW, null), dx);

            RMSNorm rms = RMSNorm.builder(3, 4).heads(2).rowStride(10).build();
            MemorySegment residual = sevens(a, 28);
            rejects(IllegalArgumentException.class, "residual", "output y", () -> rms.forwardWithResidual(x, residual, w, residual, null), residual);
            rejects(IllegalArgumentException.class, "residual", "overlapping", () -> rms.forwardWithResidual(x, x, w, y, null), y);
            rejects(NullPointerException.class, "rrms", "got null", () -> rms.backward(x, x, w, null, dx, dw), dx, dw);
            rms.forward(x, w, x, null);                       // y may be x
            Arena closed = Arena.ofConfined();
            MemorySegment dead = closed.allocate(4 * 28);
            closed.close();
            rejects(IllegalArgumentException.class, "x", "closed", () -> rms.forward(dead, w, y, null), y);

            TensorShape shape = TensorShape.nhwc(2, 6, 3, 3);
            GroupNorm gn = GroupNorm.builder(shape, 3).build();
            MemorySegment gx = sevens(a, 108), gy = sevens(a, 108), gm = sevens(a, 6), gr = sevens(a, 6);
            rejects(IllegalArgumentException.class, "mean", "got 16 bytes", () -> gn.forward(gx, null, null, gy, sevens(a, 4), gr), gy, gr);
            rejects(IllegalArgumentException.class, "bias", "got 20 bytes", () -> gn.forward(gx, null, sevens(a, 5), gy, gm, gr), gy, gm, gr);
            MemorySegment gdx = sevens(a, 108);
            rejects(IllegalArgumentException.class, "dx", "overlapping", () -> gn.backward(gx, gy, null, gm, gr, gx, null, null), gm, gr);
            InstanceNorm in = InstanceNorm.builder(TensorShape.nchw(2, 3, 1, 1)).build();
            MemorySegment ix = sevens(a, 6), iy = sevens(a, 6), rm = sevens(a, 3), rv = sevens(a, 3);
            rejects(IllegalArgumentException.class, "shape", "spatial element", () -> in.forward(ix, null, null, iy, null, null, rm, rv), iy, rm, rv);
            InstanceNorm in2 = InstanceNorm.builder(TensorShape.nchw(2, 3, 2, 2)).build();
            MemorySegment i2x = sevens(a, 24), i2y = sevens(a, 24);
            rejects(IllegalArgumentException.class, "runningVar", "got 8 bytes", () -> in2.forward(i2x, null, null, i2y, null, null, rm, sevens(a, 2)), i2y, rm);
            assertTrue(gdx.byteSize() > 0);
        }
    }
}
