"""CORS, when an operator allows browser origins: preflights of the upload and job calls are answered."""

from __future__ import annotations

from fastapi.testclient import TestClient

from multipass_http_api.app import create_app
from multipass_http_api.settings import HttpApiSettings


class NoGateway:
    """Preflights are answered by the CORS layer alone: no call reaches the gateway."""


def test_a_browser_on_an_allowed_origin_may_upload_and_submit():
    settings = HttpApiSettings.from_env({"MULTIPASS_HTTP_CORS_ORIGINS": "https://app.example.com"})
    app = create_app(settings, NoGateway())
    with TestClient(app) as client:
        for path, method, headers in (
            ("/v1/uploads", "POST", "authorization,content-type,x-filename"),
            ("/v1/uploads/0123456789abcdef01234567", "DELETE", "authorization"),
            ("/v1/jobs", "POST", "authorization,content-type"),
        ):
            answer = client.options(
                path,
                headers={
                    "Origin": "https://app.example.com",
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": headers,
                },
            )
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        refused = client.options(
            "/v1/uploads",
            headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in refused.headers
