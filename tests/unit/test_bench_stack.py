"""The stack-side bench pieces without starting a stack: rebuilding the dispatched pass requests from a
job record, the job timeline, fetching inputs as the worker does, the stand-in worker's answers, and
the control-plane wiring."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from multipass import names
from multipass.bus import Ack
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2
from multipass_bench import control_plane, stack_bench, standin_worker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _stamp(message, seconds: float) -> None:
    message.FromDatetime(T0 + timedelta(seconds=seconds))


def a_record() -> events_pb2.JobRecord:
    """A finished two-person job: prepare, base, segment, person-0, person-1."""
    record = events_pb2.JobRecord(tenant="t1")
    record.job.job_id = "job1"
    _stamp(record.job.created_at, 0.0)
    _stamp(record.job.finished_at, 3.0)
    image = record.job.images.add()
    plan = record.plans.add()
    times = {
        "prepare": (0.0, 0.1),
        "base": (0.2, 1.2),
        "segment": (1.3, 1.5),
        "person-0": (1.6, 2.2),
        "person-1": (2.3, 3.0),
    }
    for name, (start, end) in times.items():
        kind = "person" if name.startswith("person") else name
        runs_in = {"prepare": "gateway", "segment": "segmentation"}.get(kind, "diffusion")
        spec = diffusion_pb2.PassSpec(kind=kind, model="sd15-tiny", steps=20, prompt=name)
        plan.passes.add(
            name=name,
            kind=kind,
            runs_in=runs_in,
            spec=spec,
            person_index=int(name[-1]) if kind == "person" else -1,
        )
        state = image.passes.add(name=name, kind=kind, status=jobs_pb2.PASS_STATUS_COMPLETED, attempt=1)
        _stamp(state.started_at, start)
        _stamp(state.finished_at, end)
        if kind in ("base", "person"):
            state.output.CopyFrom(
                common_pb2.ImageRef(bucket="multipass-jobs", key=f"jobs/t1/job1/image-0/{name}.png")
            )
    for index in range(2):
        image.masks[f"person-{index}"].CopyFrom(
            common_pb2.ImageRef(bucket="multipass-jobs", key=f"jobs/t1/job1/image-0/mask-person-{index}.png")
        )
    image.passes[2].output.CopyFrom(image.passes[1].output)  # segment passes the image on
    return record


def test_requests_are_rebuilt_as_the_gateway_dispatched_them():
    requests = dict(stack_bench.diffusion_requests(a_record()))
    assert sorted(requests) == [1, 3, 4]
    base, first, second = requests[1], requests[3], requests[4]
    assert base.pass_name == "base" and not base.spec.HasField("image")
    assert first.spec.image.key.endswith("/base.png")
    assert first.spec.mask.key.endswith("/mask-person-0.png")
    assert second.spec.image.key.endswith("/person-0.png")  # sequential: the updated image
    assert second.spec.mask.key.endswith("/mask-person-1.png")
    assert second.output_key == "jobs/t1/job1/image-0/person-1.png"


def test_timeline_shows_gaps_client_latency_and_in_process_times():
    run = stack_bench.JobRun(seconds=3.5, job=None, wall_started=T0.timestamp() - 0.25)
    found = stack_bench.timeline(a_record(), run, {"base": 0.9, "person-0": 0.5})
    by_pass = {p["pass"]: p for p in found["passes"]}
    assert by_pass["base"]["start"] == 0.2 and by_pass["base"]["end"] == 1.2
    assert by_pass["segment"]["gap_before"] == 0.1
    assert by_pass["base"]["stack_minus_in_process"] == 0.1
    assert "in_process_seconds" not in by_pass["person-1"]
    assert found["sum_of_gaps"] == 0.4  # base, segment, person-0, person-1 each waited 0.1 s
    assert found["submit_to_created"] == 0.25
    assert found["job_end_to_client"] == 0.25


class FakeReader:
    def __init__(self):
        self.reads = []

    def read(self, bucket: str, key: str) -> bytes:
        self.reads.append((bucket, key))
        if key.endswith(".safetensors"):
            return b"lora-bytes"
        buffer = io.BytesIO()
        Image.new("RGBA", (16, 8), (10, 20, 30, 255)).save(buffer, format="PNG")
        return buffer.getvalue()


def test_inputs_are_fetched_and_decoded_like_the_worker_does(tmp_path):
    spec = diffusion_pb2.PassSpec(kind="person")
    spec.image.CopyFrom(common_pb2.ImageRef(bucket="b", key="image.png"))
    spec.mask.CopyFrom(common_pb2.ImageRef(bucket="b", key="mask.png"))
    spec.loras.add(tune_id="42", weight=1.0, kind="lora")
    spec.tune_files["42"].CopyFrom(
        common_pb2.ObjectRef(bucket="multipass-tunes", key="t/42/x.safetensors", sha256="ab" * 32)
    )
    reader = FakeReader()
    inputs = stack_bench.fetch_inputs(reader, spec, tmp_path / "tunes")
    assert inputs.image.mode == "RGB" and inputs.mask.mode == "L" and inputs.control_image is None
    assert inputs.tune_paths["42"].read_bytes() == b"lora-bytes"
    stack_bench.fetch_inputs(reader, spec, tmp_path / "tunes")
    assert reader.reads.count(("multipass-tunes", "t/42/x.safetensors")) == 1  # cached by sha256


def test_stack_environment_drops_the_callers_pointers(monkeypatch):
    monkeypatch.setenv("MULTIPASS_MODEL_DIR", "/elsewhere")
    monkeypatch.setenv("MULTIPASS_NATS_URL", "nats://elsewhere:4222")
    env = stack_bench.clean_env()
    assert "MULTIPASS_MODEL_DIR" not in env and "MULTIPASS_NATS_URL" not in env
    assert stack_bench.STACK_SERVICE_ENV["MULTIPASS_DIFFUSION_TORCH_THREADS"] == "1"


class FakeBus:
    def __init__(self):
        self.published = []

    async def publish(self, subject, message, *, msg_id):
        self.published.append((subject, message, msg_id))


class FakeDelivery:
    def __init__(self, request):
        self.request = request

    def parse(self, message_type):
        return self.request


def test_standin_answers_each_request_at_once_with_the_stored_image():
    bus = FakeBus()
    output = common_pb2.ImageRef(bucket="multipass-jobs", key=standin_worker.IMAGE_KEY, width=256, height=256)
    standin = standin_worker.StandIn(bus, output)
    request = diffusion_pb2.PassRequest(job_id="j1", tenant="t", image_index=0, pass_name="base", attempt=1)
    request.spec.steps = 20
    decision = asyncio.run(standin.handle(FakeDelivery(request)))
    assert isinstance(decision, Ack)
    subjects_seen = [subject for subject, _, _ in bus.published]
    assert subjects_seen == [
        names.event_subject("j1", "started"),
        names.event_subject("j1", "completed"),
    ]
    completed = bus.published[1][1]
    assert completed.completed.result.output == output
    assert (completed.job_id, completed.pass_name, completed.attempt) == ("j1", "base", 1)
    assert bus.published[1][2] == names.pass_msg_id("j1", 0, "base", 1, "completed")
    assert standin.handled == 1


def test_info_names_one_model_without_optional_components():
    answer = asyncio.run(standin_worker.StandInInfo("sd15-tiny").Info(diffusion_pb2.InfoRequest(), None))
    assert list(answer.models) == ["sd15-tiny"] and answer.model_family == "sd15"
    assert not answer.capabilities


def test_gateway_replicas_share_nats_and_the_standin_but_not_ports(tmp_path):
    plane = control_plane.ControlPlane(tmp_path, Path("/models"))
    first, second = plane._gateway(0), plane._gateway(1)
    assert first.env["MULTIPASS_NATS_URL"] == second.env["MULTIPASS_NATS_URL"] == plane.wiring.nats_url
    assert first.env["MULTIPASS_DIFFUSION_TARGET"] == plane.wiring.address("standin")
    assert first.env["MULTIPASS_GATEWAY_GRPC_ADDR"] != second.env["MULTIPASS_GATEWAY_GRPC_ADDR"]
    assert first.env["MULTIPASS_ADMIN_TOKEN"] == second.env["MULTIPASS_ADMIN_TOKEN"]
    assert first.probe.target == first.env["MULTIPASS_GATEWAY_GRPC_ADDR"]
    assert first.argv[-2:] == ("-m", "multipass_gateway")


# -- device idle figures: histogram differences between two scrapes, gaps between pass intervals -------


def a_scrape(count: float, buckets: dict[str, float]) -> dict[str, float]:
    """What ``scrape_device_metrics`` returns: idle count/sum, busy seconds, cumulative ``le:`` buckets."""
    return {"busy": 1.0, "idle_sum": 0.5, "idle_count": count, **{f"le:{k}": v for k, v in buckets.items()}}


def test_histogram_bound_counts_only_the_waits_observed_between_the_scrapes():
    before = a_scrape(10, {"0.01": 10, "0.1": 10, "1.0": 10, "10.0": 10, "+Inf": 10})
    # Four waits in between: one <= 0.01 s, two in (0.01, 0.1], one in (1, 10].
    after = a_scrape(14, {"0.01": 11, "0.1": 13, "1.0": 13, "10.0": 14, "+Inf": 14})
    assert stack_bench.histogram_bound(before, after, 0.25) == 0.01
    assert stack_bench.histogram_bound(before, after, 0.5) == 0.1
    assert stack_bench.histogram_bound(before, after, 0.75) == 0.1
    assert stack_bench.histogram_bound(before, after, 1.0) == 10.0


def test_histogram_bound_orders_bounds_by_value_not_by_their_text():
    before = a_scrape(0, {})  # the buckets appear in /metrics only with the first observation
    after = {
        **a_scrape(3, {}),
        "le:+Inf": 3,
        "le:10.0": 3,
        "le:2.5": 3,
        "le:0.5": 1,
    }
    assert stack_bench.histogram_bound(before, after, 0.5) == 2.5
    assert stack_bench.histogram_bound(before, after, 0.3) == 0.5


def test_histogram_bound_of_waits_beyond_every_finite_bucket():
    before = a_scrape(2, {"1.0": 2, "+Inf": 2})
    after = a_scrape(3, {"1.0": 2, "+Inf": 3})
    assert stack_bench.histogram_bound(before, after, 1.0) == float("inf")
    assert stack_bench.histogram_bound(before, after, 0.5) == float("inf")
    without_inf = {k: v for k, v in after.items() if k != "le:+Inf"}
    assert stack_bench.histogram_bound(before, without_inf, 1.0) is None


def test_histogram_bound_is_none_without_new_waits():
    scrape = a_scrape(5, {"0.1": 5, "+Inf": 5})
    assert stack_bench.histogram_bound(scrape, dict(scrape), 0.5) is None
    restarted = a_scrape(1, {"0.1": 1, "+Inf": 1})  # the worker restarted: its counters began again
    assert stack_bench.histogram_bound(scrape, restarted, 0.5) is None


def test_idle_gaps_of_no_pass_or_one_pass_are_empty():
    assert stack_bench.idle_gaps([]) == []
    assert stack_bench.idle_gaps([(3.0, 4.0)]) == []


def test_idle_gaps_follow_start_order_whatever_the_input_order():
    gaps = stack_bench.idle_gaps([(5.0, 6.0), (0.0, 1.0), (1.5, 4.0)])
    assert gaps == pytest.approx([0.5, 1.0])


def test_overlapping_and_touching_passes_leave_no_gap():
    assert stack_bench.idle_gaps([(0.0, 2.0), (1.0, 3.0), (3.0, 4.0)]) == [0.0, 0.0]


def test_a_gap_starts_when_the_longest_running_pass_ends():
    # The second pass runs inside the first: the device is busy until 10.0, not 2.0.
    gaps = stack_bench.idle_gaps([(0.0, 10.0), (1.0, 2.0), (11.0, 12.0), (12.5, 13.0)])
    assert gaps == pytest.approx([0.0, 1.0, 0.5])


def test_split_puts_a_slow_in_process_run_in_the_engine_ratio_not_in_orchestration():
    # Job 1: the worker's engine took 1.5 s of the 1.6 s wall, the in-process engine 1.5 s.
    # Job 2: same stack job, but the in-process run was slowed to 1.8 s (a busy machine).
    split = stack_bench.split_overhead([1.6, 1.6], [1.5, 1.5], [1.5, 1.8])
    assert split["orchestration_seconds"] == pytest.approx([0.1, 0.1])
    assert split["orchestration_seconds_median"] == pytest.approx(0.1)
    assert split["engine_in_stack_over_in_process"] == pytest.approx([1.0, 1.5 / 1.8], abs=1e-4)
    assert split["stack_compute_seconds"] == [1.5, 1.5]


def test_split_needs_one_worker_engine_time_per_job():
    with pytest.raises(ValueError):
        stack_bench.split_overhead([1.6, 1.6], [1.5], [1.5, 1.5])


def _serve_once(body: bytes) -> tuple[str, object]:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/metrics", server


def test_engine_seconds_sum_every_pass_kind_of_the_duration_histogram():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    durations = Histogram(
        "multipass_pass_duration_seconds", "pass wall time", ["pass_kind"], registry=registry
    )
    durations.labels(pass_kind="base").observe(1.25)
    durations.labels(pass_kind="person").observe(0.5)
    durations.labels(pass_kind="person").observe(0.25)
    url, server = _serve_once(generate_latest(registry))
    try:
        assert stack_bench.scrape_engine_seconds(url) == pytest.approx(2.0)
    finally:
        server.server_close()


def test_engine_seconds_are_unknown_without_a_metrics_endpoint():
    import socket

    assert stack_bench.scrape_engine_seconds(None) is None
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert stack_bench.scrape_engine_seconds(f"http://127.0.0.1:{port}/metrics") is None


class _Composition:
    """A composition whose start fails as often as told."""

    def __init__(self, outcomes: list[bool]):
        self.outcomes = outcomes
        self.started = False

    def start(self) -> None:
        if not self.outcomes.pop(0):
            raise control_plane.MetricUnavailable("the control-plane composition did not start: standin")
        self.started = True


def test_a_composition_that_failed_to_start_is_started_again_and_the_failure_reported():
    outcomes = [False, True]
    plane, failures = control_plane._started(lambda: _Composition(outcomes))
    assert plane.started
    assert failures == ["the control-plane composition did not start: standin"]
    assert outcomes == []


def test_starting_gives_up_after_its_attempts_with_the_last_reason():
    outcomes = [False, False, True]
    with pytest.raises(control_plane.MetricUnavailable, match="did not start"):
        control_plane._started(lambda: _Composition(outcomes), attempts=2)
    assert outcomes == [True]  # no third start
