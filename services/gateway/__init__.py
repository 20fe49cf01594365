"""The Multipass gateway: public Jobs/Tunes/Admin gRPC APIs, job state and orchestration.

Four layers, each importing only the ones below it (``tests/unit/gateway/test_gateway_layers.py``):

* ``domain``: pure rules (planner, job state machine, parallel persons, base batching, scheduling
  policy, address policy, API keys): no grpc, nats, S3 or network I/O.
* ``infra``: the world: job, tune and tenant stores, the KV mirrors and replica notes, the pass
  scheduler's I/O, safe HTTP, callbacks, clients of the internal services, metrics.
* ``app``: what each request and consumed message does: submission, cancellation, the orchestrator,
  the segmentation steps, abandoned-pass recovery, the end of a job, the sweeper, WatchJob's stream.
* ``api``: the gRPC servicers (``*_servicer.py``), credentials of a call, the public view of a job.

``main.serve(settings)`` wires them (the other services name this module ``app.py``; here ``app`` is the
application layer); ``settings`` is read once by ``python -m multipass_gateway``.
"""
