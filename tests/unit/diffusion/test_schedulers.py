"""Scheduler names map to the diffusers scheduler and options that match the A1111 sampler."""

from __future__ import annotations

import diffusers
import pytest
from diffusion_testkit import spec

from multipass.errors import InvalidInput
from multipass_diffusion.schedulers import SCHEDULERS, check_scheduler, make_scheduler

BASE_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "timestep_spacing": "leading",
    "_class_name": "DDIMScheduler",
}

EXPECTED = {
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace", "use_karras_sigmas": False}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "dpm++2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpm++2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpm++sde": ("DPMSolverSDEScheduler", {"use_karras_sigmas": False}),
    "dpm++sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


def test_every_prompt_language_scheduler_is_mapped():
    assert set(SCHEDULERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scheduler_class_and_options_keep_the_model_config(name):
    class_name, options = EXPECTED[name]
    scheduler = make_scheduler(name, BASE_CONFIG)
    assert type(scheduler) is getattr(diffusers, class_name)
    for key, value in options.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_default_and_unknown_names():
    assert check_scheduler("") == "dpm++2m_karras"
    with pytest.raises(InvalidInput, match="spec.scheduler"):
        check_scheduler("ddim")


def test_a_fresh_scheduler_per_call():
    assert make_scheduler("euler", BASE_CONFIG) is not make_scheduler("euler", BASE_CONFIG)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_scheduler_runs_a_pass(engine, name):
    output = engine.run(spec(scheduler=name, steps=3))
    assert output.image.size == (64, 64)
    assert output.steps_run >= 1


@pytest.mark.parametrize("name", ["euler_a", "dpm++sde_karras"])
def test_stochastic_schedulers_are_deterministic_per_seed(engine, name):
    first = engine.run(spec(scheduler=name, steps=3, seed=11))
    second = engine.run(spec(scheduler=name, steps=3, seed=11))
    other = engine.run(spec(scheduler=name, steps=3, seed=12))
    assert first.image.tobytes() == second.image.tobytes()
    assert first.image.tobytes() != other.image.tobytes()


def test_unknown_scheduler_in_a_spec_is_invalid_input(engine):
    with pytest.raises(InvalidInput, match="scheduler"):
        engine.run(spec(scheduler="plms"))
