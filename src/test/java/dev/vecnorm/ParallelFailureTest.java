package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.AbstractExecutorService;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * Work that no executor thread takes is done by the caller; an executor that breaks surfaces as
 * an exception, never as a silent success.
 */
class ParallelFailureTest {

    /** Above the 65 536 elements from which calls use other threads. */
    static final TensorShape SHAPE = TensorShape.nhwc(8, 16, 24, 24);

    /**
     * An executor that refuses work (here: shut down) leaves it to the calling thread, which
     * never waits for a free executor thread anyway: same bits as a call on one thread.
     */
    @Test
    void aShutDownExecutorLeavesTheWorkToTheCaller() {
        ExecutorService pool = Executors.newFixedThreadPool(2);
        pool.shutdown();
        BatchNorm bn = BatchNorm.builder(SHAPE).parallelism(2).executor(pool).build();
        float[] x = TestData.gaussian((int) SHAPE.elements(), 1, 1);
        Runs.Training expected = Runs.training(BatchNorm.builder(SHAPE).build(), x, null, null);
        Runs.Training got = Runs.training(bn, x, null, null);
        Expect.bitwiseEqual("y", expected.y(), got.y(), "shut-down executor");
        Expect.bitwiseEqual("variance", expected.variance(), got.variance(), "shut-down executor");
    }

    /**
     * An executor that fails other than by refusing is an error, reported once the call is
     * complete. (A task failing on a worker thread is {@code WorkersTest}'s: the public API
     * offers no way to make only a worker's task fail.)
     */
    @Test
    void aBrokenExecutorIsAnError() {
        ExecutorService broken = new Unmanaged() {
            @Override
            public void execute(Runnable command) {
                throw new IllegalStateException("executor broke");
            }
        };
        BatchNorm bn = BatchNorm.builder(SHAPE).parallelism(2).executor(broken).build();
        try (Arena arena = Arena.ofShared()) {
            MemorySegment x = Segments.of(arena, TestData.gaussian((int) SHAPE.elements(), 1, 1));
            MemorySegment y = Segments.zeros(arena, SHAPE.elements());
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> bn.forwardInference(
                    x, null, null, Segments.zeros(arena, 16), Segments.of(arena, new float[16]), y));
            assertTrue(e.getMessage().contains("executor broke"), e.getMessage());
        }
    }

    /** Confined segments cannot be handed to other threads: the call runs on the caller alone. */
    @Test
    void confinedSegmentsRunOnTheCallingThreadWithTheSameBits() {
        float[] x = TestData.gaussian((int) SHAPE.elements(), 3, 1);
        BatchNorm one = BatchNorm.builder(SHAPE).build();
        BatchNorm two = BatchNorm.builder(SHAPE).parallelism(2).build();
        Runs.Training expected = Runs.training(one, x, null, null);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment xs = Segments.of(arena, x), y = Segments.zeros(arena, x.length);
            two.forwardTraining(xs, null, null, y, Segments.zeros(arena, 16), Segments.zeros(arena, 16));
            Expect.bitwiseEqual("y", expected.y(), Segments.toArray(y), "confined");
        }
    }

    /**
     * A call nested in another on the same thread and the same BatchNorm (as a fork-join worker
     * may run one while it waits for its own tasks) gets its own working arrays: both calls give
     * the bits of separate calls. The executor here runs the nested call inline, on the calling
     * thread, each time the outer call hands out a share of its work.
     */
    @Test
    void aCallNestedOnTheSameThreadDoesNotDisturbTheOuterOne() {
        for (TensorShape shape : new TensorShape[] {SHAPE, TensorShape.nchw(8, 16, 24, 24)}) {
            float[] outerX = TestData.gaussian((int) shape.elements(), 5, 2);
            float[] innerX = TestData.gaussian((int) shape.elements(), 6, 7);
            BatchNorm serial = BatchNorm.builder(shape).build();
            Runs.Training outerExpected = Runs.training(serial, outerX, null, null);
            Runs.Training innerExpected = Runs.training(serial, innerX, null, null);
            BatchNorm[] nested = new BatchNorm[1];
            Runs.Training[] inner = new Runs.Training[1];
            boolean[] nesting = new boolean[1];
            ExecutorService inline = new Unmanaged() {
                @Override
                public void execute(Runnable command) {
                    if (!nesting[0]) {                  // one level: the nested call's own shares run plainly
                        nesting[0] = true;
                        inner[0] = Runs.training(nested[0], innerX, null, null);
                        nesting[0] = false;
                    }
                    command.run();
                }
            };
            nested[0] = BatchNorm.builder(shape).parallelism(2).executor(inline).build();
            Runs.Training outer = Runs.training(nested[0], outerX, null, null);
            Expect.bitwiseEqual("outer y", outerExpected.y(), outer.y(), shape.toString());
            Expect.bitwiseEqual("outer mean", outerExpected.mean(), outer.mean(), shape.toString());
            Expect.bitwiseEqual("inner y", innerExpected.y(), inner[0].y(), shape.toString());
        }
    }

    /** An executor without a lifecycle: tests say only how it runs a task. */
    private abstract static class Unmanaged extends AbstractExecutorService {
        @Override
        public void shutdown() {
        }

        @Override
        public List<Runnable> shutdownNow() {
            return List.of();
        }

        @Override
        public boolean isShutdown() {
            return false;
        }

        @Override
        public boolean isTerminated() {
            return false;
        }

        @Override
        public boolean awaitTermination(long timeout, TimeUnit unit) {
            return true;
        }
    }
}
