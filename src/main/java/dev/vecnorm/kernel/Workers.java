package dev.vecnorm.kernel;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Future;
import java.util.function.ObjIntConsumer;

/**
 * Runs {@code tasks} independent tasks on up to {@code parallelism} threads: the caller runs the
 * first share itself, the executor the others. Which thread runs a task never changes a result:
 * callers only hand in tasks whose outputs are disjoint and whose arithmetic is fixed.
 */
final class Workers {

    private final int parallelism;
    private final ExecutorService executor;

    Workers(int parallelism, ExecutorService executor) {
        this.parallelism = parallelism;
        this.executor = executor;
    }

    int parallelism() {
        return parallelism;
    }

    /**
     * Runs {@code task.accept(context, i)} for every i in [0, tasks), in contiguous shares (the
     * caller makes its task and context once, so a call on one thread allocates nothing). Returns
     * only when every started share has finished; if any failed (or the executor refused one),
     * throws after that, so a caller never sees success with outputs half written.
     */
    <T> void run(int tasks, T context, ObjIntConsumer<T> task) {
        int shares = Math.min(parallelism, tasks);
        if (shares <= 1) {
            for (int i = 0; i < tasks; i++) {
                task.accept(context, i);
            }
            return;
        }
        List<Future<?>> started = new ArrayList<>(shares - 1);
        RuntimeException failure = null;
        for (int s = 1; s < shares; s++) {
            int from = (int) ((long) tasks * s / shares);
            int to = (int) ((long) tasks * (s + 1) / shares);
            try {
                started.add(executor.submit(() -> {
                    for (int i = from; i < to; i++) {
                        task.accept(context, i);
                    }
                }));
            } catch (RuntimeException e) {          // RejectedExecutionException: executor shut down
                failure = new IllegalStateException("vecnorm: the executor refused a task: " + e, e);
                break;
            }
        }
        if (failure == null) {
            try {
                int to = (int) ((long) tasks / shares);
                for (int i = 0; i < to; i++) {
                    task.accept(context, i);
                }
            } catch (RuntimeException | Error e) {
                failure = new IllegalStateException("vecnorm: a kernel task failed: " + e, e);
            }
        }
        boolean interrupted = false;
        for (Future<?> f : started) {
            while (true) {
                try {
                    f.get();
                    break;
                } catch (InterruptedException e) {
                    interrupted = true;           // finish waiting: tasks may still write outputs
                } catch (ExecutionException | CancellationException e) {
                    if (failure == null) {
                        Throwable cause = e instanceof ExecutionException ? e.getCause() : e;
                        failure = new IllegalStateException("vecnorm: a kernel task failed: " + cause, cause);
                    }
                    break;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        if (failure != null) {
            throw failure;
        }
    }
}
