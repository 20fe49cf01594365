"""Astria's REST API over the gateway's gRPC API: request forms, the prompt and tune objects, callbacks."""
