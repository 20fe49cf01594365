"""A refused SubmitJob field is described once: the value received (cut at 64 characters, its length
given), then what is allowed."""

from __future__ import annotations

import grpc
from gateway_support import (  # noqa: F401 - fixtures
    bearer,
    capabilities_fixture,
    rpc_error,
    segmentation_models_fixture,
    stack_fixture,
)

from multipass.grpc.errors import field_violations
from multipass.v1 import jobs_pb2


async def test_a_too_long_idempotency_key_is_described_once(stack):
    await stack.start_gateway()
    tenant = await stack.tenant()
    request = jobs_pb2.SubmitJobRequest(prompt="a pond", idempotency_key="k" * 201)
    error = await rpc_error(stack.jobs.SubmitJob(request, metadata=bearer(tenant.api_key)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = [v for v in field_violations(error) if v[0] == "idempotency_key"]
    assert description.count("201 characters") == 1, description
    assert "1..200 printable ASCII characters" in description
