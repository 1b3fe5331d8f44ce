package dev.vecnorm;

import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ArbitrarySupplier;

/**
 * Generators shared by the properties. Sizes are capped (about 60 000 floats a tensor) so that
 * the three kernel runs of {@code mvn test} stay within minutes; {@code -Dvecnorm.tries=N} gives a
 * deeper run.
 */
final class Shapes {

    static final long MAX_ELEMENTS = 60_000;

    private Shapes() {
    }

    /**
     * Shapes with awkward sizes: spatial 1, primes, one below / at / above multiples of 16,
     * ResNet's 7x7 = 49; channels up to 1000 (then with few values each), network-like counts
     * among them; both layouts; M >= 2.
     */
    static Arbitrary<TensorShape> shapes() {
        // Network-like counts (multiples of 16 and 64) reach the kernels' special cases, e.g.
        // the NHWC register paths for 64 and 128 channels and for groups of 64.
        Arbitrary<Integer> channels = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(6, Arbitraries.integers().between(1, 40)),
                net.jqwik.api.Tuple.of(1, Arbitraries.of(16, 32, 48, 64, 128, 192, 256, 512, 1024)),
                net.jqwik.api.Tuple.of(1, Arbitraries.integers().between(41, 1000)));
        Arbitrary<Integer> batch = Arbitraries.integers().between(1, 6);
        Arbitrary<Long> spatial = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(3, Arbitraries.of(1L, 2L, 3L, 7L, 13L, 15L, 16L, 17L, 31L, 32L,
                        33L, 49L, 64L, 97L, 196L)),
                net.jqwik.api.Tuple.of(2, Arbitraries.longs().between(1, 400)));
        return Combinators.combine(batch, channels, spatial, Arbitraries.of(Layout.class))
                .as((n, c, s, layout) -> {
                    long cap = Math.max(1, MAX_ELEMENTS / ((long) n * c));
                    long sp = Math.min(s, cap);
                    int nn = n;
                    if ((long) nn * sp < 2) {
                        nn = 2;                       // training needs M = N * spatial >= 2
                    }
                    return new TensorShape(nn, c, sp, layout);
                });
    }

    /** Epsilon log-uniform in [1e-12, 1]. */
    static Arbitrary<Float> epsilons() {
        return Arbitraries.doubles().between(-12, 0).map(e -> (float) Math.pow(10, e));
    }

    /** {@code @ForAll(supplier = Shapes.Any.class)}: {@link #shapes()}. */
    static final class Any implements ArbitrarySupplier<TensorShape> {
        @Override
        public Arbitrary<TensorShape> get() {
            return shapes();
        }
    }

    /** {@code @ForAll(supplier = Shapes.Epsilon.class)}: {@link #epsilons()}. */
    static final class Epsilon implements ArbitrarySupplier<Float> {
        @Override
        public Arbitrary<Float> get() {
            return epsilons();
        }
    }
}
