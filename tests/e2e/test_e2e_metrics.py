"""The metric families the dashboards and alerts rely on are really exported by the running services.

``k8s/monitoring/metrics.yaml`` lists every family the PromQL in ``k8s/monitoring`` uses (tests/k8s checks
each expression against it) and which service exports it. Here the local stack's processes are scraped
after a job ran, and each family must appear in the /metrics of every service said to export it.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from e2e_support import FAST, follow
from prometheus_client.parser import text_string_to_metric_families

from multipass.v1 import jobs_pb2

pytestmark = pytest.mark.e2e

CATALOGUE = Path(__file__).resolve().parents[2] / "k8s" / "monitoring" / "metrics.yaml"


def scrape(url: str) -> set[str]:
    """The metric family names (counters without ``_total``, as the parser gives them) at ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL from our stack
        text = response.read().decode()
    return {family.name for family in text_string_to_metric_families(text)}


def family_base(name: str, kind: str) -> str:
    return name.removesuffix("_total") if kind == "counter" else name


def test_every_catalogued_family_is_exported_by_the_services_that_claim_it(stack):
    families = yaml.safe_load(CATALOGUE.read_text())["families"]
    processes = stack.state["processes"]
    exported = {
        name: scrape(info["metrics_url"]) for name, info in processes.items() if info.get("metrics_url")
    }
    assert set(exported) >= {"gateway", "prompt-parser", "segmentation", "diffusion"}, exported.keys()
    missing = []
    for name, spec in families.items():
        for service in spec["exported_by"]:
            if family_base(name, spec["type"]) not in exported[service]:
                missing.append(f"{name} (claimed for {service})")
    assert not missing, "families the dashboards use but the services do not export: " + ", ".join(missing)


def tenant_samples(url: str, tenant: str) -> dict[tuple[str, str], float]:
    """(sample name, state label) -> value of the per-tenant usage samples of ``tenant`` at ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URL from our stack
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("state", "")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("multipass_tenant_")
        for sample in family.samples
        if sample.labels.get("tenant") == tenant and sample.name.endswith("_total")
    }


def test_a_tenants_jobs_and_device_seconds_are_counted_under_its_id(stack, client):
    url = stack.state["processes"]["gateway"]["metrics_url"]
    tenant = stack.state["tenant"]
    before = tenant_samples(url, tenant)
    job, _ = follow(client, client.jobs.submit("a red kite over a beach", FAST).job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    # The replica that ends the job counts it just after publishing the end the client saw.
    deadline = time.monotonic() + 10
    while True:
        after = tenant_samples(url, tenant)
        finished = ("multipass_tenant_jobs_finished_total", "succeeded")
        if after.get(finished, 0.0) > before.get(finished, 0.0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    def grew(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew(("multipass_tenant_jobs_submitted_total", "")) == 1
    assert grew(("multipass_tenant_jobs_finished_total", "succeeded")) == 1
    passes = [p for image in job.images for p in image.passes]
    ran = sum(
        (p.finished_at.ToNanoseconds() - p.started_at.ToNanoseconds()) / 1e9
        for p in passes
        if p.HasField("started_at") and p.HasField("finished_at")
    )
    assert 0 < grew(("multipass_tenant_device_seconds_total", "")) <= ran + 1e-6
