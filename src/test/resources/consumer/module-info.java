/** A separate project that uses vecnorm as its users do: through the module's exported API. */
module demo.consumer {
    requires dev.vecnorm;
}
