"""The bench's hop breakdown and the orchestration spread over runs."""

from __future__ import annotations

import json

from multipass.v1 import diffusion_pb2, events_pb2
from multipass_bench import hops, report


def request(job: str, name: str) -> hops.Heard:
    data = diffusion_pb2.PassRequest(job_id=job, pass_name=name).SerializeToString()
    return hops.Heard(0.0, "multipass.pass.diffusion.sd15", data)


def event(job: str, name: str, kind: str, engine: float = 0.0) -> hops.Heard:
    message = events_pb2.PassEvent(job_id=job, pass_name=name)
    if kind == "started":
        message.started.worker = "w"
    else:
        message.completed.result.duration_seconds = engine
    return hops.Heard(0.0, f"multipass.events.{job}.{kind}", message.SerializeToString())


def at(message: hops.Heard, seconds: float) -> hops.Heard:
    message.at = seconds
    return message


def test_each_hop_of_the_critical_path_gets_its_milliseconds():
    heard = [
        at(request("j1", "base"), 0.000),
        at(request("other", "base"), 0.001),  # another job's traffic is not this job's path
        at(event("j1", "base", "started"), 0.010),
        at(event("j1", "base", "completed", engine=1.0), 1.030),
        at(hops.Heard(0, "$KV.multipass-jobs.x", b""), 1.031),
        at(request("j1", "person-0"), 1.036),
        at(event("j1", "person-0", "started"), 1.044),
        at(event("j1", "person-0", "completed", engine=0.3), 1.364),
    ]
    found = hops.job_hops(heard, "j1")
    base, person = found["passes"]
    assert base == {
        "pass": "base",
        "pickup_ms": 10.0,
        "run_ms": 1020.0,
        "engine_ms": 1000.0,
        "run_overhead_ms": 20.0,
    }
    assert person["dispatch_ms"] == 6.0 and person["pickup_ms"] == 8.0 and person["run_overhead_ms"] == 20.0
    assert found["messages"]["kv_write"] == 1 and found["messages"]["pass_request"] == 3
    summary = hops.summarise([found, found])
    assert summary["totals_ms"] == {"dispatch_ms": 6.0, "pickup_ms": 18.0, "run_overhead_ms": 40.0}


def test_spread_is_max_over_min_of_the_last_five_runs(tmp_path):
    history = tmp_path / report.HISTORY_FILE
    first = report.overhead_spread(history, 1.02)
    assert first["orchestration_overhead_spread"] is None  # one run has no spread
    for value in (1.03, 1.01, 1.50, 1.02, 1.04):
        found = report.overhead_spread(history, value)
    assert found["orchestration_overhead_history"]["runs"] == [1.03, 1.01, 1.5, 1.02, 1.04]
    assert found["orchestration_overhead_spread"] == round(1.5 / 1.01, 4)
    assert found["orchestration_overhead_history"]["met"] is False
    assert len(history.read_text().splitlines()) == 6
    assert all(
        "orchestration_overhead_ratio" in json.loads(line) for line in history.read_text().splitlines()
    )
    unmeasured = report.overhead_spread(history, None)  # a run that could not measure adds nothing
    assert (
        len(history.read_text().splitlines()) == 6 and unmeasured["orchestration_overhead_spread"] is not None
    )
