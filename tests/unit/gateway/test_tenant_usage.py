"""Per-tenant usage counters: device seconds count diffusion passes only, and a removed tenant's series go."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from multipass.v1 import events_pb2, jobs_pb2
from multipass_gateway.app.tenant_usage import TenantUsage, device_seconds


def stamp(seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def record(tenant: str) -> events_pb2.JobRecord:
    """A finished job: a 2.5 s base on a worker, a gateway segment step, a 0.75 s person pass, one never run."""
    made = events_pb2.JobRecord(tenant=tenant)
    made.job.state = jobs_pb2.JOB_STATE_SUCCEEDED
    image = made.job.images.add()
    plan = made.plans.add()
    for name, runs_in, span in (
        ("base", "diffusion", (100.0, 102.5)),
        ("segment", "gateway", (102.5, 103.5)),
        ("person-0", "diffusion", (103.5, 104.25)),
        ("hires", "diffusion", None),
    ):
        plan.passes.add(name=name, runs_in=runs_in)
        state = image.passes.add(name=name)
        if span:
            state.started_at.CopyFrom(stamp(span[0]))
            state.finished_at.CopyFrom(stamp(span[1]))
    return made


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_device_seconds_are_the_diffusion_passes_started_to_finished():
    assert device_seconds(record("t" + "1" * 16)) == 3.25


def test_a_finished_job_counts_under_its_tenant_and_a_forgotten_tenant_leaves_no_series():
    tenant = "t" + "2" * 16
    usage = TenantUsage(enabled=True)
    usage.submitted(tenant)
    usage.finished(record(tenant))
    assert value("multipass_tenant_jobs_submitted_total", tenant=tenant) == 1
    assert value("multipass_tenant_jobs_finished_total", tenant=tenant, state="succeeded") == 1
    assert value("multipass_tenant_device_seconds_total", tenant=tenant) == 3.25
    usage.forget(tenant)
    usage.forget(tenant)  # twice: nothing left to remove is no error
    for name in ("multipass_tenant_jobs_submitted_total", "multipass_tenant_device_seconds_total"):
        assert REGISTRY.get_sample_value(name, {"tenant": tenant}) is None
    assert (
        REGISTRY.get_sample_value(
            "multipass_tenant_jobs_finished_total", {"tenant": tenant, "state": "succeeded"}
        )
        is None
    )


def test_turned_off_nothing_is_counted():
    tenant = "t" + "3" * 16
    usage = TenantUsage(enabled=False)
    usage.submitted(tenant)
    usage.finished(record(tenant))
    assert REGISTRY.get_sample_value("multipass_tenant_jobs_submitted_total", {"tenant": tenant}) is None
