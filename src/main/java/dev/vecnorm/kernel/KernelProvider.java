package dev.vecnorm.kernel;

import java.lang.management.ManagementFactory;
import java.lang.reflect.Constructor;
import java.util.Locale;
import java.util.Optional;

/**
 * Chooses the kernels once per JVM, in the style of Lucene's {@code VectorizationProvider}: the
 * Vector API kernels when {@code jdk.incubator.vector} is readable and C2 compiles, else the
 * scalar kernels with one logged sentence that says what to change.
 *
 * <p>System properties (read once, at first use):
 * <ul>
 *   <li>{@code vecnorm.kernels} = {@code auto} (default), {@code vector} or {@code scalar}.
 *       Forcing {@code vector} where it cannot run throws at first use instead of falling back.</li>
 *   <li>{@code vecnorm.vectorBits} = 128, 256 or 512: a width at most the preferred one, to test
 *       lane tails that wide lanes hide.</li>
 * </ul>
 */
public final class KernelProvider {

    /** Selects the implementation: auto, vector or scalar. */
    public static final String KERNELS_PROPERTY = "vecnorm.kernels";
    /** Forces a vector width in bits (128, 256, 512). */
    public static final String BITS_PROPERTY = "vecnorm.vectorBits";

    private static final System.Logger LOG = System.getLogger("dev.vecnorm");
    private static final String VECTOR_MODULE = "jdk.incubator.vector";
    private static final String VECTOR_CLASS = "dev.vecnorm.kernel.VectorKernels";

    private KernelProvider() {
    }

    /** The kernels of this JVM, chosen at first call. */
    public static BatchNormKernels kernels() {
        return Holder.KERNELS;
    }

    /** The portable kernels, whatever was chosen (tests compare against them). */
    public static BatchNormKernels scalar() {
        return Holder.SCALAR;
    }

    private static final class Holder {
        static final BatchNormKernels SCALAR = new ScalarKernels();
        static final BatchNormKernels KERNELS = choose(System.getProperty(KERNELS_PROPERTY, "auto"));
    }

    static BatchNormKernels choose(String wanted) {
        String mode = wanted.trim().toLowerCase(Locale.ROOT);
        switch (mode) {
            case "scalar" -> {
                LOG.log(System.Logger.Level.INFO, "vecnorm: scalar kernels, as " + KERNELS_PROPERTY
                        + "=scalar asks");
                return Holder.SCALAR;
            }
            case "auto", "" -> {
                Optional<String> reason = whyNotVector();
                if (reason.isPresent()) {
                    LOG.log(System.Logger.Level.WARNING, "vecnorm: using the scalar kernels because "
                            + reason.get());
                    return Holder.SCALAR;
                }
                BatchNormKernels vector = loadVector();
                LOG.log(System.Logger.Level.INFO, "vecnorm: " + vector.description());
                return vector;
            }
            case "vector" -> {
                Optional<String> reason = whyNotVector();
                if (reason.isPresent()) {
                    throw new IllegalStateException(KERNELS_PROPERTY + "=vector, but the vector kernels"
                            + " cannot run: " + reason.get());
                }
                return loadVector();
            }
            default -> throw new IllegalStateException(KERNELS_PROPERTY
                    + ": expected auto, vector or scalar, got '" + wanted + "'");
        }
    }

    /** Empty when the vector kernels can run; otherwise a sentence that says what to change. */
    private static Optional<String> whyNotVector() {
        if (ModuleLayer.boot().findModule(VECTOR_MODULE).isEmpty()) {
            return Optional.of("the Vector API module is not readable; start the JVM with"
                    + " --add-modules=" + VECTOR_MODULE + " for the SIMD kernels");
        }
        String vmName = System.getProperty("java.vm.name", "");
        if (!vmName.contains("HotSpot") && !vmName.contains("OpenJDK")) {
            return Optional.of("the JVM '" + vmName + "' is not HotSpot, whose C2 compiler the Vector"
                    + " API needs to be fast");
        }
        if (System.getProperty("java.vm.info", "").contains("interpreted mode")) {
            return Optional.of("the JVM runs interpreted (-Xint); remove -Xint for the SIMD kernels");
        }
        String tieredStop = vmOption("TieredStopAtLevel");
        if (tieredStop != null && !tieredStop.equals("4") && "true".equals(vmOption("TieredCompilation"))) {
            return Optional.of("C2 is off (-XX:TieredStopAtLevel=" + tieredStop
                    + "); remove that flag for the SIMD kernels");
        }
        return Optional.empty();
    }

    private static BatchNormKernels loadVector() {
        try {
            Class<?> type = Class.forName(VECTOR_CLASS);
            Constructor<?> constructor = type.getDeclaredConstructor(boolean.class);
            return (BatchNormKernels) constructor.newInstance(!"false".equals(vmOption("UseFMA")));
        } catch (ReflectiveOperationException | LinkageError e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            throw new IllegalStateException("vecnorm: the vector kernels failed to load: " + cause, cause);
        }
    }

    /** A HotSpot flag's value, or null when it cannot be read (no jdk.management module). */
    private static String vmOption(String name) {
        try {
            Class<?> beanType = Class.forName("com.sun.management.HotSpotDiagnosticMXBean");
            @SuppressWarnings("unchecked")
            Object bean = ManagementFactory.getPlatformMXBean(
                    (Class<? extends java.lang.management.PlatformManagedObject>) beanType);
            Object option = beanType.getMethod("getVMOption", String.class).invoke(bean, name);
            return (String) option.getClass().getMethod("getValue").invoke(option);
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return null;
        }
    }
}
