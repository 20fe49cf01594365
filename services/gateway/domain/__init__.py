"""The gateway's domain: planning, job state transitions, scheduling policy, address policy (pure: no grpc,
nats, S3 or network I/O)."""
