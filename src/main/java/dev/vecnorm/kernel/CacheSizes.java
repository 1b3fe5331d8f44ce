package dev.vecnorm.kernel;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The data cache sizes of this machine, read once: the kernels' blocks are derived from them, as
 * oneDNN derives its blocks from {@code get_per_core_cache_size}. Only the walk order depends on
 * them, never the bits of a result. On Linux they come from
 * {@code /sys/devices/system/cpu/cpu0/cache/index*}; elsewhere, or where that cannot be read,
 * {@link #DEFAULT} (48 KiB L1d, 1 MiB L2, 8 MiB L3: a common x86-64 core of recent years).
 */
public record CacheSizes(long l1, long l2, long l3) {

    /** The sizes used where the machine's cannot be read. */
    public static final CacheSizes DEFAULT = new CacheSizes(48 << 10, 1 << 20, 8 << 20);

    private static final CacheSizes MACHINE = read(Path.of("/sys/devices/system/cpu/cpu0/cache"));

    /** This machine's sizes (read once per JVM). */
    public static CacheSizes machine() {
        return MACHINE;
    }

    /**
     * The sizes listed under {@code dir} (Linux's sysfs layout: {@code index<i>/level},
     * {@code type}, {@code size} such as {@code 48K}); {@link #DEFAULT}'s for any level not found.
     */
    static CacheSizes read(Path dir) {
        long l1 = 0, l2 = 0, l3 = 0;
        for (int i = 0; i < 8; i++) {
            Path index = dir.resolve("index" + i);
            try {
                String type = text(index.resolve("type"));
                if (!type.equals("Data") && !type.equals("Unified")) {
                    continue;
                }
                int level = Integer.parseInt(text(index.resolve("level")));
                long size = bytes(text(index.resolve("size")));
                switch (level) {
                    case 1 -> l1 = size;
                    case 2 -> l2 = size;
                    case 3 -> l3 = size;
                    default -> { }
                }
            } catch (IOException | RuntimeException e) {
                // Not there (not Linux, fewer levels, a container hiding sysfs): keep the default.
            }
        }
        return new CacheSizes(l1 > 0 ? l1 : DEFAULT.l1, l2 > 0 ? l2 : DEFAULT.l2,
                l3 > 0 ? l3 : Math.max(DEFAULT.l3, l2));
    }

    private static String text(Path p) throws IOException {
        return Files.readString(p, StandardCharsets.US_ASCII).trim();
    }

    /** "48K", "1024K", "32M" or a plain number of bytes. */
    static long bytes(String s) {
        char unit = Character.toUpperCase(s.charAt(s.length() - 1));
        long scale = unit == 'K' ? 1L << 10 : unit == 'M' ? 1L << 20 : unit == 'G' ? 1L << 30 : 1;
        String digits = scale == 1 ? s : s.substring(0, s.length() - 1);
        long value = Long.parseLong(digits.trim());
        if (value <= 0) {
            throw new NumberFormatException("cache size: expected a positive size, got " + s);
        }
        return value * scale;
    }
}
