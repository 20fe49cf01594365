"""k8s/monitoring/metrics.yaml agrees with the metrics the services define: each catalogued family exists
with that type and exactly those labels, and no service labels a metric with an unbounded value.

tests/k8s/test_promql.py checks every dashboard and alert expression against the catalogue, and the
end-to-end test scrapes the running services for the catalogued names; this closes the loop on the
labels without starting anything: a label renamed in code (``kind`` for ``pass_kind``) fails here.
"""

from __future__ import annotations

import importlib

import pytest
import yaml
from k8s_render import K8S
from prometheus_client import REGISTRY

CATALOGUE = yaml.safe_load((K8S / "monitoring" / "metrics.yaml").read_text())
#: The modules that define each service's metrics (multipass.metrics: the gRPC server metrics).
METRIC_MODULES = (
    "multipass.metrics",
    "multipass_gateway.infra.metrics",
    "multipass_diffusion.metrics",
    "multipass_segmentation.metrics",
    "multipass_http_api.metrics",
)
#: prometheus_client's own collectors, there in every process.
DEFAULT_COLLECTED = ("process_", "python_")
#: Labels whose values grow with use: one series per job, prompt, URL or error would never end.
UNBOUNDED_LABELS = {"job_id", "prompt", "url", "path", "key", "error", "message", "image", "seed", "tune_id"}

for module in METRIC_MODULES:
    importlib.import_module(module)


def collector_of(name: str):
    collector = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - the registry's own index
    assert collector is not None, f"{name} is catalogued but no service module defines it"
    return collector


def ours() -> list:
    seen = {}
    for name, collector in REGISTRY._names_to_collectors.items():  # noqa: SLF001
        if name.startswith(("multipass_", "grpc_server_")):
            seen[id(collector)] = collector
    return list(seen.values())


@pytest.mark.parametrize(
    "name",
    [name for name in CATALOGUE["families"] if not name.startswith(DEFAULT_COLLECTED)],
)
def test_catalogued_family_has_that_type_and_those_labels(name):
    family = CATALOGUE["families"][name]
    collector = collector_of(name)
    assert collector._type == family["type"], name  # noqa: SLF001
    assert list(collector._labelnames) == family["labels"], name  # noqa: SLF001


def test_no_metric_is_labelled_with_an_unbounded_value():
    problems = {
        collector._name: set(collector._labelnames) & UNBOUNDED_LABELS  # noqa: SLF001
        for collector in ours()
        if set(collector._labelnames) & UNBOUNDED_LABELS  # noqa: SLF001
    }
    assert not problems, problems


def test_the_check_sees_the_services_metrics():
    names = {collector._name for collector in ours()}  # noqa: SLF001
    assert {"multipass_passes", "multipass_jobs_finished", "multipass_http_requests"} <= names
