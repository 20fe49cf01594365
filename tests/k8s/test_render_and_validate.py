"""Both overlays render and every core resource validates against the Kubernetes schemas offline."""

from __future__ import annotations

import pytest
from k8s_manifests import CUSTOM_KINDS, NAMESPACE, name_of
from kubernetes_validate import utils as kv

#: The Kubernetes version the manifests are validated against (strict: unknown fields are errors).
#: Native ``lifecycle.preStop.sleep`` needs 1.30 or newer on the cluster.
KUBERNETES_VERSION = "1.31.0"
CLUSTER_SCOPED = {"Namespace"}


def test_schemas_for_the_stated_version_are_installed():
    assert "1.31.0" in kv.all_versions()


def test_every_core_resource_validates_strictly(resources):
    failures = []
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue
        try:
            validated = kv.validate(resource, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as error:
            failures.append(f"{name_of(resource)}: {error.message} at {list(error.absolute_path)}")
        except kv.SchemaNotFoundError as error:
            failures.append(f"{name_of(resource)}: {error.message}")
        else:
            assert validated == "1.31"
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_a_misspelt_field(dev):
    """The check above is real: one unknown field in a Deployment fails it."""
    deployment = next(r for r in dev if r["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)


def test_resource_names_are_unique(resources):
    keys = [(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in resources]
    assert len(keys) == len(set(keys))


def test_everything_lives_in_the_multipass_namespace(resources):
    for resource in resources:
        if resource["kind"] in CLUSTER_SCOPED:
            continue
        assert resource["metadata"].get("namespace") == NAMESPACE, name_of(resource)


def test_namespace_enforces_the_restricted_pod_security_standard(resources):
    namespace = next(r for r in resources if r["kind"] == "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dev_needs_no_operator_and_prod_uses_all_three(dev, prod):
    dev_custom = {(r["apiVersion"], r["kind"]) for r in dev} & CUSTOM_KINDS
    prod_custom = {(r["apiVersion"], r["kind"]) for r in prod} & CUSTOM_KINDS
    assert dev_custom == set()
    assert prod_custom == CUSTOM_KINDS
