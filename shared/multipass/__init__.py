"""Multipass: the runtime library every service imports (config, errors, logging, metrics, images, the
object store, names, the NATS bus port in ``bus``, gRPC in ``grpc``, model sync). It imports no service
and no tooling: the client and the ``multipass`` command are ``multipass_client``, the local stack and
developer commands ``multipass_dev``, the benchmarks ``multipass_bench``."""

__version__ = "0.1.0"
