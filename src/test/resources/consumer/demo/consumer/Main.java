package demo.consumer;

import dev.vecnorm.BatchNorm;
import dev.vecnorm.TensorShape;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

/**
 * A user's first program: one training step on a [4, 2] batch whose statistics are exact in
 * float (channel 0 is 1, 2, 3, 4: mean 2.5, variance 1.25; channel 1 is -3, 1, -3, 1: mean -1,
 * variance 4), so that the test can compare the printed values exactly.
 */
public final class Main {

    private Main() {
    }

    public static void main(String[] args) {
        float[] x = {1, -3, 2, 1, 3, -3, 4, 1};
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment xs = arena.allocateFrom(ValueLayout.JAVA_FLOAT, x);
            MemorySegment y = arena.allocate(ValueLayout.JAVA_FLOAT, x.length);
            MemorySegment mean = arena.allocate(ValueLayout.JAVA_FLOAT, 2);
            MemorySegment variance = arena.allocate(ValueLayout.JAVA_FLOAT, 2);
            BatchNorm.builder(TensorShape.nc(4, 2)).build()
                    .forwardTraining(xs, null, null, y, mean, variance);
            Module module = BatchNorm.class.getModule();
            System.out.println("module=" + (module.isNamed() ? module.getName() : "unnamed"));
            System.out.println("kernels=" + BatchNorm.kernels());
            System.out.println("mean=" + Arrays.toString(mean.toArray(ValueLayout.JAVA_FLOAT)));
            System.out.println("variance=" + Arrays.toString(variance.toArray(ValueLayout.JAVA_FLOAT)));
        }
    }
}
