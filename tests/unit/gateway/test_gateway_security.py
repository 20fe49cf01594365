"""API keys, the admin token and callback signatures."""

from __future__ import annotations

import hashlib
import hmac

from multipass.v1 import jobs_pb2
from multipass_gateway.api import auth
from multipass_gateway.domain import api_keys
from multipass_gateway.infra import callbacks


def test_issued_keys_are_unique_high_entropy_and_recognisable():
    keys = {api_keys.issue_key().api_key for _ in range(200)}
    assert len(keys) == 200
    issued = api_keys.issue_key()
    assert issued.api_key.startswith(f"mpk_{issued.key_id}_")
    assert api_keys.looks_like_key(issued.api_key)
    assert api_keys.valid_key_id(issued.key_id)
    assert len(issued.api_key.split("_", 2)[2]) >= 43  # 32 random bytes
    assert not api_keys.looks_like_key("mpk_short")


def test_key_hash_is_sha256_or_peppered_hmac_and_never_the_key():
    key = api_keys.issue_key().api_key
    assert api_keys.hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    peppered = api_keys.hash_key(key, "pepper")
    assert peppered == hmac.new(b"pepper", key.encode(), hashlib.sha256).hexdigest()
    assert peppered != api_keys.hash_key(key, "other pepper") != api_keys.hash_key(key)
    assert key not in peppered


def test_bearer_token_parsing():
    assert auth.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer_token([("Authorization", "bearer   abc  ")]) == "abc"
    assert auth.bearer_token([("authorization", "Basic abc")]) is None
    assert auth.bearer_token([("authorization", "Bearer ")]) is None
    assert auth.bearer_token([("x-other", "Bearer abc")]) is None
    assert auth.bearer_token(None) is None


def test_admin_token_matches_in_either_header_and_never_when_disabled():
    assert auth.admin_token_matches([(auth.ADMIN_TOKEN_HEADER, "s3cret")], "s3cret")
    assert auth.admin_token_matches([("authorization", "Bearer s3cret")], "s3cret")
    assert not auth.admin_token_matches([(auth.ADMIN_TOKEN_HEADER, "s3cre")], "s3cret")
    assert not auth.admin_token_matches([], "s3cret")
    assert not auth.admin_token_matches([(auth.ADMIN_TOKEN_HEADER, "")], "")


def test_signature_is_hmac_over_timestamp_and_body():
    body = b'{"job_id":"x"}'
    header = callbacks.sign(body, "key", 1700000000)
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert callbacks.verify(header, body, "key", now=1700000100)


def test_signature_verification_rejects_tampering_wrong_keys_and_stale_times():
    body = b'{"job_id":"x"}'
    header = callbacks.sign(body, "key", 1700000000)
    assert not callbacks.verify(header, body + b" ", "key", now=1700000000)
    assert not callbacks.verify(header, body, "other", now=1700000000)
    assert not callbacks.verify(header, body, "key", now=1700000000 + 301)
    assert not callbacks.verify(header.replace("t=1700000000", "t=1700000001"), body, "key", now=1700000000)
    assert not callbacks.verify("garbage", body, "key", now=1700000000)


def test_job_json_uses_proto_field_names():
    job = jobs_pb2.Job(job_id="abc", state=jobs_pb2.JOB_STATE_SUCCEEDED, callback_url="https://x")
    job.images.add(index=0, seed=5, url="https://u")
    text = callbacks.job_json(job).decode()
    assert '"job_id": "abc"' in text and '"callback_url"' in text and '"JOB_STATE_SUCCEEDED"' in text
    assert "jobId" not in text


def test_backoff_doubles_and_retries_only_transient_statuses():
    assert callbacks.backoff_delays(5, 0.5) == [0.5, 1.0, 2.0, 4.0]
    assert callbacks.backoff_delays(1, 1.0) == []
    assert (
        callbacks.retriable_status(500)
        and callbacks.retriable_status(503)
        and callbacks.retriable_status(429)
    )
    assert not callbacks.retriable_status(404) and not callbacks.retriable_status(400)
