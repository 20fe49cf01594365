"""The gateway's adapters to the world: KV stores and their mirrors, the pass scheduler's I/O, safe HTTP,
callbacks, clients of the internal services, metrics."""
