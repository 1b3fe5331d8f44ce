package dev.vecnorm.kernel;

import java.util.function.Supplier;

/**
 * The working arrays of an engine's calls, one set per thread: each thread reuses its own, so a
 * call allocates none in the steady state; a call that finds its thread's set busy (a call nested
 * in another on the same thread, e.g. from a fork-join worker that helps while it waits) takes a
 * fresh one.
 */
final class Scratches<S extends Scratches.Slot> {

    /** A set of working arrays; {@link #endCall} drops the call's segments. */
    abstract static class Slot {
        boolean busy;

        /** Forgets the call: its segments, so that the scratch keeps no caller's memory reachable. */
        abstract void endCall();
    }

    private final Supplier<S> fresh;
    private final ThreadLocal<S> perThread;

    Scratches(Supplier<S> fresh) {
        this.fresh = fresh;
        this.perThread = ThreadLocal.withInitial(fresh);
    }

    S acquire() {
        S s = perThread.get();
        if (s.busy) {
            s = fresh.get();
        }
        s.busy = true;
        return s;
    }

    void release(S s) {
        s.endCall();
        s.busy = false;
    }
}
