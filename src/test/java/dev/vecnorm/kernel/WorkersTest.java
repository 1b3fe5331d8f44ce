package dev.vecnorm.kernel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.AbstractExecutorService;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicIntegerArray;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@link Workers}: every task runs exactly once whoever runs it, failures reach the caller only
 * after every started task finished, and workers the executor starts late do nothing.
 */
@Timeout(value = 60, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class WorkersTest {

    private final ExecutorService pool = Executors.newFixedThreadPool(3, r -> {
        Thread t = new Thread(r, "workers-test");
        t.setDaemon(true);
        return t;
    });

    @AfterEach
    void shutDown() {
        pool.shutdownNow();
    }

    /** The task of these tests: counts how often each index ran, in the context's array. */
    private static void count(AtomicIntegerArray runs, int i) {
        runs.incrementAndGet(i);
    }

    private static void assertEachRanOnce(AtomicIntegerArray runs, String where) {
        for (int i = 0; i < runs.length(); i++) {
            assertEquals(1, runs.get(i), where + ": runs of task " + i);
        }
    }

    @Test
    void everyTaskRunsExactlyOnce() {
        for (int parallelism : new int[] {1, 2, 3, 4, 8}) {
            Workers workers = new Workers(parallelism, pool);
            for (int tasks : new int[] {0, 1, 2, 3, 5, 16, 100}) {
                for (int repeat = 0; repeat < 20; repeat++) {    // the call state is reused
                    AtomicIntegerArray runs = new AtomicIntegerArray(tasks);
                    workers.run(tasks, runs, WorkersTest::count);
                    assertEachRanOnce(runs, "parallelism " + parallelism + ", " + tasks + " tasks");
                }
            }
        }
    }

    /** A refusing executor leaves every task to the calling thread; that is not an error. */
    @Test
    void aRefusingExecutorLeavesEveryTaskToTheCaller() {
        ExecutorService refusing = new Unmanaged() {
            @Override
            public void execute(Runnable command) {
                throw new RejectedExecutionException("saturated");
            }
        };
        Thread caller = Thread.currentThread();
        AtomicInteger elsewhere = new AtomicInteger();
        AtomicIntegerArray runs = new AtomicIntegerArray(7);
        new Workers(4, refusing).run(7, runs, (r, i) -> {
            if (Thread.currentThread() != caller) {
                elsewhere.incrementAndGet();
            }
            r.incrementAndGet(i);
        });
        assertEachRanOnce(runs, "refused");
        assertEquals(0, elsewhere.get(), "tasks run on other threads");
    }

    /**
     * A task failing on a worker thread makes the call throw, with that failure as the cause,
     * and only once another worker's slower task has finished: a caller must never see a
     * failure while outputs are still being written.
     */
    @Test
    void aWorkerFailureReachesTheCallerAfterTheOtherTasksFinish() {
        Thread caller = Thread.currentThread();
        AtomicInteger arrivals = new AtomicInteger();
        CountDownLatch bothWorkersIn = new CountDownLatch(2);
        AtomicBoolean slowTaskFinished = new AtomicBoolean();
        IllegalStateException e = assertThrows(IllegalStateException.class,
                () -> new Workers(3, pool).run(3, null, (unused, i) -> {
                    if (Thread.currentThread() == caller) {
                        await(bothWorkersIn);      // so that the workers, not the caller, take the others
                        return;
                    }
                    int arrival = arrivals.incrementAndGet();
                    bothWorkersIn.countDown();
                    if (arrival == 1) {
                        await(bothWorkersIn);
                        throw new IllegalStateException("worker died");
                    }
                    sleep(200);
                    slowTaskFinished.set(true);
                }));
        assertTrue(e.getMessage().contains("worker died"), e.getMessage());
        assertTrue(slowTaskFinished.get(), "the call threw while a worker's task was still running");
    }

    /**
     * Runnables that an executor starts only after their call returned (a busy pool) find
     * nothing to claim: they run no task, of their own call nor of a later one on the same
     * thread, even while that later call is still running.
     */
    @Test
    void workersStartingLateDoNothing() throws InterruptedException {
        List<Runnable> held = new ArrayList<>();
        ExecutorService later = new Unmanaged() {
            @Override
            public synchronized void execute(Runnable command) {
                held.add(command);
            }
        };
        Workers workers = new Workers(3, later);
        AtomicIntegerArray first = new AtomicIntegerArray(5);
        AtomicIntegerArray second = new AtomicIntegerArray(5);
        workers.run(5, first, WorkersTest::count);
        workers.run(5, second, WorkersTest::count);
        assertEquals(4, held.size(), "runnables handed to the executor");
        assertEachRanOnce(first, "first call");
        assertEachRanOnce(second, "second call");

        // The third call releases the held runnables on another thread from inside its first
        // task, and waits for them: the two earlier calls' ones must not run its tasks.
        AtomicIntegerArray third = new AtomicIntegerArray(5);
        Thread caller = Thread.currentThread();
        AtomicInteger thirdOnOthers = new AtomicInteger();
        workers.run(5, third, (runs, i) -> {
            if (Thread.currentThread() != caller) {
                thirdOnOthers.incrementAndGet();
            } else if (i == 0) {
                List<Runnable> stale;
                synchronized (later) {
                    stale = new ArrayList<>(held.subList(0, 4));
                }
                Thread drain = Thread.ofPlatform().start(() -> stale.forEach(Runnable::run));
                try {
                    drain.join();
                } catch (InterruptedException e) {
                    throw new AssertionError(e);
                }
            }
            runs.incrementAndGet(i);
        });
        assertEachRanOnce(first, "first call, after its late workers ran");
        assertEachRanOnce(second, "second call, after its late workers ran");
        assertEachRanOnce(third, "third call");
        assertEquals(0, thirdOnOthers.get(), "third-call tasks run by earlier calls' late workers");
    }

    /**
     * An interrupt of the caller does not cut short its wait for a running worker (the worker
     * may still be writing outputs), and is still set when the call returns.
     */
    @Test
    void anInterruptWaitsForRunningWorkersAndIsKept() {
        Thread caller = Thread.currentThread();
        CountDownLatch workerIn = new CountDownLatch(1);
        AtomicBoolean workerFinished = new AtomicBoolean();
        try {
            new Workers(2, pool).run(2, null, (unused, i) -> {
                if (Thread.currentThread() == caller) {
                    await(workerIn);
                    caller.interrupt();
                    return;
                }
                workerIn.countDown();
                sleep(200);
                workerFinished.set(true);
            });
            assertTrue(workerFinished.get(), "the call returned while a worker was running");
            assertTrue(Thread.currentThread().isInterrupted(), "the interrupt was lost");
        } finally {
            Thread.interrupted();
        }
        assertFalse(Thread.currentThread().isInterrupted());
    }

    private static void await(CountDownLatch latch) {
        try {
            if (!latch.await(20, TimeUnit.SECONDS)) {
                throw new AssertionError("the workers of the pool did not start");
            }
        } catch (InterruptedException e) {
            throw new AssertionError(e);
        }
    }

    /** Only widens a window in which a wrong implementation would be caught; asserts no time. */
    private static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            throw new AssertionError(e);
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
