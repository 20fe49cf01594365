"""The public gRPC servicers and what they share: reading credentials from calls, the public view of a job."""
