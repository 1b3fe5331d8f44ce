package dev.vecnorm;

import dev.vecnorm.kernel.BatchNormKernels;
import dev.vecnorm.kernel.KernelProvider;
import java.util.Objects;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.ForkJoinPool;

/**
 * What the norm family's builders share: epsilon, parallelism, the executor, and (tests only) the
 * kernels. {@code B} is the concrete builder, which every setter returns.
 */
abstract class NormBuilder<B extends NormBuilder<B>> {

    float epsilon;
    int parallelism = 1;
    ExecutorService executor;
    BatchNormKernels kernels;

    NormBuilder(float defaultEpsilon) {
        this.epsilon = defaultEpsilon;
    }

    @SuppressWarnings("unchecked")
    private B self() {
        return (B) this;
    }

    /**
     * The epsilon added to the variance (or mean square) before the square root.
     *
     * @param epsilon a positive finite number
     * @return this builder
     * @throws IllegalArgumentException unless positive and finite
     */
    public B epsilon(float epsilon) {
        if (!(epsilon > 0) || !Float.isFinite(epsilon)) {
            throw new IllegalArgumentException("epsilon: expected a positive finite number, got " + epsilon);
        }
        this.epsilon = epsilon;
        return self();
    }

    /**
     * The number of threads a call may use (default 1: the calling thread). Results do not
     * depend on it; problems under 65 536 elements run on the calling thread.
     *
     * @param parallelism at least 1
     * @return this builder
     * @throws IllegalArgumentException unless at least 1
     */
    public B parallelism(int parallelism) {
        if (parallelism < 1) {
            throw new IllegalArgumentException("parallelism: expected >= 1, got " + parallelism);
        }
        this.parallelism = parallelism;
        return self();
    }

    /**
     * The executor of the extra threads when {@code parallelism > 1} (default: the common
     * ForkJoinPool). A call never waits for a free executor thread (the caller runs all work no
     * executor thread has started), so a call made on one of its own threads cannot deadlock.
     *
     * @param executor not null; never shut down by the library
     * @return this builder
     * @throws NullPointerException if null
     */
    public B executor(ExecutorService executor) {
        this.executor = Objects.requireNonNull(executor, "executor: expected an ExecutorService, got null");
        return self();
    }

    /** Tests only: run these kernels instead of the JVM's choice. */
    B kernels(BatchNormKernels kernels) {
        this.kernels = kernels;
        return self();
    }

    BatchNormKernels kernelsOrDefault() {
        return kernels != null ? kernels : KernelProvider.kernels();
    }

    ExecutorService executorOrDefault() {
        return executor != null ? executor : ForkJoinPool.commonPool();
    }
}
