"""Tenants through the public API: isolation of jobs and tunes, API keys, the admin commands."""

from __future__ import annotations

import json

import grpc
import pytest
from e2e_support import FAST, follow, register_lora

from multipass.v1 import jobs_pb2
from multipass_client import connect, describe_rpc_error

pytestmark = pytest.mark.e2e

HIDDEN = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


@pytest.fixture(scope="module")
def other_key(stack) -> str:
    """A second tenant's API key, created the way an operator does (`multipass tenants create`)."""
    result = stack.cli("tenants", "create", "e2e-other")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("mpk_") and "\n" not in key
    return key


def test_a_second_tenant_cannot_see_watch_cancel_or_use_the_first_tenants_work(
    stack, client, other_key, sd15_model, tmp_path
):
    tune = register_lora(client, sd15_model, tmp_path, seed=21)
    job_id = client.jobs.submit("a quiet harbour at dawn", FAST).job_id
    with stack.client(other_key) as other:
        calls = {
            "GetJob": lambda: other.jobs.get(job_id),
            "WatchJob": lambda: list(other.jobs.watch(job_id)),
            "CancelJob": lambda: other.jobs.cancel(job_id),
            "GetTune": lambda: other.tunes.get(tune),
            "DeleteTune": lambda: other.tunes.delete(tune),
            "UpdateTune": lambda: other.tunes.update(tune, name="mine now"),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() in HIDDEN, f"{name}: {describe_rpc_error(caught.value)}"
        assert job_id not in [job.job_id for job in other.jobs.list(limit=100)]
        assert tune not in [t.tune_id for t in other.tunes.list()]
        # Using the first tenant's tune fails exactly like using a tune that never existed: refused,
        # naming the tag, and nothing that tells the two apart.
        refusals = {}
        for tune_id in (tune, "9" * len(tune)):
            with pytest.raises(grpc.RpcError) as caught:
                other.jobs.submit(f"a street BREAK photo BREAK ohwx woman <lora:{tune_id}:1>", FAST)
            assert caught.value.code() in (*HIDDEN, grpc.StatusCode.INVALID_ARGUMENT), describe_rpc_error(
                caught.value
            )
            assert f"<lora:{tune_id}:1>" in describe_rpc_error(caught.value)
            refusals[tune_id] = (caught.value.code(), describe_rpc_error(caught.value).replace(tune_id, "ID"))
        assert refusals[tune] == refusals["9" * len(tune)]
    # The first tenant's job and tune are untouched.
    job, _ = follow(client, job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert client.tunes.get(tune).tune_id == tune


def test_missing_unknown_and_revoked_keys_are_refused_and_operators_rotate_keys_from_the_cli(stack):
    with connect(stack.address) as anonymous, pytest.raises(grpc.RpcError) as caught:
        list(anonymous.jobs.list(limit=1))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with stack.client("mpk_0123456789abcdef_" + "x" * 43) as unknown, pytest.raises(grpc.RpcError) as caught:
        list(unknown.jobs.list(limit=1))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with connect(stack.address, admin_token=stack.admin_token) as admin:
        created = admin.admin.create_tenant("e2e-revoked")
    with stack.client(created.api_key) as tenant:
        assert list(tenant.jobs.list(limit=1)) == []
        # The operator finds the key's id by listing (the key itself was shown once), rotates, revokes.
        listed = stack.cli("tenants", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(
            line.split()[0] == created.tenant and line.endswith("e2e-revoked")
            for line in listed.stdout.splitlines()
        )
        rotated = stack.cli("tenants", "add-key", created.tenant)
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip()
        rotated_id = new_key.split("_")[1]  # mpk_<key id>_<secret>
        as_json = json.loads(stack.cli("tenants", "keys", created.tenant, "--json").stdout)
        assert [(k["key_id"], k.get("revoked", False)) for k in as_json] == [
            (created.key_id, False),
            (rotated_id, False),
        ]
        keys = stack.cli("tenants", "keys", created.tenant)
        assert [line.split()[0] for line in keys.stdout.splitlines()][0] == created.key_id
        assert len(keys.stdout.splitlines()) == 2 and created.api_key not in keys.stdout
        revoked = stack.cli("tenants", "revoke", created.key_id)
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(grpc.RpcError) as caught:
            list(tenant.jobs.list(limit=1))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in stack.cli("tenants", "keys", created.tenant).stdout.splitlines()[0]
    with stack.client(new_key) as rotated_client:
        assert list(rotated_client.jobs.list(limit=1)) == []
        # Its own quota: the flag given is set, the other keeps its value.
        assert stack.cli("tenants", "limits", created.tenant, "--max-uploads", "3").returncode == 0
        limited = stack.cli("tenants", "limits", created.tenant, "--max-pending-passes", "40")
        assert limited.returncode == 0, limited.stderr
        assert "max pending passes 40, max uploads 3" in limited.stdout
        assert "(max pending passes 40, max uploads 3)" in stack.cli("tenants", "list").stdout
        shared = stack.cli("tenants", "limits", created.tenant, "--max-passes-in-flight", "2")
        assert "max pending passes 40, max uploads 3, max passes in flight 2" in shared.stdout, shared.stderr
        # Offboarding: nothing happens without --yes; with it the tenant and its keys are gone.
        unconfirmed = stack.cli("tenants", "delete", created.tenant)
        assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
        assert list(rotated_client.jobs.list(limit=1)) == []
        deleted = stack.cli("tenants", "delete", created.tenant, "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert "1 key(s) revoked" in deleted.stdout  # the first was revoked above
        with pytest.raises(grpc.RpcError) as caught:
            list(rotated_client.jobs.list(limit=1))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert created.tenant not in stack.cli("tenants", "list").stdout


def test_the_admin_api_needs_the_admin_token(stack):
    with connect(stack.address, admin_token="mpa_wrong") as admin, pytest.raises(grpc.RpcError) as caught:
        admin.admin.create_tenant("intruder")
    assert caught.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    # A tenant's API key is not an admin credential either.
    result = stack.cli("tenants", "create", "intruder", "--admin-token", stack.api_key)
    assert result.returncode == 1
    assert result.stderr.split(":")[0].split(" [")[0] in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    assert "[ADMIN_TOKEN_INVALID]" in result.stderr.split(":")[0]
