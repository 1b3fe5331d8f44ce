package dev.vecnorm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.module.ModuleDescriptor;
import java.lang.module.ModuleFinder;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.spi.ToolProvider;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The library as a separate project sees it: the jar is built from {@code target/classes} (this
 * runs before {@code package}), installed into a throw-away local repository in Maven's layout,
 * and a small consumer ({@code src/test/resources/consumer}) is compiled against it and run in a
 * child JVM, on the module path and on the class path. A wrong module descriptor is the first
 * failure a user hits, and the suite itself runs on the class path, so only this test sees it.
 * The JDK's own jar and javac tools do the building: no network, no nested Maven, a few seconds.
 */
class ConsumerProjectTest {

    static final String GROUP = "dev.vecnorm";
    static final String ARTIFACT = "vecnorm";
    static final String VERSION = System.getProperty("vecnorm.version", "0-SNAPSHOT");
    /** Generous: a child JVM starts in well under a second; this only stops a hung one. */
    static final long CHILD_TIMEOUT_SECONDS = 60;
    static final String MAIN = "demo.consumer.Main";
    static final String EXPECTED_STATISTICS = "mean=[2.5, -1.0]\nvariance=[1.25, 4.0]";

    static Path work;
    static Path jar;
    static Path modular;
    static Path plain;

    @BeforeAll
    static void installAndCompileTheConsumer() throws Exception {
        Path classes = Path.of(BatchNorm.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        work = classes.getParent().resolve("consumer-project-test");
        deleteRecursively(work);
        jar = install(classes, work.resolve("repository"));
        Path sources = resource("consumer");
        modular = work.resolve("modular");
        javac(List.of("--module-path", jar.toString(), "--class-path", empty(), "-d", modular.toString(),
                sources.resolve("module-info.java").toString(),
                sources.resolve("demo/consumer/Main.java").toString()));
        plain = work.resolve("plain");
        javac(List.of("--class-path", jar.toString(), "-d", plain.toString(),
                sources.resolve("demo/consumer/Main.java").toString()));
    }

    /**
     * Builds the jar and installs it with a minimal pom at
     * {@code groupId-as-path/artifactId/version/}, the path by which the consumer resolves it.
     */
    private static Path install(Path classes, Path repository) throws IOException {
        Path dir = repository.resolve(GROUP.replace('.', '/')).resolve(ARTIFACT).resolve(VERSION);
        Files.createDirectories(dir);
        Path jarFile = dir.resolve(ARTIFACT + "-" + VERSION + ".jar");
        run(tool("jar"), List.of("--create", "--file", jarFile.toString(), "-C", classes.toString(), "."));
        Files.writeString(dir.resolve(ARTIFACT + "-" + VERSION + ".pom"), """
                <?xml version="1.0" encoding="UTF-8"?>
                <project xmlns="http://maven.apache.org/POM/4.0.0">
                  <modelVersion>4.0.0</modelVersion>
                  <groupId>%s</groupId>
                  <artifactId>%s</artifactId>
                  <version>%s</version>
                  <packaging>jar</packaging>
                </project>
                """.formatted(GROUP, ARTIFACT, VERSION));
        return jarFile;
    }

    /** The descriptor says what DESIGN.md says: one exported package, the incubator optional. */
    @Test
    void theJarIsTheModuleDevVecnormExportingOnlyItsApi() {
        ModuleDescriptor module = ModuleFinder.of(jar).find("dev.vecnorm")
                .orElseThrow(() -> new AssertionError("no module dev.vecnorm in " + jar))
                .descriptor();
        assertEquals(Set.of("dev.vecnorm"),
                module.exports().stream().map(ModuleDescriptor.Exports::source).collect(Collectors.toSet()),
                "exported packages");
        assertTrue(module.exports().stream().noneMatch(ModuleDescriptor.Exports::isQualified), "qualified exports");
        assertEquals(Set.of(), module.opens(), "opened packages");
        ModuleDescriptor.Requires vector = module.requires().stream()
                .filter(r -> r.name().equals("jdk.incubator.vector")).findFirst()
                .orElseThrow(() -> new AssertionError("no requires jdk.incubator.vector: " + module.requires()));
        assertTrue(vector.modifiers().contains(ModuleDescriptor.Requires.Modifier.STATIC),
                "jdk.incubator.vector must be optional at run time: " + vector);
        assertTrue(module.packages().contains("dev.vecnorm.kernel"), "the kernels are in the jar");
    }

    @Test
    void onTheModulePathWithTheVectorModuleTheVectorKernelsLoad() throws Exception {
        String out = java("--add-modules", "jdk.incubator.vector",
                "--module-path", jar + java.io.File.pathSeparator + modular, "-m", "demo.consumer/" + MAIN);
        assertTrue(out.contains("module=dev.vecnorm\n"), out);
        assertTrue(out.contains("kernels=vector "), out);
        assertTrue(out.contains(EXPECTED_STATISTICS), out);
    }

    /** Without the flag the module still resolves, and the fallback says which flag to add. */
    @Test
    void onTheModulePathWithoutItTheScalarKernelsRunAndSaySo() throws Exception {
        String out = java("--module-path", jar + java.io.File.pathSeparator + modular, "-m", "demo.consumer/" + MAIN);
        assertTrue(out.contains("module=dev.vecnorm\n"), out);
        assertTrue(out.contains("kernels=scalar\n"), out);
        assertTrue(out.contains("--add-modules=jdk.incubator.vector"), "the fallback's advice:\n" + out);
        assertTrue(out.contains(EXPECTED_STATISTICS), out);
    }

    @Test
    void onTheClassPathItWorksToo() throws Exception {
        String out = java("--add-modules", "jdk.incubator.vector",
                "--class-path", jar + java.io.File.pathSeparator + plain, MAIN);
        assertTrue(out.contains("module=unnamed\n"), out);
        assertTrue(out.contains("kernels=vector "), out);
        assertTrue(out.contains(EXPECTED_STATISTICS), out);
    }

    /** The kernels are internal: a consumer on the module path cannot even compile against them. */
    @Test
    void theKernelPackageIsNotAccessibleOnTheModulePath() throws IOException {
        Path src = work.resolve("intruder-src");
        Files.createDirectories(src.resolve("demo/intruder"));
        Files.writeString(src.resolve("module-info.java"), "module demo.intruder { requires dev.vecnorm; }\n");
        Files.writeString(src.resolve("demo/intruder/Main.java"), """
                package demo.intruder;

                import dev.vecnorm.kernel.KernelProvider;

                public class Main {
                    public static void main(String[] args) {
                        System.out.println(KernelProvider.kernels().description());
                    }
                }
                """);
        StringWriter log = new StringWriter();
        int rc = tool("javac").run(new PrintWriter(log), new PrintWriter(log), "--module-path", jar.toString(),
                "--class-path", empty(), "-d", work.resolve("intruder").toString(),
                src.resolve("module-info.java").toString(), src.resolve("demo/intruder/Main.java").toString());
        assertNotEquals(0, rc, "javac compiled a consumer that imports dev.vecnorm.kernel:\n" + log);
        assertTrue(log.toString().contains("package dev.vecnorm.kernel is not visible"), log.toString());
        assertTrue(log.toString().contains("does not export it"), log.toString());
    }

    /** Runs the JDK's java in a child process; returns its output (stdout and stderr). */
    private static String java(String... args) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>();
        command.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        command.add("-Xmx128m");
        command.add("-XX:+UseSerialGC");
        command.addAll(List.of(args));
        Path log = Files.createTempFile(work, "java-", ".log");
        Process process = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(log.toFile()).start();
        if (!process.waitFor(CHILD_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
            process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
            fail("no exit within " + CHILD_TIMEOUT_SECONDS + " s: " + command + "\n" + Files.readString(log));
        }
        String out = Files.readString(log).replace(System.lineSeparator(), "\n");
        assertEquals(0, process.exitValue(), command + "\n" + out);
        return out;
    }

    /**
     * An empty class path: javac run in-process would otherwise take this JVM's class path
     * (target/classes among it), which a separate project does not have.
     */
    private static String empty() throws IOException {
        return Files.createDirectories(work.resolve("empty-class-path")).toString();
    }

    private static void javac(List<String> args) {
        run(tool("javac"), args);
    }

    private static void run(ToolProvider tool, List<String> args) {
        StringWriter log = new StringWriter();
        int rc = tool.run(new PrintWriter(log), new PrintWriter(log), args.toArray(String[]::new));
        assertEquals(0, rc, tool.name() + " " + String.join(" ", args) + "\n" + log);
    }

    private static ToolProvider tool(String name) {
        return ToolProvider.findFirst(name)
                .orElseThrow(() -> new AssertionError("this JDK has no " + name + " tool"));
    }

    /** The consumer's sources, as copied to the test classes. */
    private static Path resource(String name) throws URISyntaxException {
        return Path.of(ConsumerProjectTest.class.getResource("/" + name).toURI());
    }

    private static void deleteRecursively(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> paths = Files.walk(dir)) {
            for (Path p : paths.sorted(Comparator.reverseOrder()).toList()) {
                Files.delete(p);
            }
        }
    }
}
