package dev.vecnorm.kernel;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.locks.LockSupport;
import java.util.function.ObjIntConsumer;

/**
 * Runs {@code tasks} independent tasks on the calling thread and up to {@code parallelism - 1}
 * executor threads. Which thread runs a task never changes a result: callers only hand in tasks
 * whose outputs are disjoint and whose arithmetic is fixed.
 *
 * <p>A call never waits for an executor thread to become free, so it cannot deadlock, even when
 * it runs on a thread of that executor and every other thread is busy with such calls (engines
 * hand their own layer pool to the kernels; PyTorch's {@code parallel_for} runs nested regions
 * inline for the same reason). Tasks are claimed one index at a time from a counter: the caller
 * claims and runs every task that no worker has claimed, and then waits only for the workers that
 * did claim one, which are running and so finish. A worker that the executor starts late finds
 * nothing left to claim and returns without touching the call's context.
 */
final class Workers {

    private final int parallelism;
    private final ExecutorService executor;
    /**
     * Each thread's reusable call state, so that a parallel call allocates nothing of its own in
     * the steady state. A nested call on the same thread, or one made while a worker of an earlier
     * call is still queued in the executor, gets a fresh one (see {@link #acquire}).
     */
    private final ThreadLocal<Call> calls = new ThreadLocal<>();

    Workers(int parallelism, ExecutorService executor) {
        this.parallelism = parallelism;
        this.executor = executor;
    }

    int parallelism() {
        return parallelism;
    }

    /**
     * Runs {@code task.accept(context, i)} once for every i in [0, tasks) (the caller makes its
     * task and context once, so a call on one thread allocates nothing). Returns only when no
     * task is running any more; if one failed, or the executor failed other than by refusing,
     * throws after that, so a caller never sees success with outputs half written. An executor
     * that refuses work (shut down, saturated) leaves the tasks to the calling thread.
     */
    <T> void run(int tasks, T context, ObjIntConsumer<T> task) {
        int helpers = Math.min(parallelism, tasks) - 1;
        if (helpers <= 0) {
            for (int i = 0; i < tasks; i++) {
                task.accept(context, i);
            }
            return;
        }
        Call call = acquire();
        try {
            @SuppressWarnings("unchecked")
            ObjIntConsumer<Object> erased = (ObjIntConsumer<Object>) task;
            call.run(executor, helpers, tasks, context, erased);
        } finally {
            call.busy = false;
        }
    }

    /**
     * This thread's call state when it is free: not in use by an enclosing call on this thread,
     * and no worker of an earlier call still queued (such a worker will read the state's counter
     * when it starts, so the state is not reset under it). Otherwise a fresh one, which is kept for
     * the next call unless it serves a nested call.
     */
    private Call acquire() {
        Call call = calls.get();
        if (call != null && !call.busy && call.idle()) {
            call.busy = true;
            return call;
        }
        Call fresh = new Call(Thread.currentThread());
        if (call == null || !call.busy) {
            calls.set(fresh);
        }
        fresh.busy = true;
        return fresh;
    }

    /**
     * The state of one call at a time, owned by one caller thread; it is also the {@link Runnable}
     * handed to the executor, once per wanted worker.
     */
    private static final class Call implements Runnable {

        private static final VarHandle STATE;
        private static final VarHandle QUEUED;
        private static final VarHandle FAILURE;

        static {
            try {
                MethodHandles.Lookup lookup = MethodHandles.lookup();
                STATE = lookup.findVarHandle(Call.class, "state", long.class);
                QUEUED = lookup.findVarHandle(Call.class, "queued", int.class);
                FAILURE = lookup.findVarHandle(Call.class, "failure", RuntimeException.class);
            } catch (ReflectiveOperationException e) {
                throw new ExceptionInInitializerError(e);
            }
        }

        /** The low half of {@link #state}: the next task index to claim (unsigned). */
        private static final long NEXT = 0xffff_ffffL;
        /** One worker in the high half of {@link #state}: the workers running tasks now. */
        private static final long WORKER = 1L << 32;

        private final Thread caller;
        /** Only the caller thread reads and writes it. */
        boolean busy;

        // Written by the caller before it hands the call to the executor, which publishes them.
        private int tasks;
        private Object context;
        private ObjIntConsumer<Object> task;

        /**
         * Next index to claim and running workers in one word, so that a worker joins only while
         * a task is left: once the caller has claimed the last index no worker can join, and the
         * caller waits only for those counted here.
         */
        private volatile long state;
        /** Runnables handed to the executor that have not finished (or never will start). */
        private volatile int queued;
        /** The first failure of the call, already worded for the caller. */
        private volatile RuntimeException failure;

        Call(Thread caller) {
            this.caller = caller;
        }

        /** No runnable of an earlier call is queued or running: the state may be reset. */
        boolean idle() {
            return queued == 0;
        }

        void run(ExecutorService executor, int helpers, int tasks, Object context,
                 ObjIntConsumer<Object> task) {
            this.tasks = tasks;
            this.context = context;
            this.task = task;
            this.failure = null;
            STATE.setVolatile(this, 0L);
            try {
                for (int h = 0; h < helpers; h++) {
                    QUEUED.getAndAdd(this, 1);
                    try {
                        executor.execute(this);
                    } catch (RejectedExecutionException e) {
                        // Not accepted, by Executor's contract: this thread runs its share.
                        QUEUED.getAndAdd(this, -1);
                        break;
                    } catch (RuntimeException | Error e) {
                        // The executor broke; whether it kept the runnable is unknown, so it
                        // stays counted as queued and this state is never reset under it.
                        fail(new IllegalStateException("vecnorm: the executor failed to take a task: " + e, e));
                        break;
                    }
                }
                work();
                awaitWorkers();
            } finally {
                this.context = null;    // a call keeps no reference to the caller's segments
                this.task = null;
            }
            RuntimeException f = failure;
            if (f != null) {
                failure = null;
                throw f;
            }
        }

        /** A worker: joins while a task is left, runs what it claims, then leaves. */
        @Override
        public void run() {
            if (!join()) {
                QUEUED.getAndAdd(this, -1);
                return;
            }
            try {
                work();
            } finally {
                // Before leaving, so that the caller, woken by the last worker, finds the state
                // free for its next call instead of allocating another.
                QUEUED.getAndAdd(this, -1);
                long s = (long) STATE.getAndAdd(this, -WORKER) - WORKER;
                if ((s >>> 32) == 0 && Thread.currentThread() != caller) {
                    LockSupport.unpark(caller);
                }
            }
        }

        private boolean join() {
            while (true) {
                long s = state;
                if ((s & NEXT) >= tasks) {
                    return false;
                }
                if (STATE.compareAndSet(this, s, s + WORKER)) {
                    return true;
                }
            }
        }

        /** Claims and runs tasks until none is left; the first failure closes the call. */
        private void work() {
            if (failure != null) {
                close();
                return;
            }
            try {
                while (true) {
                    long i = (long) STATE.getAndAdd(this, 1L) & NEXT;
                    if (i >= tasks) {
                        return;
                    }
                    task.accept(context, (int) i);
                }
            } catch (RuntimeException | Error e) {
                fail(new IllegalStateException("vecnorm: a kernel task failed: " + e, e));
            }
        }

        private void fail(RuntimeException e) {
            FAILURE.compareAndSet(this, null, e);
            close();
        }

        /** No task is claimed any more: the ones left are skipped, the call can end. */
        private void close() {
            while (true) {
                long s = state;
                if ((s & NEXT) >= tasks || STATE.compareAndSet(this, s, (s & ~NEXT) | tasks)) {
                    return;
                }
            }
        }

        /**
         * Waits for the workers that joined: they are running, so they finish. An interrupt does
         * not end the wait (they may still be writing outputs); it is set again on return.
         */
        private void awaitWorkers() {
            boolean interrupted = false;
            while ((state >>> 32) != 0) {
                LockSupport.park(this);
                if (Thread.interrupted()) {
                    interrupted = true;
                }
            }
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
