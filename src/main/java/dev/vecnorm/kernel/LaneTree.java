package dev.vecnorm.kernel;

/**
 * The one order in which every kernel combines its {@link BatchNormKernels#VIRTUAL_LANES} partial
 * sums. {@code reduceLanes} is not used anywhere: its order is unspecified, so its bits could
 * differ between vector widths and JDK versions.
 */
final class LaneTree {

    private LaneTree() {
    }

    /**
     * Pairwise tree over {@code lanes[from .. from + 32)}: halves are added lane by lane
     * (16 + 16, then 8 + 8, ..., 1 + 1), then {@code tail} is added. Destroys the array's contents.
     * Pairwise combination also keeps the rounding error of the combination at log2(32) = 5 adds.
     */
    static double combine(double[] lanes, int from, double tail) {
        return combine(lanes, from, BatchNormKernels.VIRTUAL_LANES, tail);
    }

    /**
     * The same tree's last levels, over {@code lanes[from .. from + count)} ({@code count} a power
     * of two): for kernels that did the first levels in vector registers, lane by lane.
     */
    static double combine(double[] lanes, int from, int count, double tail) {
        for (int half = count / 2; half >= 1; half >>= 1) {
            for (int i = 0; i < half; i++) {
                lanes[from + i] += lanes[from + i + half];
            }
        }
        return lanes[from] + tail;
    }
}
