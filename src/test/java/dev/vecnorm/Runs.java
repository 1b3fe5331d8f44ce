package dev.vecnorm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** Runs BatchNorm calls on float arrays through the public API, in a fresh confined arena. */
final class Runs {

    private Runs() {
    }

    record Training(float[] y, float[] mean, float[] variance) {
    }

    record Backward(float[] dx, float[] dgamma, float[] dbeta) {
    }

    static Training training(BatchNorm bn, float[] x, float[] gamma, float[] beta) {
        try (Arena arena = Arena.ofShared()) {
            int channels = bn.shape().channels();
            MemorySegment xs = Segments.of(arena, x);
            MemorySegment y = Segments.zeros(arena, x.length);
            MemorySegment mean = Segments.zeros(arena, channels);
            MemorySegment var = Segments.zeros(arena, channels);
            bn.forwardTraining(xs, gamma == null ? null : Segments.of(arena, gamma),
                    beta == null ? null : Segments.of(arena, beta), y, mean, var);
            return new Training(Segments.toArray(y), Segments.toArray(mean), Segments.toArray(var));
        }
    }

    static float[] inference(BatchNorm bn, float[] x, float[] gamma, float[] beta, float[] mean,
                             float[] variance) {
        try (Arena arena = Arena.ofShared()) {
            MemorySegment y = Segments.zeros(arena, x.length);
            bn.forwardInference(Segments.of(arena, x), gamma == null ? null : Segments.of(arena, gamma),
                    beta == null ? null : Segments.of(arena, beta), Segments.of(arena, mean),
                    Segments.of(arena, variance), y);
            return Segments.toArray(y);
        }
    }

    static Backward backward(BatchNorm bn, boolean frozen, float[] x, float[] dy, float[] gamma,
                             float[] mean, float[] variance) {
        try (Arena arena = Arena.ofShared()) {
            int channels = bn.shape().channels();
            MemorySegment dx = Segments.zeros(arena, x.length);
            MemorySegment dgamma = Segments.zeros(arena, channels);
            MemorySegment dbeta = Segments.zeros(arena, channels);
            MemorySegment g = gamma == null ? null : Segments.of(arena, gamma);
            if (frozen) {
                bn.backwardWithFrozenStatistics(Segments.of(arena, x), Segments.of(arena, dy), g,
                        Segments.of(arena, mean), Segments.of(arena, variance), dx, dgamma, dbeta);
            } else {
                bn.backward(Segments.of(arena, x), Segments.of(arena, dy), g,
                        Segments.of(arena, mean), Segments.of(arena, variance), dx, dgamma, dbeta);
            }
            return new Backward(Segments.toArray(dx), Segments.toArray(dgamma), Segments.toArray(dbeta));
        }
    }

    /** The fused training forward: with a residual when it is not null. */
    static Training fusedTraining(BatchNorm bn, float[] x, float[] residual, float[] gamma,
                                  float[] beta) {
        try (Arena arena = Arena.ofShared()) {
            int channels = bn.shape().channels();
            MemorySegment xs = Segments.of(arena, x);
            MemorySegment y = Segments.zeros(arena, x.length);
            MemorySegment mean = Segments.zeros(arena, channels);
            MemorySegment var = Segments.zeros(arena, channels);
            MemorySegment g = gamma == null ? null : Segments.of(arena, gamma);
            MemorySegment b = beta == null ? null : Segments.of(arena, beta);
            if (residual == null) {
                bn.forwardTraining(xs, g, b, y, mean, var);
            } else {
                bn.forwardTraining(xs, Segments.of(arena, residual), g, b, y, mean, var);
            }
            return new Training(Segments.toArray(y), Segments.toArray(mean), Segments.toArray(var));
        }
    }

    /** The fused inference forward: with a residual when it is not null. */
    static float[] fusedInference(BatchNorm bn, float[] x, float[] residual, float[] gamma,
                                  float[] beta, float[] mean, float[] variance) {
        try (Arena arena = Arena.ofShared()) {
            MemorySegment y = Segments.zeros(arena, x.length);
            MemorySegment g = gamma == null ? null : Segments.of(arena, gamma);
            MemorySegment b = beta == null ? null : Segments.of(arena, beta);
            if (residual == null) {
                bn.forwardInference(Segments.of(arena, x), g, b, Segments.of(arena, mean),
                        Segments.of(arena, variance), y);
            } else {
                bn.forwardInference(Segments.of(arena, x), Segments.of(arena, residual), g, b,
                        Segments.of(arena, mean), Segments.of(arena, variance), y);
            }
            return Segments.toArray(y);
        }
    }

    record FusedBackward(float[] dx, float[] dresidual, float[] dgamma, float[] dbeta) {
        Backward plain() {
            return new Backward(dx, dgamma, dbeta);
        }
    }

    /** The fused backward (the overloads with y and dresidual), every output asked for. */
    static FusedBackward fusedBackward(BatchNorm bn, boolean frozen, float[] x, float[] dy,
                                       float[] y, float[] gamma, float[] mean, float[] variance) {
        try (Arena arena = Arena.ofShared()) {
            int channels = bn.shape().channels();
            MemorySegment dx = Segments.zeros(arena, x.length);
            MemorySegment dres = Segments.zeros(arena, x.length);
            MemorySegment dgamma = Segments.zeros(arena, channels);
            MemorySegment dbeta = Segments.zeros(arena, channels);
            MemorySegment g = gamma == null ? null : Segments.of(arena, gamma);
            MemorySegment ys = y == null ? null : Segments.of(arena, y);
            if (frozen) {
                bn.backwardWithFrozenStatistics(Segments.of(arena, x), Segments.of(arena, dy), ys, g,
                        Segments.of(arena, mean), Segments.of(arena, variance), dx, dres, dgamma, dbeta);
            } else {
                bn.backward(Segments.of(arena, x), Segments.of(arena, dy), ys, g,
                        Segments.of(arena, mean), Segments.of(arena, variance), dx, dres, dgamma, dbeta);
            }
            return new FusedBackward(Segments.toArray(dx), Segments.toArray(dres),
                    Segments.toArray(dgamma), Segments.toArray(dbeta));
        }
    }

    /** The workspace's forward and backward: y and statistics, the mask's words, the gradients. */
    record Masked(Training forward, long[] mask, FusedBackward backward) {
    }

    /**
     * The ReLU training forward that writes the mask workspace (with a residual when it is not
     * null), then the backward that reads it, writing dresidual; {@code inPlace} 1 writes dx
     * over dy, 2 dresidual over dy.
     */
    static Masked workspaceRun(BatchNorm bn, float[] x, float[] residual, float[] dy, float[] gamma,
                               float[] beta, int inPlace) {
        try (Arena arena = Arena.ofShared()) {
            int channels = bn.shape().channels();
            MemorySegment xs = Segments.of(arena, x);
            MemorySegment y = Segments.zeros(arena, x.length);
            MemorySegment mean = Segments.zeros(arena, channels);
            MemorySegment var = Segments.zeros(arena, channels);
            MemorySegment g = gamma == null ? null : Segments.of(arena, gamma);
            MemorySegment b = beta == null ? null : Segments.of(arena, beta);
            MemorySegment ws = arena.allocate(bn.workspaceBytes(), 8);
            ws.fill((byte) 0xa5);
            bn.forwardTraining(xs, residual == null ? null : Segments.of(arena, residual), g, b, y,
                    mean, var, ws);
            MemorySegment dys = Segments.of(arena, dy);
            MemorySegment dx = inPlace == 1 ? dys : Segments.zeros(arena, x.length);
            MemorySegment dres = inPlace == 2 ? dys : Segments.zeros(arena, x.length);
            MemorySegment dgamma = Segments.zeros(arena, channels);
            MemorySegment dbeta = Segments.zeros(arena, channels);
            bn.backwardWithWorkspace(xs, dys, ws, g, mean, var, dx, dres, dgamma, dbeta);
            return new Masked(new Training(Segments.toArray(y), Segments.toArray(mean), Segments.toArray(var)),
                    ws.toArray(java.lang.foreign.ValueLayout.JAVA_LONG),
                    new FusedBackward(Segments.toArray(dx), Segments.toArray(dres),
                            Segments.toArray(dgamma), Segments.toArray(dbeta)));
        }
    }
}
