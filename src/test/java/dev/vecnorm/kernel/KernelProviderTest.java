package dev.vecnorm.kernel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vecnorm.BatchNorm;
import org.junit.jupiter.api.Test;

/**
 * Which kernels the provider chose. Each Surefire run says what it expects with
 * {@code -Dvecnorm.expectKernels}; a run whose request silently fell back fails here.
 */
class KernelProviderTest {

    private static final String EXPECT = System.getProperty("vecnorm.expectKernels", "");

    @Test
    void theRunGotTheKernelsItAskedFor() {
        String got = BatchNorm.kernels();
        switch (EXPECT) {
            case "vector" -> assertTrue(got.startsWith("vector "), got);
            case "vector-128" -> assertTrue(got.startsWith("vector 128-bit"), got);
            case "vector-256" -> assertTrue(got.startsWith("vector 256-bit"), got);
            case "scalar" -> assertEquals("scalar", got);
            default -> assertTrue(got.equals("scalar") || got.startsWith("vector "), got);
        }
    }

    @Test
    void theModuleDecidesWhatAutoChooses() {
        boolean readable = ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent();
        BatchNormKernels auto = KernelProvider.choose("auto");
        assertEquals(readable, auto.description().startsWith("vector"), auto.description());
    }

    @Test
    void forcingVectorWithoutTheModuleIsAnErrorNotAFallback() {
        if (ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            assertTrue(KernelProvider.choose("vector").description().startsWith("vector"));
        } else {
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> KernelProvider.choose("vector"));
            assertTrue(e.getMessage().contains("--add-modules=jdk.incubator.vector"), e.getMessage());
        }
    }

    @Test
    void scalarCanAlwaysBeForcedAndNonsenseIsRejected() {
        assertEquals("scalar", KernelProvider.choose("scalar").description());
        IllegalStateException e = assertThrows(IllegalStateException.class,
                () -> KernelProvider.choose("gpu"));
        assertTrue(e.getMessage().contains("expected auto, vector or scalar, got 'gpu'"), e.getMessage());
    }
}
