"""Diffusion worker replicas in the local stack: each its own process, ports and worker name."""

from __future__ import annotations

import os

import pytest

from multipass_client.stack_record import StackPaths
from multipass_dev.stack.local_stack import DIFFUSION, GATEWAY, LocalStack, StackConfig, StackError, _Wiring


def test_replicas_get_their_own_ports_and_names_and_the_diffusion_settings(tmp_path):
    paths = StackPaths(tmp_path / ".multipass")
    config = StackConfig(paths=paths, base_env={"PATH": os.environ["PATH"]}, diffusion_replicas=3)
    assert [s.name for s in config.workers] == [
        "prompt-parser",
        "segmentation",
        "diffusion",
        "diffusion-2",
        "diffusion-3",
    ]
    stack = LocalStack(config)
    wiring = _Wiring.choose(config)
    addresses = {wiring.grpc_address(s.name) for s in config.workers}
    assert len(addresses) == len(config.workers)
    first, third = config.workers[2], config.workers[4]
    env_first, env_third = stack.service_env(first, wiring), stack.service_env(third, wiring)
    assert env_third["MULTIPASS_DIFFUSION_GRPC_ADDR"] == wiring.grpc_address("diffusion-3")
    assert env_third["MULTIPASS_DIFFUSION_GRPC_ADDR"] != env_first["MULTIPASS_DIFFUSION_GRPC_ADDR"]
    assert env_third["MULTIPASS_DIFFUSION_MODELS"] == env_first["MULTIPASS_DIFFUSION_MODELS"]
    assert env_third["MULTIPASS_DIFFUSION_TUNE_CACHE_DIR"] == env_first["MULTIPASS_DIFFUSION_TUNE_CACHE_DIR"]
    assert env_third["MULTIPASS_DIFFUSION_WORKER_NAME"].startswith("diffusion-3-")
    assert "MULTIPASS_DIFFUSION_WORKER_NAME" not in env_first
    spec = stack._service_spec(third, wiring)
    assert spec.argv[-1] == DIFFUSION.module and spec.name == "diffusion-3"
    # Diffusion.Info is asked of the first worker.
    assert stack.service_env(GATEWAY, wiring)["MULTIPASS_DIFFUSION_TARGET"] == wiring.grpc_address(
        "diffusion"
    )


def test_replicas_come_from_the_environment_and_must_be_positive(tmp_path):
    paths = StackPaths(tmp_path / ".multipass")
    config = StackConfig.from_env(paths, {"MULTIPASS_STACK_DIFFUSION_REPLICAS": "2"})
    assert config.diffusion_replicas == 2
    assert StackConfig.from_env(paths, {}).diffusion_replicas == 1
    with pytest.raises(StackError, match="MULTIPASS_STACK_DIFFUSION_REPLICAS"):
        StackConfig.from_env(paths, {"MULTIPASS_STACK_DIFFUSION_REPLICAS": "two"})
    with pytest.raises(ValueError, match="diffusion_replicas"):
        StackConfig(paths=paths, diffusion_replicas=0)
