"""Invariants of the Deployments, StatefulSets and Jobs of both overlays."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
from k8s_manifests import (
    ALL_SERVICES,
    SERVICES,
    container_ports,
    containers,
    env_of,
    generated_base_name,
    main_container,
    name_of,
    of_kind,
    one,
    pod_labels,
    pod_spec,
    selects,
    service_selects,
    workloads,
)
from k8s_render import ROOT

from multipass.model_sync import command as model_sync_command
from multipass.ssrf import AddressPolicy
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.settings import GatewaySettings
from multipass_http_api.astria.callbacks import RELAY_PATH, relay_url
from multipass_http_api.settings import HttpApiSettings

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OWN_IMAGES = {f"multipass-{name}" for name in SERVICES}


def _image_parts(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"image {image!r} has no tag"
    return name, tag


def test_every_image_is_pinned_and_never_latest(resources):
    for workload in workloads(resources):
        for container in containers(workload):
            name, tag = _image_parts(container["image"])
            assert tag != "latest", f"{name_of(workload)}/{container['name']}"
            assert "@" not in name


def test_own_images_carry_the_project_version(overlay, resources):
    expected = {"dev": f"{VERSION}-cpu", "prod": f"{VERSION}-cuda"}[overlay]
    for workload in workloads(resources):
        for container in containers(workload):
            name, tag = _image_parts(container["image"])
            if name == "multipass-diffusion":
                assert tag == expected
            elif name in OWN_IMAGES:
                assert tag == VERSION


def test_each_service_runs_its_package_on_its_contract_ports(resources):
    for service, (package, grpc_port, metrics_port) in SERVICES.items():
        deployment = one(resources, "Deployment", service)
        container = main_container(deployment)
        assert container["image"].startswith(f"multipass-{service}:")
        assert container["command"] == ["python", "-m", package]
        assert container_ports(deployment) == {"grpc": grpc_port, "metrics": metrics_port}
        env = env_of(container, resources)
        prefix = "PARSER" if service == "prompt-parser" else service.upper()
        assert env[f"MULTIPASS_{prefix}_GRPC_ADDR"] == f"0.0.0.0:{grpc_port}"
        assert env[f"MULTIPASS_{prefix}_METRICS_PORT"] == str(metrics_port)


def test_resources_are_set_on_every_container(resources):
    for workload in workloads(resources):
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            limits = container.get("resources", {}).get("limits", {})
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), where
            assert {"cpu", "memory"} <= set(limits), where


def test_every_long_running_container_has_probes(resources):
    for workload in workloads(resources):
        if workload["kind"] == "Job":
            continue
        for container in pod_spec(workload)["containers"]:
            where = f"{name_of(workload)}/{container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{where} lacks {probe}"


def test_services_are_ready_on_grpc_health(resources):
    for service, (_, grpc_port, _) in SERVICES.items():
        container = main_container(one(resources, "Deployment", service))
        assert container["readinessProbe"]["grpc"]["port"] == grpc_port
        assert container["startupProbe"]["grpc"]["port"] == grpc_port
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 1


def test_pods_are_hardened(resources):
    for workload in workloads(resources):
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name_of(workload)
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name_of(workload)
        assert spec["automountServiceAccountToken"] is False, name_of(workload)
        assert "hostNetwork" not in spec and "hostPID" not in spec
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name_of(workload)
        for container in containers(workload):
            where = f"{name_of(workload)}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            assert context.get("privileged", False) is False, where


def test_every_mounted_volume_exists_and_tmp_is_writable(resources):
    for workload in workloads(resources):
        volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in containers(workload):
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            assert set(mounts) <= volumes, f"{name_of(workload)}/{container['name']}"


def test_service_accounts_exist_and_do_not_mount_tokens(resources):
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(resources, "ServiceAccount")}
    for workload in workloads(resources):
        account = pod_spec(workload)["serviceAccountName"]
        assert account in accounts, name_of(workload)
        assert accounts[account]["automountServiceAccountToken"] is False
    for service in SERVICES:
        assert pod_spec(one(resources, "Deployment", service))["serviceAccountName"] == service


def test_env_references_are_defined_before_use(resources):
    for workload in workloads(resources):
        for container in containers(workload):
            defined = set()
            for source in container.get("envFrom", []):
                defined |= set(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
            for item in container.get("env", []):
                for reference in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")):
                    assert reference in defined, f"{name_of(workload)}/{container['name']}: $({reference})"
                defined.add(item["name"])


def _secret_refs(resources: list[dict]) -> set[tuple[str, str]]:
    refs = set()
    for workload in workloads(resources):
        for container in containers(workload):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            assert not any("secretRef" in source for source in container.get("envFrom", []))
    return refs


def test_dev_secret_references_resolve_to_generated_secrets(dev):
    secrets = {s["metadata"]["name"]: s for s in of_kind(dev, "Secret")}
    for name, key in _secret_refs(dev):
        assert name in secrets, f"Secret {name} is not rendered"
        assert key in secrets[name]["data"], f"Secret {name} has no key {key}"
    for workload in workloads(dev):
        for container in containers(workload):
            for source in container.get("envFrom", []):
                assert one(dev, "ConfigMap", source["configMapRef"]["name"])


def test_prod_keeps_no_credentials_and_needs_the_secrets_dev_generates(dev, prod):
    assert of_kind(prod, "Secret") == []
    dev_keys = {
        (generated_base_name(s["metadata"]["name"]), key) for s in of_kind(dev, "Secret") for key in s["data"]
    }
    assert _secret_refs(prod) == dev_keys


def test_prod_secrets_are_documented_with_their_keys(prod):
    doc = re.sub(r"\\\n\s*", " ", (ROOT / "docs" / "KUBERNETES.md").read_text())  # join continued lines
    for name, key in _secret_refs(prod):
        assert re.search(rf"secret generic {re.escape(name)}\b[^\n]*--from-literal={re.escape(key)}=", doc), (
            f"docs/KUBERNETES.md does not show how to create Secret {name} with key {key}"
        )


def test_service_selectors_match_pods_and_target_named_ports(resources):
    for service in of_kind(resources, "Service"):
        matching = [w for w in workloads(resources) if service_selects(service, pod_labels(w))]
        assert len(matching) == 1, f"{name_of(service)} selects {len(matching)} workloads"
        ports = container_ports(matching[0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{name_of(service)} port {port['name']}"
            assert ports[port["targetPort"]] == port["port"], f"{name_of(service)} port {port['name']}"


def test_each_service_has_a_service_with_grpc_and_metrics_ports(resources):
    for service, (_, grpc_port, metrics_port) in SERVICES.items():
        ports = {p["name"]: p["port"] for p in one(resources, "Service", service)["spec"]["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": metrics_port}


def test_workload_selectors_match_their_own_templates(resources):
    for workload in workloads(resources):
        if workload["kind"] == "Job":
            continue
        assert selects(workload["spec"]["selector"], pod_labels(workload)), name_of(workload)


def test_pod_disruption_budgets_match_exactly_one_workload(resources):
    budgets = of_kind(resources, "PodDisruptionBudget")
    covered = set()
    for budget in budgets:
        matching = [w for w in workloads(resources) if selects(budget["spec"]["selector"], pod_labels(w))]
        assert len(matching) == 1, f"{name_of(budget)} selects {len(matching)} workloads"
        assert matching[0]["kind"] != "Job"
        assert budget["spec"].get("maxUnavailable") == 1
        covered.add(matching[0]["metadata"]["name"])
    assert covered == set(ALL_SERVICES) | {"nats", "minio"}


def test_gateway_is_scaled_by_its_hpa_in_prod_only(dev, prod):
    assert of_kind(dev, "HorizontalPodAutoscaler") == []
    assert one(dev, "Deployment", "gateway")["spec"]["replicas"] == 1
    hpa = one(prod, "HorizontalPodAutoscaler", "gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gateway")
    assert "replicas" not in one(prod, "Deployment", "gateway")["spec"], "the HPA owns the replica count"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    cpu_metric = hpa["spec"]["metrics"][0]["resource"]
    assert cpu_metric["name"] == "cpu"
    assert "cpu" in main_container(one(prod, "Deployment", "gateway"))["resources"]["requests"]


def test_dev_runs_single_replicas(dev):
    for workload in workloads(dev):
        if workload["kind"] != "Job":
            assert workload["spec"]["replicas"] == 1, name_of(workload)


def test_prod_replicates_the_cpu_services(prod):
    for service in ("prompt-parser", "segmentation"):
        assert one(prod, "Deployment", service)["spec"]["replicas"] >= 2


def test_prod_diffusion_requests_one_gpu_on_gpu_nodes(prod):
    deployment = one(prod, "Deployment", "diffusion")
    spec = pod_spec(deployment)
    resources = main_container(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    for init in spec["initContainers"]:
        assert "nvidia.com/gpu" not in init["resources"].get("limits", {})
    for service in ("gateway", "prompt-parser", "segmentation"):
        limits = main_container(one(prod, "Deployment", service))["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits


def test_dev_diffusion_runs_on_cpu(dev):
    deployment = one(dev, "Deployment", "diffusion")
    spec = pod_spec(deployment)
    for container in containers(deployment):
        assert not any("nvidia.com" in key for key in container["resources"].get("limits", {}))
        assert not any("nvidia.com" in key for key in container["resources"].get("requests", {}))
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert env_of(main_container(deployment), dev)["MULTIPASS_DIFFUSION_MODELS"] == "sd15-tiny"


def test_diffusion_can_finish_its_pass_before_being_killed(prod):
    deployment = one(prod, "Deployment", "diffusion")
    spec = pod_spec(deployment)
    assert spec["terminationGracePeriodSeconds"] >= 600
    container = main_container(deployment)
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] < 30
    assert "grpc" not in container["livenessProbe"], "health turns NOT_SERVING while draining"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model warm-up takes minutes"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxSurge"] == 0, "a rollout must not ask for an extra GPU"


@pytest.mark.parametrize("service", ["segmentation", "diffusion"])
def test_model_sync_init_container_fills_the_model_dir(resources, service):
    deployment = one(resources, "Deployment", service)
    spec = pod_spec(deployment)
    (init,) = spec["initContainers"]
    assert init["command"][:3] == ["python", "-m", "multipass.model_sync"]
    args = model_sync_command.build_parser().parse_args(init["command"][3:])
    assert args.run is model_sync_command.run_sync
    assert args.bucket == "multipass-models"
    assert args.prefix == f"{service}/"
    assert init["image"] == main_container(deployment)["image"]

    main = main_container(deployment)
    model_dir = PurePosixPath(env_of(main, resources)["MULTIPASS_MODEL_DIR"])
    assert PurePosixPath(str(args.dest)) == model_dir / service
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    main_mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert init_mounts[str(model_dir)] == main_mounts[str(model_dir)]["name"]
    assert main_mounts[str(model_dir)]["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == main_mounts[str(model_dir)]["name"])
    assert "sizeLimit" in volume["emptyDir"]
    init_env = env_of(init, resources)
    assert {"MULTIPASS_S3_ENDPOINT", "MULTIPASS_S3_ACCESS_KEY", "MULTIPASS_S3_SECRET_KEY"} <= set(init_env)


def test_nats_is_a_jetstream_statefulset_clustered_in_prod(dev, prod):
    assert one(dev, "StatefulSet", "nats")["spec"]["replicas"] == 1
    nats = one(prod, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    headless = one(prod, "Service", "nats-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    config = one(prod, "ConfigMap", pod_spec(nats)["volumes"][0]["configMap"]["name"])
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", config["data"]["cluster.conf"])
    assert routes == [f"nats-{i}" for i in range(3)]
    dev_config = next(
        c for c in of_kind(dev, "ConfigMap") if generated_base_name(c["metadata"]["name"]) == "nats-config"
    )
    assert "cluster {" not in dev_config["data"]["cluster.conf"]


@pytest.mark.parametrize("name", ["nats", "minio"])
def test_state_is_persistent_in_prod_only(dev, prod, name):
    prod_set = one(prod, "StatefulSet", name)
    (claim,) = prod_set["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    dev_set = one(dev, "StatefulSet", name)
    assert "volumeClaimTemplates" not in dev_set["spec"]
    assert any(v["name"] == "data" and "emptyDir" in v for v in pod_spec(dev_set)["volumes"])


def test_minio_credentials_come_from_a_secret(resources):
    minio = main_container(one(resources, "StatefulSet", "minio"))
    env = {item["name"]: item for item in minio["env"]}
    for variable in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert generated_base_name(env[variable]["valueFrom"]["secretKeyRef"]["name"]) == "minio-root"


def test_minio_setup_expires_the_pass_cache_so_deleted_work_does_not_linger(resources):
    """The workers' pass cache (``multipass-jobs/cache/<hash>.png``, shared by jobs and tenants) outlives the
    jobs whose passes filled it; MinIO expires it by a lifecycle rule that the setup Job imports."""
    import json

    from multipass_diffusion.pass_cache import CACHE_BUCKET, CACHE_PREFIX

    setup = one(resources, "Job", "minio-setup")
    script = main_container(setup)["command"][-1]
    assert f"mc ilm rule import local/{CACHE_BUCKET} < /etc/minio-setup/jobs-lifecycle.json" in script
    assert script.index("mc mb ") < script.index("mc ilm rule import")  # the bucket exists first
    (config,) = [
        c
        for c in of_kind(resources, "ConfigMap")
        if generated_base_name(c["metadata"]["name"]) == "minio-setup"
    ]
    (rule,) = json.loads(config["data"]["jobs-lifecycle.json"])["Rules"]
    assert rule["Status"] == "Enabled" and rule["Filter"] == {"Prefix": CACHE_PREFIX}
    assert 1 <= rule["Expiration"]["Days"] <= 30


def test_services_reach_their_dependencies_by_service_name(resources):
    services = {s["metadata"]["name"] for s in of_kind(resources, "Service")}
    gateway = env_of(main_container(one(resources, "Deployment", "gateway")), resources)
    for variable, target in (
        ("MULTIPASS_PARSER_TARGET", "prompt-parser:50051"),
        ("MULTIPASS_SEGMENTATION_TARGET", "segmentation:50052"),
        ("MULTIPASS_DIFFUSION_TARGET", "diffusion:50053"),
    ):
        assert gateway[variable] == target
        assert target.split(":")[0] in services
    for service in ("gateway", "diffusion"):
        url = env_of(main_container(one(resources, "Deployment", service)), resources)["MULTIPASS_NATS_URL"]
        assert url == f"nats://{service}:$(NATS_PASSWORD)@nats:4222"
    assert (
        one(resources, "ConfigMap", "multipass-object-store")["data"]["MULTIPASS_S3_ENDPOINT"] == "minio:9000"
    )


def test_dockerfile_has_a_target_for_every_image_in_the_manifests(resources):
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for workload in workloads(resources):
        for container in containers(workload):
            name, tag = _image_parts(container["image"])
            if name not in OWN_IMAGES:
                continue
            target = name.removeprefix("multipass-") + ("-cuda" if tag.endswith("-cuda") else "")
            assert target in targets, f"{container['image']} has no target {target} in docker/Dockerfile"


def test_gateway_base_model_is_served_by_the_diffusion_workers(resources):
    gateway = env_of(main_container(one(resources, "Deployment", "gateway")), resources)
    diffusion = env_of(main_container(one(resources, "Deployment", "diffusion")), resources)
    served = {model.strip() for model in diffusion["MULTIPASS_DIFFUSION_MODELS"].split(",")}
    assert gateway["MULTIPASS_GATEWAY_BASE_MODEL"] in served


def test_writable_paths_are_volumes(resources):
    """With a read-only root filesystem every path a service writes must be a mounted volume."""
    diffusion = main_container(one(resources, "Deployment", "diffusion"))
    mounts = [m["mountPath"] for m in diffusion["volumeMounts"] if not m.get("readOnly")]
    tune_cache = env_of(diffusion, resources)["MULTIPASS_DIFFUSION_TUNE_CACHE_DIR"]
    assert any(PurePosixPath(tune_cache).is_relative_to(mount) for mount in mounts)
    for workload in workloads(resources):
        for container in containers(workload):
            if _image_parts(container["image"])[0] in OWN_IMAGES:  # Python: caches and temp files
                assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]], name_of(workload)


def _secret_key_of(container: dict, variable: str) -> tuple[str, str]:
    ref = next(item for item in container["env"] if item["name"] == variable)["valueFrom"]["secretKeyRef"]
    return generated_base_name(ref["name"]), ref["key"]


def _process_env(container: dict, resources: list[dict]) -> dict[str, str]:
    """The container's environment as its process reads it, with stand-ins for Secret values."""
    return {
        name: "from-a-secret" if value is None else value
        for name, value in env_of(container, resources).items()
    }


def test_the_http_api_checks_and_signs_callbacks_with_the_gateways_key(resources):
    gateway = main_container(one(resources, "Deployment", "gateway"))
    http_api = main_container(one(resources, "Deployment", "http-api"))
    assert _secret_key_of(http_api, "MULTIPASS_CALLBACK_SIGNING_KEY") == _secret_key_of(
        gateway, "MULTIPASS_CALLBACK_SIGNING_KEY"
    )
    assert HttpApiSettings.from_env(_process_env(http_api, resources)).astria_callbacks.signing_key


async def test_the_gateway_may_call_the_http_apis_callback_relay_in_the_cluster(resources):
    """The relay URL names the HTTP service's Service and port, and the gateway's own address policy
    (what SubmitJob and every delivery check) admits it at an in-cluster address."""
    deployment = one(resources, "Deployment", "http-api")
    settings = HttpApiSettings.from_env(_process_env(main_container(deployment), resources))
    relay = urlsplit(settings.astria_callbacks.relay_url)
    assert relay.scheme == "http" and relay.path == RELAY_PATH
    service = one(resources, "Service", relay.hostname)
    assert service_selects(service, pod_labels(deployment))
    service_port = next(p for p in service["spec"]["ports"] if p["port"] == (relay.port or 80))
    assert container_ports(deployment)[service_port["targetPort"]] == settings.port

    gateway = GatewaySettings.from_env(
        _process_env(main_container(one(resources, "Deployment", "gateway")), resources)
    )
    policy = AddressPolicy(allow_hosts=gateway.fetch_allow.hosts, allow_networks=gateway.fetch_allow.networks)

    async def cluster_dns(host: str, port: int) -> list:
        return [ipaddress.ip_address("10.96.12.34")]

    safe = SafeHttp(policy, resolver=cluster_dns, trusted_callbacks=gateway.callbacks.trusted_prefixes)
    target = relay_url(settings.astria_callbacks.relay_url, "https://example.com/hook")
    checked = await safe.check_url(target)
    assert checked.host == relay.hostname
    # Only the relay endpoint: the HTTP service's other routes stay out of reach of user URLs.
    with pytest.raises(FetchError):
        await safe.check_url(f"http://{relay.netloc}/v1/jobs")
    assert relay.hostname not in gateway.fetch_allow.hosts


def test_liveness_never_depends_on_health_that_follows_nats(resources):
    """gRPC health (and so readiness) turns NOT_SERVING while NATS is down: a liveness probe on it would
    restart every pod during a NATS blip."""
    for service in SERVICES:
        container = main_container(one(resources, "Deployment", service))
        liveness = container["livenessProbe"]
        assert "grpc" not in liveness, f"{service}: liveness must not read gRPC health"
        assert "tcpSocket" in liveness or liveness.get("httpGet", {}).get("path") == "/healthz", service
