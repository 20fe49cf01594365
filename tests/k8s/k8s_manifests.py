"""Small queries over rendered Kubernetes resources (lists of dicts from ``kubectl kustomize``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

NAMESPACE = "multipass"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
#: Custom resources: kubernetes-validate has no schema for them, so tests check them structurally.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: service -> (python package, gRPC port, metrics port), from docs/CONTRACTS.md
SERVICES = {
    "gateway": ("multipass_gateway", 50050, 9100),
    "prompt-parser": ("multipass_prompt_parser", 50051, 9101),
    "segmentation": ("multipass_segmentation", 50052, 9102),
    "diffusion": ("multipass_diffusion", 50053, 9103),
}
#: HTTP services -> (python package, HTTP port, metrics port)
HTTP_SERVICES = {"http-api": ("multipass_http_api", 8080, 9105)}
#: Every Multipass service with its own Deployment, Service and ServiceMonitor.
ALL_SERVICES = {**SERVICES, **HTTP_SERVICES}
_HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")


def of_kind(resources: list[dict], kind: str) -> list[dict]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[dict], kind: str, name: str) -> dict:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def name_of(resource: dict) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def generated_base_name(name: str) -> str:
    """``nats-users-mtcmc6484m`` -> ``nats-users`` (kustomize generator hash suffix removed)."""
    return _HASH_SUFFIX.sub("", name)


def workloads(resources: list[dict]) -> list[dict]:
    return [r for r in resources if r["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: dict, *, init: bool = True) -> Iterator[dict]:
    spec = pod_spec(workload)
    if init:
        yield from spec.get("initContainers", [])
    yield from spec["containers"]


def main_container(workload: dict) -> dict:
    spec = pod_spec(workload)
    assert len(spec["containers"]) == 1, f"{name_of(workload)} should run one container"
    return spec["containers"][0]


def selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions); ``{}`` selects everything."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def service_selects(service: dict, labels: dict) -> bool:
    """A Service's selector is a plain label map."""
    selector = service["spec"].get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(container: dict, resources: list[dict]) -> dict[str, str | None]:
    """A container's environment: envFrom ConfigMaps, then env; Secret-backed values are ``None``."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def container_ports(workload: dict) -> dict[str, int]:
    """Named container ports of a pod: name -> number."""
    ports = {}
    for container in containers(workload):
        for port in container.get("ports", []):
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports
