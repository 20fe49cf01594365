"""The HTTP service: our job API over HTTP (with Server-Sent Events), the Astria-compatible endpoints and
the web page, all as a client of the gateway's public gRPC API (the gateway authenticates every call)."""
