"""Structural checks of the custom resources kubernetes-validate cannot check: the KEDA ScaledObject,
the ServiceMonitors, the PrometheusRule, and the Grafana dashboard ConfigMap."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from k8s_manifests import (
    ALL_SERVICES,
    NAMESPACE,
    env_of,
    main_container,
    name_of,
    of_kind,
    one,
    selects,
)
from k8s_render import K8S

DURATION = re.compile(r"^\d+[smh]$")
METRICS = yaml.safe_load((K8S / "monitoring" / "metrics.yaml").read_text())


# --- KEDA ---------------------------------------------------------------------------------------


def test_diffusion_scales_on_the_lag_of_each_model_consumer(prod):
    scaled = one(prod, "ScaledObject", "diffusion")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "diffusion")
    deployment = one(prod, "Deployment", "diffusion")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"

    models = env_of(main_container(deployment), prod)["MULTIPASS_DIFFUSION_MODELS"].split(",")
    consumers = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "nats-jetstream"
        metadata = trigger["metadata"]
        assert set(metadata) >= {
            "natsServerMonitoringEndpoint",
            "account",
            "stream",
            "consumer",
            "lagThreshold",
        }
        assert all(isinstance(value, str) for value in metadata.values()), (
            "trigger metadata values are strings"
        )
        assert metadata["account"] == "$G"
        assert metadata["stream"] == "MULTIPASS_PASSES"
        assert int(metadata["lagThreshold"]) >= 1
        assert int(metadata.get("activationLagThreshold", "0")) >= 0
        assert metadata.get("useHttps", "false") == "false"
        consumers.add(metadata["consumer"])
    assert consumers == {f"diffusion-{model.strip()}" for model in models}


def test_keda_reaches_the_nats_monitoring_port_across_namespaces(prod):
    service = one(prod, "Service", "nats")
    monitor_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "monitor")
    for trigger in one(prod, "ScaledObject", "diffusion")["spec"]["triggers"]:
        host, port = trigger["metadata"]["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host == f"nats.{NAMESPACE}.svc.cluster.local", "KEDA runs in its own namespace"
        assert int(port) == monitor_port == 8222


def test_scaling_bounds(prod):
    spec = one(prod, "ScaledObject", "diffusion")["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] >= 300
    assert spec["fallback"]["replicas"] >= 1
    base = yaml.safe_load_all((K8S / "base" / "diffusion.yaml").read_text())
    (base_scaled,) = [doc for doc in base if doc["kind"] == "ScaledObject"]
    assert base_scaled["spec"]["minReplicaCount"] == 0, "the base scales GPU workers to zero"
    # A worker must answer Diffusion.Info once before the gateways can accept jobs with none running.
    assert base_scaled["spec"]["initialCooldownPeriod"] >= 900


# --- ServiceMonitors ------------------------------------------------------------------------------


def test_one_service_monitor_per_service(prod):
    monitors = {m["metadata"]["name"]: m for m in of_kind(prod, "ServiceMonitor")}
    assert set(monitors) == set(ALL_SERVICES)
    services = of_kind(prod, "Service")
    for name, monitor in monitors.items():
        spec = monitor["spec"]
        assert NAMESPACE in spec["namespaceSelector"]["matchNames"]
        matching = [s for s in services if selects(spec["selector"], s["metadata"].get("labels", {}))]
        assert [s["metadata"]["name"] for s in matching] == [name], f"{name_of(monitor)} selects {matching}"
        port_names = {p["name"] for p in matching[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert DURATION.match(endpoint["interval"])
        job = matching[0]["metadata"]["labels"][spec["jobLabel"]]
        assert job == name and job in METRICS["jobs"]


# --- PrometheusRule -------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "MultipassPassFailureRatioHigh",
    "MultipassQueueLagGrowingWithoutScaleUp",
    "MultipassGPUWorkerDown",
    "MultipassJobLatencyP95High",
}


def alert_rules(resources: list[dict]) -> list[dict]:
    rules = []
    for rule_set in of_kind(resources, "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            assert group["name"] and group["rules"]
            rules.extend(group["rules"])
    return rules


def test_alert_rules_are_complete(prod):
    rules = alert_rules(prod)
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip()
        assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])


def test_annotations_use_only_labels_the_expression_keeps(prod):
    """The result keeps the labels of the leftmost aggregation (or, without one, the selector's)."""
    for rule in alert_rules(prod):
        used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        grouping = re.search(r"by \(([^)]*)\)", rule["expr"])
        if grouping:
            kept = {label.strip() for label in grouping.group(1).split(",")}
        else:
            kept = set(re.findall(r"(\w+)=", rule["expr"])) | set(METRICS["scrape_labels"])
        assert used <= kept, f"{rule['alert']}: {used - kept} not in the result"


# --- Grafana dashboard ----------------------------------------------------------------------------


def dashboard(resources: list[dict]) -> dict:
    config_map = one(resources, "ConfigMap", "multipass-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    return json.loads(content)


def test_dashboard_is_a_sidecar_config_map_in_prod_only(dev, prod):
    assert not [c for c in of_kind(dev, "ConfigMap") if c["metadata"]["name"] == "multipass-dashboard"]
    board = dashboard(prod)
    assert board["uid"] == "multipass-overview"
    assert board["title"]


def test_dashboard_panels_are_well_formed(prod):
    board = dashboard(prod)
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        assert all(t["expr"].strip() for t in panel["targets"])


@pytest.mark.parametrize(
    "topic, pattern",
    [
        ("throughput", r"rate\(multipass_jobs_submitted_total"),
        ("latency percentiles per pass kind", r"histogram_quantile\(0\.95, sum by \(pass_kind, le\)"),
        ("queue lag", r"multipass_queue_pending_passes"),
        ("failures by reason", r"sum by \(pass_kind, outcome\) \(rate\(multipass_passes_total\{outcome!="),
        ("LoRA cache hit ratio", r"multipass_lora_cache_hits_total.*/.*multipass_lora_cache_misses_total"),
        ("GPU memory", r"multipass_gpu_memory_bytes"),
        ("gRPC error rates", r"grpc_server_handled_total\{grpc_code!=\"OK\""),
    ],
)
def test_dashboard_covers(prod, topic, pattern):
    expressions = [t["expr"] for p in dashboard(prod)["panels"] for t in p.get("targets", [])]
    assert any(re.search(pattern, e) for e in expressions), f"no panel shows {topic}"


def test_grpc_handling_time_panels_leave_streams_out(prod):
    """A WatchJob stream lasts as long as its job (minutes): counted with the unary calls it swamps their
    mean and p95, and it overflows the RPC buckets (1 ms to 60 s)."""
    for panel in dashboard(prod)["panels"]:
        for target in panel.get("targets", []):
            if "grpc_server_handling_seconds" in target["expr"]:
                selectors = re.findall(r"grpc_server_handling_seconds_\w+\{([^}]*)\}", target["expr"])
                assert selectors and all('grpc_type="unary"' in s for s in selectors), panel["title"]
