"""The HTTP service's settings from MULTIPASS_* variables."""

from __future__ import annotations

import pytest

from multipass.errors import ConfigError
from multipass_http_api.settings import HttpApiSettings


def test_astria_idempotency_is_off_unless_turned_on():
    assert HttpApiSettings.from_env({}).astria_idempotency is False
    assert HttpApiSettings.from_env({"MULTIPASS_HTTP_ASTRIA_IDEMPOTENCY": "true"}).astria_idempotency is True
    with pytest.raises(ConfigError) as caught:
        HttpApiSettings.from_env({"MULTIPASS_HTTP_ASTRIA_IDEMPOTENCY": "perhaps"})
    assert [v.field for v in caught.value.violations] == ["MULTIPASS_HTTP_ASTRIA_IDEMPOTENCY"]
