"""The Multipass gateway: public Jobs/Tunes/Admin gRPC APIs, job state and orchestration.

Pure modules (no grpc, nats or minio): ``planner`` (parsed prompt -> chain of passes per image),
``job_state`` (transitions of a job record, progress, the outbox), ``ssrf`` (which addresses user URLs
may reach), ``auth`` (API keys, admin token), ``names``. The rest wires them to the world: ``fetch``
(safe HTTP), ``job_store`` (KV compare-and-set + outbox publishing), ``orchestrator`` (pass events),
``gateway_passes`` (segmentation work queue), ``lifecycle`` (job end, callbacks, sweeper), ``submission``
(SubmitJob), the servicers, and ``service.serve(settings)``.
"""
