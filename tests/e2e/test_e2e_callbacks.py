"""Job callbacks: a signed POST of the finished job, retried while the receiver fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from e2e_support import CALLBACK_HOST, FAST, follow, wait_until

from multipass.v1 import jobs_pb2

pytestmark = pytest.mark.e2e


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.2 answering the scripted statuses in turn (then the last one)."""

    statuses: list[int]
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver(request) -> Iterator[Receiver]:
    state = Receiver(statuses=list(request.param))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.deliveries.append(
                    Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                    )
                )
                status = state.statuses[min(len(state.deliveries), len(state.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((CALLBACK_HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://{CALLBACK_HOST}:{server.server_port}/hooks/multipass"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def signature_valid(header: str, body: bytes, key: str) -> bool:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>``, made within five minutes."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - timestamp) < 300 and hmac.compare_digest(expected, fields["v1"])


@pytest.mark.parametrize("receiver", [[503, 200]], indirect=True)
def test_the_finished_job_is_posted_signed_and_a_failure_is_retried(stack, client, receiver):
    job_id = client.jobs.submit("a lighthouse at dusk", FAST, callback_url=receiver.url).job_id
    job, _ = follow(client, job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    wait_until(lambda: len(receiver.deliveries) >= 2, timeout=30)
    job = wait_until(lambda: (j := client.jobs.get(job_id)).callback_outcome and j, timeout=30)
    assert job.callback_outcome.startswith("delivered")
    assert job.callback_attempts == 2
    assert len(receiver.deliveries) == 2
    key = client.jobs.callback_key()  # the tenant's own key, not the deployment's secret
    assert key != stack.callback_key
    for delivery in receiver.deliveries:
        assert delivery.path == "/hooks/multipass"
        assert delivery.headers["content-type"].startswith("application/json")
        assert signature_valid(delivery.headers["x-multipass-signature"], delivery.body, key)
        assert not signature_valid(delivery.headers["x-multipass-signature"], delivery.body + b" ", key)
        posted = json.loads(delivery.body)
        assert posted["job_id"] == job_id and posted["state"] == "JOB_STATE_SUCCEEDED"
    # The retry waited for the backoff (MULTIPASS_CALLBACK_BACKOFF_SECONDS=0.2).
    assert receiver.deliveries[1].received_at - receiver.deliveries[0].received_at >= 0.2


@pytest.mark.parametrize("receiver", [[500]], indirect=True)
def test_a_receiver_that_keeps_failing_is_tried_max_attempts_times_and_the_failure_recorded(
    stack, client, receiver
):
    job_id = client.jobs.submit("a windmill on a hill", FAST, callback_url=receiver.url).job_id
    job, _ = follow(client, job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    job = wait_until(lambda: (j := client.jobs.get(job_id)).callback_outcome and j, timeout=30)
    attempts = int(stack.env["MULTIPASS_CALLBACK_MAX_ATTEMPTS"])
    assert job.callback_outcome.startswith(f"failed after {attempts} attempts")
    assert job.callback_attempts == attempts
    assert len(receiver.deliveries) == attempts
    gaps = [
        b.received_at - a.received_at
        for a, b in zip(receiver.deliveries, receiver.deliveries[1:], strict=False)
    ]
    assert gaps == sorted(gaps), gaps  # exponential backoff: each wait at least as long as the one before
