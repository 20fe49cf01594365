"""Multipass: the shared library of the services (config, errors, gRPC, NATS, object store, CLI)."""

__version__ = "0.1.0"
