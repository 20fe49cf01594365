"""Per-tenant usage for dashboards and billing: jobs submitted and finished, and the device seconds of
their passes, as Prometheus counters labelled with the tenant id.

Device seconds are the wall seconds, started to finished as the workers reported them, of every pass that
ran on a diffusion worker (cache hits count the little they took; the gateway's own segmentation steps do
not count). A job's seconds are added once, by the replica that ends it, so the counters summed over
replicas are exact. One series per tenant (and state), so ``MULTIPASS_GATEWAY_TENANT_METRICS=false``
turns them off where tenants are counted in the tens of thousands; a removed tenant's series go with it.
"""

from __future__ import annotations

import contextlib

from multipass.v1 import events_pb2, jobs_pb2
from multipass_gateway.infra import metrics

#: Every job state's label value (for removing a tenant's series).
_STATES = tuple(v.name.removeprefix("JOB_STATE_").lower() for v in jobs_pb2.JobState.DESCRIPTOR.values)


def device_seconds(record: events_pb2.JobRecord) -> float:
    """Seconds the job's passes ran on diffusion workers (started to finished, as recorded)."""
    total = 0.0
    for image, plan in zip(record.job.images, record.plans, strict=False):
        for state, planned in zip(image.passes, plan.passes, strict=False):
            if planned.runs_in != "diffusion":
                continue
            if not (state.HasField("started_at") and state.HasField("finished_at")):
                continue
            seconds = (state.finished_at.ToNanoseconds() - state.started_at.ToNanoseconds()) / 1e9
            total += max(0.0, seconds)
    return total


class TenantUsage:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def submitted(self, tenant: str) -> None:
        if self.enabled:
            metrics.TENANT_JOBS_SUBMITTED.labels(tenant=tenant).inc()

    def finished(self, record: events_pb2.JobRecord) -> None:
        if not self.enabled:
            return
        state = jobs_pb2.JobState.Name(record.job.state).removeprefix("JOB_STATE_").lower()
        metrics.TENANT_JOBS_FINISHED.labels(tenant=record.tenant, state=state).inc()
        metrics.TENANT_DEVICE_SECONDS.labels(tenant=record.tenant).inc(device_seconds(record))

    def forget(self, tenant: str) -> None:
        """Drop a removed tenant's series from this replica's /metrics."""
        for counter, labels in (
            (metrics.TENANT_JOBS_SUBMITTED, [(tenant,)]),
            (metrics.TENANT_DEVICE_SECONDS, [(tenant,)]),
            (metrics.TENANT_JOBS_FINISHED, [(tenant, state) for state in _STATES]),
        ):
            for values in labels:
                with contextlib.suppress(KeyError):  # never counted here
                    counter.remove(*values)
