"""Progress is reported in the user's steps for every scheduler, also those that evaluate twice a step.

Second-order schedulers (DPM++ SDE; Heun and KDPM2 likewise) have ``2 * steps - 1`` timesteps, and
diffusers calls ``callback_on_step_end`` once per timestep: the pass must still report ``steps`` (or
``steps × strength`` from an input image), as the planner and the worker's ``started`` event promise.
"""

from __future__ import annotations

import inspect
import threading
from types import SimpleNamespace

import diffusers
import pytest
import torch
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, scene, spec

from multipass.errors import Cancelled
from multipass_diffusion.passes.context import PassInputs, steps_done
from multipass_diffusion.passes.registry import HANDLERS
from multipass_diffusion.schedulers import SCHEDULERS

SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def run_reporting(engine, pass_spec, inputs=None):
    seen: list[tuple[int, int]] = []
    output = engine.run(
        pass_spec, inputs or PassInputs(), progress=lambda done, total: seen.append((done, total))
    )
    return output, seen


def assert_steps(seen: list[tuple[int, int]], promised: int) -> None:
    assert seen, "no progress reported"
    assert {total for _, total in seen} == {promised}
    done = [step for step, _ in seen]
    assert done == sorted(set(done)), done  # climbs, each step reported once
    assert done[0] >= 1 and done[-1] == promised


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_txt2img_reports_its_steps_with_every_scheduler(engine, name):
    pass_spec = spec(scheduler=name, steps=4)
    output, seen = run_reporting(engine, pass_spec)
    assert HANDLERS["base"].steps_to_run(pass_spec, PassInputs()) == 4  # what ``started`` says
    assert_steps(seen, 4)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert output.steps_run == 4 and output.metadata["steps_run"] == "4"


@pytest.mark.parametrize("model", [SD15_MODEL, SDXL_MODEL])
def test_dpmpp_sde_reports_four_steps_not_seven_evaluations(engine, model):
    output, seen = run_reporting(engine, spec(model, scheduler="dpm++sde", steps=4))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert output.steps_run == 4


@pytest.mark.parametrize("name", ["euler", "dpm++2m", "dpm++sde", "dpm++sde_karras", "lcm"])
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_passes_from_an_image_report_steps_times_strength(engine, name, task):
    source = scene(64, 64)
    mask = box_mask(source.size, (10, 10, 50, 50)) if task == "inpaint" else None
    inputs = PassInputs(image=source, mask=mask)
    pass_spec = spec(scheduler=name, steps=4, width=0, height=0, denoising_strength=0.5)
    output, seen = run_reporting(engine, pass_spec, inputs)
    assert output.metadata["task"] == task
    promised = HANDLERS["base"].steps_to_run(pass_spec, inputs)
    assert promised == 2  # 4 steps × 0.5, as the planner counts them
    assert_steps(seen, promised)
    assert output.steps_run == promised


def test_person_pass_with_a_second_order_scheduler(engine):
    source = scene(64, 64)
    inputs = PassInputs(image=source, mask=box_mask(source.size, (10, 10, 50, 50)))
    pass_spec = spec(kind="person", scheduler="dpm++sde", steps=6, width=0, height=0)
    output, seen = run_reporting(engine, pass_spec, inputs)
    promised = HANDLERS["person"].steps_to_run(pass_spec, inputs)
    assert promised == 3  # the person pass's default strength 0.5
    assert_steps(seen, promised)
    assert output.steps_run == promised


def test_tiled_hires_counts_steps_of_every_tile(engine):
    pass_spec = spec(kind="hires", scheduler="dpm++sde", steps=4, denoising_strength=0.5, width=0, height=0)
    output, seen = run_reporting(engine, pass_spec, PassInputs(image=scene(96, 80)))
    assert output.metadata["tiled"] == "yes"
    tiles = int(output.metadata["tiles"])
    assert tiles > 1
    assert_steps(seen, tiles * 2)
    assert output.steps_run == tiles * 2


def test_a_cancel_between_the_two_evaluations_of_a_step_still_stops_the_pass(engine):
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(spec(scheduler="dpm++sde", steps=6), progress=progress, cancel=cancel)
    assert seen == [1]


@pytest.mark.parametrize(
    "class_name",
    [
        "DPMSolverSDEScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
    ],
)
@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 1.0), (4, 1.0), (7, 1.0), (4, 0.5), (10, 0.3)])
def test_steps_done_is_the_steps_the_scheduler_completed(class_name, steps, strength):
    """Against the schedulers themselves: after each evaluation, the steps whose last evaluation is done
    (counted from the scheduler's own state), for whole runs and img2img's tails."""
    scheduler = getattr(diffusers, class_name)(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    # diffusers' img2img: the last int(steps × strength) steps, ``order`` timesteps per skipped step.
    run_steps = int(steps * strength)
    begin = (steps - run_steps) * scheduler.order
    scheduler.set_begin_index(begin)
    timesteps = scheduler.timesteps[begin:]
    pipe = SimpleNamespace(scheduler=scheduler, _num_timesteps=len(timesteps))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, 4, 8, 8), generator=generator)
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    completed, reported = 0, []
    for index, timestep in enumerate(timesteps):
        model_output = torch.randn(sample.shape, generator=generator) * 0.1
        sample = scheduler.step(model_output, timestep, sample, **extra).prev_sample
        # A second-order step is done once the scheduler is back in its first-order state; the last
        # step is one (Euler) evaluation, after which the run is over.
        if getattr(scheduler, "state_in_first_order", True) or index == len(timesteps) - 1:
            completed += 1
        assert steps_done(pipe, index) == (completed, run_steps), index
        reported.append(steps_done(pipe, index)[0])
    assert reported[-1] == run_steps
