"""The gateway's "job finished" line names the job's tenant, and for a job that did not succeed its
error code and failing pass (never its message, which may quote a client's URL), so one job can be
followed from the gateway's log to the diffusion workers' and an on-call can filter by tenant."""

from __future__ import annotations

import json
import logging

from prometheus_client import REGISTRY

from multipass.logs import JsonFormatter
from multipass.v1 import common_pb2, events_pb2, jobs_pb2
from multipass_gateway.app.job_end import JobEnd
from multipass_gateway.settings import GatewaySettings


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter("gateway"))
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


class Quiet:
    """Stands in for the scheduler and the budget: their clean-up does nothing here."""

    async def withdraw(self, *args, **kwargs) -> None:
        return None

    async def remove(self, *args, **kwargs) -> None:
        return None


def quiet_job_end() -> JobEnd:
    """A JobEnd with nothing behind it: no store, bucket, scheduler or budget work, no callbacks."""
    return JobEnd(
        jobs=None,
        jobs_kv=None,
        budget=Quiet(),
        scheduler=Quiet(),
        http=None,
        settings=GatewaySettings(),
        public_view=None,
    )


def failed_job(tenant: str) -> events_pb2.JobRecord:
    record = events_pb2.JobRecord(tenant=tenant)
    record.job.job_id = "01a2b3c4d5e6f7a8b9c0d1e2"
    record.job.state = jobs_pb2.JOB_STATE_FAILED
    record.job.error.CopyFrom(
        common_pb2.ErrorDetail(
            code=common_pb2.ERROR_CODE_FAILED_PRECONDITION,
            message="could not fetch https://example.org/in.png?token=s3cret",
            pass_name="person-0",
        )
    )
    return record


async def test_the_job_finished_line_names_tenant_code_and_pass():
    job_end = quiet_job_end()
    handler = Lines()
    logger = logging.getLogger("multipass_gateway.app.job_end")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await job_end.finished(failed_job("t" + "4" * 16), count=False)
    finally:
        logger.removeHandler(handler)
    (line,) = [line for line in handler.lines if line["message"] == "job finished"]
    assert line["job_id"] == "01a2b3c4d5e6f7a8b9c0d1e2"
    assert line["tenant"] == "t" + "4" * 16
    assert line["state"] == "failed"
    assert line["error_code"] == "FAILED_PRECONDITION"
    assert line["failed_pass"] == "person-0"
    assert "s3cret" not in json.dumps(line)


async def test_a_failed_job_is_counted_by_its_error_code_and_the_kind_of_pass_that_failed():
    """``multipass_jobs_failed_total{code, pass_kind}``: why jobs fail, with one series per pass kind."""
    job_end = quiet_job_end()
    labels = {"code": "failed_precondition", "pass_kind": "person"}
    before = REGISTRY.get_sample_value("multipass_jobs_failed_total", labels) or 0.0
    await job_end.finished(failed_job("t" + "5" * 16))
    assert REGISTRY.get_sample_value("multipass_jobs_failed_total", labels) == before + 1


def test_callback_outcomes_are_exported_before_the_first_callback():
    """At 0 from the start, so the first failed callback is an increase Prometheus sees (a series that
    appears at 1 has no rate)."""
    for outcome in ("delivered", "retried", "failed"):
        assert REGISTRY.get_sample_value("multipass_callbacks_total", {"outcome": outcome}) is not None
