package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Calls made on a thread of the very executor they were given complete, even when every thread
 * of that executor is busy with such calls: engines run their layers on their own pool and hand
 * the same pool to the kernels. Each wait has a limit, so a deadlock fails the test instead of
 * hanging the build; the class-level {@link Timeout} is a second guard.
 */
@Timeout(value = 60, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class NestedExecutorTest {

    /** The shape: 8x64x32x32, far above the size from which calls use other threads. */
    static final TensorShape SHAPE = TensorShape.nchw(8, 64, 32, 32);
    /** No call here takes more than a fraction of this, even interpreted on a loaded machine. */
    static final Duration LIMIT = Duration.ofSeconds(20);

    @Test
    void twoCallersOnAFixedPoolOfTwoThatIsAlsoTheirExecutor() throws Exception {
        callersOnTheirOwnPool(2, 2, 2);
    }

    @Test
    void oneCallerOnAPoolOfOneThread() throws Exception {
        callersOnTheirOwnPool(1, 1, 2);
    }

    /** More callers than threads, and a parallelism above the pool size. */
    @Test
    void manyCallersOnASmallPool() throws Exception {
        callersOnTheirOwnPool(2, 6, 4);
    }

    /** A call from inside a fork-join task, with that pool as the executor. */
    @Test
    void aCallNestedInAForkJoinTask() throws Exception {
        ForkJoinPool pool = new ForkJoinPool(1);
        try {
            BatchNorm bn = BatchNorm.builder(SHAPE).parallelism(2).executor(pool).build();
            List<float[]> inputs = inputs(2);
            List<Future<Runs.Training>> calls = new ArrayList<>();
            for (float[] x : inputs) {
                calls.add(pool.submit(() -> Runs.training(bn, x, null, null)));
            }
            checkAgainstSerial(inputs, calls);
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * {@code callers} calls of {@code forwardTraining}, each submitted to a fixed pool of
     * {@code threads} threads that is also the BatchNorm's executor.
     */
    private static void callersOnTheirOwnPool(int threads, int callers, int parallelism) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(threads, daemons());
        try {
            BatchNorm bn = BatchNorm.builder(SHAPE).parallelism(parallelism).executor(pool).build();
            List<float[]> inputs = inputs(callers);
            List<Future<Runs.Training>> calls = new ArrayList<>();
            for (float[] x : inputs) {
                calls.add(pool.submit(() -> Runs.training(bn, x, null, null)));
            }
            checkAgainstSerial(inputs, calls);
        } finally {
            pool.shutdownNow();
        }
    }

    private static List<float[]> inputs(int count) {
        List<float[]> inputs = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            inputs.add(TestData.gaussian((int) SHAPE.elements(), 40 + i, 1 + i));
        }
        return inputs;
    }

    /**
     * Each call completes, and gives the bits of a call on one thread. The wait for each has a
     * limit only so that a deadlock fails instead of hanging: a liveness guard, not a speed test.
     */
    private static void checkAgainstSerial(List<float[]> inputs, List<Future<Runs.Training>> calls)
            throws InterruptedException {
        BatchNorm serial = BatchNorm.builder(SHAPE).build();
        for (int i = 0; i < calls.size(); i++) {
            Runs.Training got;
            try {
                got = calls.get(i).get(LIMIT.toMillis(), TimeUnit.MILLISECONDS);
            } catch (TimeoutException e) {
                fail("call " + i + " of " + calls.size() + " made no progress in " + LIMIT
                        + ": it waits for an executor thread that its own caller occupies");
                return;
            } catch (ExecutionException e) {
                throw new AssertionError("call " + i + " failed", e.getCause());
            }
            Runs.Training expected = Runs.training(serial, inputs.get(i), null, null);
            String where = "call " + i;
            Expect.bitwiseEqual("y", expected.y(), got.y(), where);
            Expect.bitwiseEqual("mean", expected.mean(), got.mean(), where);
            Expect.bitwiseEqual("variance", expected.variance(), got.variance(), where);
            assertTrue(got.variance()[0] > 0, "the outputs were written");
        }
    }

    /** Daemon threads: a pool stuck in a deadlock must not keep the test JVM alive. */
    private static ThreadFactory daemons() {
        return r -> {
            Thread t = new Thread(r, "nested-executor-test");
            t.setDaemon(true);
            return t;
        };
    }
}
