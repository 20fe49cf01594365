"""The local stack: a small process manager (``supervisor``) and the Multipass processes it runs.

``multipass up`` starts nats-server, an S3 endpoint and the five services (the
four of the pipeline and the HTTP API) on loopback, supervises them
(restart with backoff), and records ports, pids and credentials under ``.multipass/`` (``state``; the
client reads the record through :mod:`multipass_client.stack_record`).
"""
