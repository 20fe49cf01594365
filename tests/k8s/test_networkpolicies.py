"""The NetworkPolicies, evaluated: every connection the configuration makes is allowed, nothing else is.

A small evaluator of Kubernetes NetworkPolicy semantics (pod and namespace selectors, ipBlocks, named
ports, the union of all policies selecting a pod) runs over the rendered manifests. The connections
that must work are read from the workloads' own configuration (gRPC targets, NATS URLs, the S3
endpoint, the MinIO setup host), so a changed port or host fails here before it fails in a cluster.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest
from k8s_manifests import (
    NAMESPACE,
    SERVICES,
    container_ports,
    containers,
    env_of,
    of_kind,
    pod_labels,
    selects,
    service_selects,
    workloads,
)


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: outside the cluster
    labels: dict = field(default_factory=dict, hash=False)
    ports: dict = field(default_factory=dict, hash=False)  # named container ports
    ip: str = "10.1.2.3"


INTERNET = Endpoint("internet", None, ip="203.0.113.10")
PRIVATE_HOST = Endpoint("private host", None, ip="10.20.30.40")
METADATA_SERVICE = Endpoint("cloud metadata", None, ip="169.254.169.254")
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA = Endpoint("keda-operator", "keda", {"app": "keda-operator"})
OTHER_POD = Endpoint("a pod of another app", "default", {"app": "other"})
INGRESS_CONTROLLER = Endpoint(
    "ingress-nginx controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
)
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
NAMESPACE_LABELS = {
    ns: {"kubernetes.io/metadata.name": ns}
    for ns in (NAMESPACE, "monitoring", "keda", "default", "kube-system", "ingress-nginx")
}


def _port_matches(rule_ports: list[dict] | None, port: int, protocol: str, destination: Endpoint) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = destination.ports.get(wanted)
        end = entry.get("endPort", wanted)
        if wanted is not None and wanted <= port <= end:
            return True
    return False


def _peer_matches(peer: dict, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.namespace is not None:
            return False  # pod traffic is matched by selectors, not by the cluster's own pod IPs
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], NAMESPACE_LABELS[other.namespace])
    else:
        namespace_ok = other.namespace == policy_namespace
    pod_ok = "podSelector" not in peer or selects(peer["podSelector"], other.labels)
    return namespace_ok and pod_ok


def _direction_allows(policies, subject, other, port, protocol, destination, direction) -> bool:
    policy_type, rules_key, peers_key = {
        "egress": ("Egress", "egress", "to"),
        "ingress": ("Ingress", "ingress", "from"),
    }[direction]
    if subject.namespace != NAMESPACE:
        return True  # only this namespace's policies are rendered; the others are not ours to judge
    applying = [
        p
        for p in policies
        if selects(p["spec"]["podSelector"], subject.labels) and policy_type in p["spec"]["policyTypes"]
    ]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peers_ok = not peers or any(_peer_matches(peer, NAMESPACE, other) for peer in peers)
            if peers_ok and _port_matches(rule.get("ports"), port, protocol, destination):
                return True
    return False


def allowed(
    policies: list[dict], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    return _direction_allows(policies, source, destination, port, protocol, destination, "egress") and (
        _direction_allows(policies, destination, source, port, protocol, destination, "ingress")
    )


def pods(resources: list[dict]) -> dict[str, Endpoint]:
    return {
        w["metadata"]["name"]: Endpoint(w["metadata"]["name"], NAMESPACE, pod_labels(w), container_ports(w))
        for w in workloads(resources)
    }


def _resolve(resources: list[dict], host: str, port: int) -> tuple[str, int]:
    """A Service host and port -> (workload name, container port)."""
    service = next(s for s in of_kind(resources, "Service") if s["metadata"]["name"] == host)
    spec_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
    workload = next(w for w in workloads(resources) if service_selects(service, pod_labels(w)))
    return workload["metadata"]["name"], container_ports(workload)[spec_port["targetPort"]]


#: Addresses a workload configures for another one to call: variable -> the calling workload.
CALLED_BY = {"MULTIPASS_HTTP_CALLBACK_RELAY_URL": "gateway"}


def configured_connections(resources: list[dict]) -> set[tuple[str, str, int]]:
    """(source workload, destination workload, container port) for every address in the configuration."""
    connections = set()
    for workload in workloads(resources):
        for container in containers(workload):
            for name, value in env_of(container, resources).items():
                if value is None:
                    continue
                source = CALLED_BY.get(name, workload["metadata"]["name"])
                if name.endswith("_TARGET") or name == "MULTIPASS_S3_ENDPOINT":
                    host, port = value.rsplit(":", 1)
                elif name in ("MULTIPASS_NATS_URL", "MC_HOST_local", *CALLED_BY):
                    parsed = urlparse(value.replace("$(", "").replace(")", ""))
                    host, port = parsed.hostname, parsed.port or {"https": 443}.get(parsed.scheme, 80)
                else:
                    continue
                connections.add((source, *_resolve(resources, host, int(port))))
    return connections


def test_there_is_a_default_deny_for_both_directions(resources):
    policies = of_kind(resources, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_every_workload_has_its_own_policy(resources):
    policies = of_kind(resources, "NetworkPolicy")
    for name, pod in pods(resources).items():
        own = [
            p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod.labels)
        ]
        assert any(p["metadata"]["name"] == name for p in own), f"{name} has no policy of its own"


def test_the_configured_connections_are_found(resources):
    """The evaluator below is fed with what the manifests configure, not with a hand-made list."""
    connections = configured_connections(resources)
    assert ("gateway", "prompt-parser", 50051) in connections
    assert ("gateway", "nats", 4222) in connections
    assert ("diffusion", "minio", 9000) in connections
    assert ("minio-setup", "minio", 9000) in connections
    assert ("http-api", "gateway", 50050) in connections
    assert ("gateway", "http-api", 8080) in connections  # the relay of Astria's prompt callbacks


def test_every_configured_connection_is_allowed(resources):
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    for source, destination, port in configured_connections(resources):
        assert allowed(policies, endpoints[source], endpoints[destination], port), (
            f"{source} -> {destination}:{port}"
        )


def test_every_pod_resolves_names(resources):
    policies = of_kind(resources, "NetworkPolicy")
    for pod in pods(resources).values():
        assert allowed(policies, pod, KUBE_DNS, 53, "UDP"), pod.name
        assert allowed(policies, pod, KUBE_DNS, 53, "TCP"), pod.name


def test_only_the_gateway_is_reachable_from_outside(resources):
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    assert allowed(policies, INTERNET, endpoints["gateway"], 50050)
    assert allowed(policies, OTHER_POD, endpoints["gateway"], 50050)
    for name, pod in endpoints.items():
        for port_name, port in pod.ports.items():
            if (name, port_name) == ("gateway", "grpc"):
                continue
            assert not allowed(policies, INTERNET, pod, port), f"internet -> {name}:{port}"
            assert not allowed(policies, OTHER_POD, pod, port), f"another namespace -> {name}:{port}"


def test_services_reach_nats_and_minio_only(resources):
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    allowed_destinations = {
        "prompt-parser": set(),
        "segmentation": {"minio"},
        "diffusion": {"nats", "minio"},
        "gateway": {"prompt-parser", "segmentation", "diffusion", "nats", "minio", "http-api"},
        "http-api": {"gateway", "minio"},
        "minio-setup": {"minio"},
        "minio": set(),
        "nats": {"nats"},
    }
    assert set(allowed_destinations) == set(endpoints)
    for source, permitted in allowed_destinations.items():
        for destination, pod in endpoints.items():
            reachable = any(allowed(policies, endpoints[source], pod, port) for port in pod.ports.values())
            assert reachable == (destination in permitted), f"{source} -> {destination}"
        if source not in CALLBACK_SENDERS:
            assert not allowed(policies, endpoints[source], INTERNET, 443), f"{source} -> internet"


def test_the_http_api_is_reached_from_the_ingress_controller_only(resources):
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    http_api = endpoints["http-api"]
    assert allowed(policies, INGRESS_CONTROLLER, http_api, http_api.ports["http"])
    assert not allowed(policies, INGRESS_CONTROLLER, http_api, http_api.ports["metrics"])
    for name, pod in endpoints.items():
        if name not in ("http-api", "gateway"):  # the gateway's gRPC port is public
            assert not any(allowed(policies, INGRESS_CONTROLLER, pod, port) for port in pod.ports.values()), (
                name
            )


def test_only_the_gateway_reaches_the_http_api_inside_the_namespace_on_its_http_port(resources):
    """The gateway POSTs finished jobs to the HTTP service's relay of Astria's prompt callbacks."""
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    http_api = endpoints["http-api"]
    assert allowed(policies, endpoints["gateway"], http_api, http_api.ports["http"])
    assert not allowed(policies, endpoints["gateway"], http_api, http_api.ports["metrics"])
    for name, pod in endpoints.items():
        if name != "gateway":
            assert not allowed(policies, pod, http_api, http_api.ports["http"]), f"{name} -> http-api"


#: Workloads that send callbacks to users' URLs: the gateway's job callbacks, the HTTP service's
#: prompt callbacks.
CALLBACK_SENDERS = ("gateway", "http-api")


@pytest.mark.parametrize("sender", CALLBACK_SENDERS)
def test_callback_senders_reach_public_urls_but_not_private_addresses(resources, sender):
    policies = of_kind(resources, "NetworkPolicy")
    pod = pods(resources)[sender]
    assert allowed(policies, pod, INTERNET, 443)
    assert allowed(policies, pod, INTERNET, 80)
    assert not allowed(policies, pod, INTERNET, 22)
    assert not allowed(policies, pod, PRIVATE_HOST, 443)
    assert not allowed(policies, pod, METADATA_SERVICE, 80)


@pytest.mark.parametrize("service", list(SERVICES))
def test_prometheus_scrapes_metrics_ports_only(resources, service):
    policies = of_kind(resources, "NetworkPolicy")
    pod = pods(resources)[service]
    assert allowed(policies, PROMETHEUS, pod, pod.ports["metrics"])
    if service != "gateway":
        assert not allowed(policies, PROMETHEUS, pod, pod.ports["grpc"])


def test_keda_reads_nats_monitoring_only(resources):
    policies = of_kind(resources, "NetworkPolicy")
    endpoints = pods(resources)
    assert allowed(policies, KEDA, endpoints["nats"], 8222)
    assert not allowed(policies, KEDA, endpoints["nats"], 4222)
    assert not allowed(policies, KEDA, endpoints["diffusion"], 50053)


def test_nats_servers_route_to_each_other(resources):
    policies = of_kind(resources, "NetworkPolicy")
    nats = pods(resources)["nats"]
    assert allowed(policies, nats, nats, 6222)
    assert not allowed(policies, pods(resources)["gateway"], nats, 6222)


def test_the_evaluator_denies_what_no_policy_allows():
    """A self-check of the evaluator on a hand-made case."""
    policies = [
        {"spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {
            "spec": {
                "podSelector": {"matchLabels": {"app": "b"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "http"}]}
                ],
            }
        },
        {
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
            }
        },
    ]
    a = Endpoint("a", NAMESPACE, {"app": "a"})
    b = Endpoint("b", NAMESPACE, {"app": "b"}, {"http": 8080})
    assert allowed(policies, a, b, 8080)
    assert not allowed(policies, a, b, 8081)
    assert not allowed(policies, b, a, 8080)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", INTERNET.ip)
