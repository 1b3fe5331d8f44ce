package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

/** The README's API tour, on a smaller shape, with its outputs checked. */
class ReadmeExampleTest {

    @Test
    void theApiTourRuns() {
        TensorShape shape = TensorShape.nchw(4, 8, 5, 5);
        BatchNorm bn = BatchNorm.builder(shape).epsilon(1e-5f).momentum(0.1f).build();
        try (Arena arena = Arena.ofConfined()) {
            long e = shape.elements();
            int c = shape.channels();
            MemorySegment x = Segments.of(arena, TestData.gaussian((int) e, 9, 2));
            MemorySegment y = arena.allocate(4 * e, 64);
            MemorySegment gamma = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});
            MemorySegment beta = arena.allocate(4L * c);
            MemorySegment mean = arena.allocate(4L * c), var = arena.allocate(4L * c);
            MemorySegment runningMean = arena.allocate(4L * c);
            MemorySegment runningVar = Segments.of(arena, new float[] {1, 1, 1, 1, 1, 1, 1, 1});

            bn.forwardTraining(x, gamma, beta, y, mean, var);
            bn.updateRunningStatistics(mean, var, runningMean, runningVar);

            MemorySegment dy = Segments.of(arena, TestData.gaussian((int) e, 10, 1));
            MemorySegment dx = arena.allocate(4 * e);
            MemorySegment dgamma = arena.allocate(4L * c), dbeta = arena.allocate(4L * c);
            bn.backward(x, dy, gamma, mean, var, dx, dgamma, dbeta);

            bn.forwardInference(x, gamma, beta, runningMean, runningVar, y);

            float m0 = mean.getAtIndex(ValueLayout.JAVA_FLOAT, 0);
            assertEquals(0.1f * m0, runningMean.getAtIndex(ValueLayout.JAVA_FLOAT, 0), 1e-6f);
            assertTrue(dgamma.getAtIndex(ValueLayout.JAVA_FLOAT, 0) != 0f);

            // The fused call of the tour: relu(bn(x) + residual), and its backward.
            MemorySegment residual = Segments.of(arena, TestData.gaussian((int) e, 11, 1));
            MemorySegment dresidual = arena.allocate(4 * e);
            BatchNorm block = BatchNorm.builder(shape).activation(Activation.RELU).build();
            block.forwardTraining(x, residual, gamma, beta, y, mean, var);
            block.backward(x, dy, y, gamma, mean, var, dx, dresidual, dgamma, dbeta);
            for (long i = 0; i < e; i++) {
                float out = y.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                assertTrue(out >= 0f, "relu output");
                assertEquals(out > 0 ? dy.getAtIndex(ValueLayout.JAVA_FLOAT, i) : 0f,
                        dresidual.getAtIndex(ValueLayout.JAVA_FLOAT, i), "dresidual = dy where y > 0");
            }
        }
        assertTrue(BatchNorm.kernels().equals("scalar") || BatchNorm.kernels().startsWith("vector "));
    }
}
