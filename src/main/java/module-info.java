/**
 * vecnorm: SIMD CPU kernels for BatchNorm over off-heap {@link java.lang.foreign.MemorySegment}s.
 * The API is the package {@link dev.vecnorm}; the kernels are internal.
 *
 * <p>The Vector API kernels run when the JVM is started with
 * {@code --add-modules jdk.incubator.vector}; without it the library loads and runs the scalar
 * kernels, so the dependence on the incubator module is {@code static} (optional at run time).
 */
module dev.vecnorm {
    // The provider reads HotSpot flags (is C2 on, is FMA used) through ManagementFactory.
    requires java.management;
    // Its HotSpotDiagnosticMXBean is looked up reflectively, and optional as well.
    requires static jdk.management;
    // Optional at run time: the vector kernels are loaded reflectively when it is resolved.
    requires static jdk.incubator.vector;

    exports dev.vecnorm;
}
