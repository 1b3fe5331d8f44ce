package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/**
 * A call allocates nothing once the JIT has compiled it: engines call BatchNorm per layer and per
 * step, and garbage per call would be garbage per layer. Measured with the thread's allocation
 * counter over windows of {@link AllocationProbe#CALLS} calls on small tensors (where any per-call
 * object would dominate); the JIT needs some calls before escape analysis and the Vector API's
 * intrinsics apply, so a call passes when one window among the first
 * {@link AllocationProbe#WINDOWS} allocates not a byte. A single per-call object (16 bytes or more)
 * makes every window allocate at least CALLS x 16 bytes, so no call passes by chance.
 *
 * <p>Each call runs in a JVM of its own, with this JVM's options (the kernels, their width): in
 * one JVM that has run the same kernels for other shapes, variants (ReLU, residual, in place),
 * heap segments or the scalar kernels, C2 sometimes recompiles a kernel after an uncommon trap
 * without some of its Vector API intrinsics, and that code boxes a vector per loop iteration.
 * That depends on the order and timing of compilations, not on the call (PERFORMANCE.md,
 * "Allocation and C2"), so a shared JVM would make this test flaky, not stricter.
 */
class AllocationTest {

    static final long CHILD_TIMEOUT_SECONDS = 300;
    static final int ATTEMPTS = 3;

    @TestFactory
    Stream<DynamicTest> everyCallAllocatesNothingOnceCompiled() {
        List<DynamicTest> tests = new ArrayList<>();
        try (Arena arena = Arena.ofConfined()) {
            for (String scenario : AllocationProbe.SCENARIOS) {
                int index = 0;
                for (String name : AllocationProbe.calls(arena, scenario).keySet()) {
                    String args = scenario + " " + index++;
                    tests.add(DynamicTest.dynamicTest(name, () -> call(args)));
                }
            }
        }
        return tests.stream();
    }

    /**
     * Runs the call in a fresh JVM, up to {@link #ATTEMPTS} times while it allocates: a per-call
     * object shows in every JVM, while a C2 compilation that leaves intrinsics out depends on the
     * compilation order (NHWC rows of 24 channels did so in a few JVMs in a few hundred until the
     * row kernels stopped calling FloatVector's final sub, fma and blend; with
     * {@code -XX:-TieredCompilation} they did in every JVM, and no call does now). Each retry is
     * printed, so that a kernel that starts to need them is seen in the log. A probe that fails or
     * hangs fails at once.
     */
    private static void call(String probeArguments) throws IOException, InterruptedException {
        String allocated = null;
        for (int attempt = 1; attempt <= ATTEMPTS; attempt++) {
            String[] result = probe(probeArguments);
            long bytes = Long.parseLong(result[0]);
            if (bytes == 0) {
                return;
            }
            // Fewer bytes than calls in the window is not a per-call object, yet not none either.
            allocated = result[1] + ": " + bytes + " bytes (" + bytes / AllocationProbe.CALLS + " per call) in the best"
                    + " window of " + AllocationProbe.CALLS + " calls";
            System.err.println("AllocationTest: attempt " + attempt + " of " + ATTEMPTS + " allocated: " + allocated);
        }
        fail(allocated);
    }

    /** The probe's result in a child JVM: the bytes of its best window and the call's name. */
    private static String[] probe(String probeArguments) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>();
        command.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        for (String option : ManagementFactory.getRuntimeMXBean().getInputArguments()) {
            if (!option.startsWith("-javaagent") && !option.startsWith("-agentlib") && !option.startsWith("-XX:StartFlightRecording")) {
                command.add(option);
            }
        }
        command.add("-cp");
        command.add(System.getProperty("java.class.path"));
        command.add(AllocationProbe.class.getName());
        command.addAll(List.of(probeArguments.split(" ")));
        Path log = Files.createTempFile("vecnorm-allocation-", ".log");
        try {
            Process process = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(log.toFile()).start();
            if (!process.waitFor(CHILD_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
                process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
                fail("no exit within " + CHILD_TIMEOUT_SECONDS + " s: " + command + "\n" + Files.readString(log));
            }
            String out = Files.readString(log);
            assertEquals(0, process.exitValue(), command + "\n" + out);
            String line = out.lines().filter(l -> l.startsWith("alloc ")).findFirst().orElse(null);
            assertNotNull(line, "the probe printed no result:\n" + out);
            String[] parts = line.split(" ", 3);
            return new String[] {parts[1], parts[2]};
        } finally {
            Files.deleteIfExists(log);
        }
    }
}
