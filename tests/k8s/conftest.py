"""Fixtures with the rendered manifests of the kustomize overlays."""

from __future__ import annotations

import pytest
from k8s_render import OVERLAYS, rendered


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def resources(overlay) -> list[dict]:
    return rendered(overlay)


@pytest.fixture
def dev() -> list[dict]:
    return rendered("dev")


@pytest.fixture
def prod() -> list[dict]:
    return rendered("prod")
