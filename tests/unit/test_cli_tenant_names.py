"""``multipass tenants keys | add-key | limits | delete`` take a tenant's id or the name it was created with,
against an in-process Admin server that records the tenant each call names."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from multipass.v1 import admin_pb2, admin_pb2_grpc
from multipass_client.cli.main import main

ACME = "t0123456789abcdef"
TWIN_A = "t1111111111111111"
TWIN_B = "t2222222222222222"


class TenantsApi(admin_pb2_grpc.AdminServicer):
    def __init__(self):
        self.named: list[tuple[str, str]] = []
        self.tenants = [
            admin_pb2.TenantSummary(tenant=ACME, name="acme", live_keys=1),
            admin_pb2.TenantSummary(tenant=TWIN_A, name="twin", live_keys=1),
            admin_pb2.TenantSummary(tenant=TWIN_B, name="twin", live_keys=1),
        ]

    def ListTenants(self, request, context):
        return admin_pb2.ListTenantsResponse(tenants=self.tenants)

    def ListKeys(self, request, context):
        self.named.append(("ListKeys", request.tenant))
        return admin_pb2.ListKeysResponse(keys=[admin_pb2.ApiKeySummary(key_id="0123456789abcdef")])

    def CreateKey(self, request, context):
        self.named.append(("CreateKey", request.tenant))
        return admin_pb2.CreateKeyResponse(tenant=request.tenant, api_key="mpk_new", key_id="k2")

    def SetTenantLimits(self, request, context):
        self.named.append(("SetTenantLimits", request.tenant))
        return admin_pb2.TenantSummary(tenant=request.tenant, limits=request.limits)

    def DeleteTenant(self, request, context):
        self.named.append(("DeleteTenant", request.tenant))
        return admin_pb2.DeleteTenantResponse(keys_revoked=1)


@pytest.fixture
def api():
    servicer = TenantsApi()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(grace=None)


def run(api, *argv: str) -> int:
    return main(["tenants", *argv, "--addr", api.address, "--admin-token", "mpa_t"])


@pytest.mark.parametrize(
    ("argv", "rpc"),
    [
        (("keys", "acme"), "ListKeys"),
        (("add-key", "acme"), "CreateKey"),
        (("limits", "acme", "--max-uploads", "5"), "SetTenantLimits"),
        (("delete", "acme", "--yes"), "DeleteTenant"),
    ],
)
def test_a_tenant_name_given_by_create_names_that_tenant(api, argv, rpc):
    assert run(api, *argv) == 0
    assert api.named == [(rpc, ACME)]


def test_a_tenant_id_is_sent_as_it_is(api):
    assert run(api, "keys", TWIN_B) == 0
    assert api.named == [("ListKeys", TWIN_B)]


def test_deleting_by_name_reports_the_tenant_id(api, capsys):
    assert run(api, "delete", "acme", "--yes") == 0
    assert capsys.readouterr().out.startswith(f"{ACME}: removed (1 key(s) revoked")


def test_an_unknown_or_shared_name_is_refused_before_any_call_on_a_tenant(api, capsys):
    assert run(api, "delete", "nobody", "--yes") == 2
    assert "no tenant has the id or name 'nobody'" in capsys.readouterr().err
    assert run(api, "add-key", "twin") == 2
    err = capsys.readouterr().err
    assert "2 tenants are named 'twin'" in err and TWIN_A in err and TWIN_B in err
    assert api.named == []
