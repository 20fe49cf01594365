"""Scheduler names (the prompt language's ``scheduler=``) mapped to the diffusers scheduler matching A1111.

A1111's samplers come from k-diffusion: they step over the model's sigmas spaced linearly over the whole
training range ("linspace", or Karras sigmas), end on sigma 0, and the SDE sampler draws Brownian-tree
noise. Each entry below picks the diffusers scheduler and the options that reproduce that sampler; the
table and the reasons are in docs/SCHEDULERS.md. A fresh scheduler is made for every pass (schedulers
keep per-run state), from the model's own scheduler config (beta schedule, prediction type, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from multipass.errors import FailedPrecondition, InvalidInput, Violation


@dataclass(frozen=True)
class SchedulerChoice:
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The A1111 sampler this reproduces, for the docs and Info.
    a1111: str = ""


_LINSPACE = {"timestep_spacing": "linspace"}

SCHEDULERS: dict[str, SchedulerChoice] = {
    "euler": SchedulerChoice("EulerDiscreteScheduler", {**_LINSPACE, "use_karras_sigmas": False}, "Euler"),
    "euler_a": SchedulerChoice("EulerAncestralDiscreteScheduler", dict(_LINSPACE), "Euler a"),
    "dpm++2m": SchedulerChoice(
        "DPMSolverMultistepScheduler",
        {
            **_LINSPACE,
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": False,
            "final_sigmas_type": "zero",
            "euler_at_final": False,
        },
        "DPM++ 2M",
    ),
    "dpm++2m_karras": SchedulerChoice(
        "DPMSolverMultistepScheduler",
        {
            **_LINSPACE,
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
            "euler_at_final": False,
        },
        "DPM++ 2M Karras",
    ),
    "dpm++sde": SchedulerChoice(
        "DPMSolverSDEScheduler", {**_LINSPACE, "use_karras_sigmas": False}, "DPM++ SDE"
    ),
    "dpm++sde_karras": SchedulerChoice(
        "DPMSolverSDEScheduler", {**_LINSPACE, "use_karras_sigmas": True}, "DPM++ SDE Karras"
    ),
    "lcm": SchedulerChoice("LCMScheduler", {}, "LCM"),
    "tcd": SchedulerChoice("TCDScheduler", {}, "TCD"),
}
DEFAULT_SCHEDULER = "dpm++2m_karras"
#: Config keys of one scheduler that must not leak into another (they describe that scheduler's own maths).
_DROPPED_KEYS = (
    "timestep_spacing",
    "use_karras_sigmas",
    "algorithm_type",
    "solver_order",
    "final_sigmas_type",
    "euler_at_final",
)


def check_scheduler(name: str) -> str:
    """The scheduler name to use for ``name`` ("" = default), or InvalidInput naming the field."""
    resolved = name or DEFAULT_SCHEDULER
    if resolved not in SCHEDULERS:
        raise InvalidInput.of(
            [Violation("spec.scheduler", f"got {name!r}; expected one of {', '.join(SCHEDULERS)}")]
        )
    return resolved


def make_scheduler(name: str, base_config: dict[str, Any], *, seed: int = 0):
    """A new scheduler for ``name`` built on the model's scheduler config; ``seed`` seeds SDE noise."""
    import diffusers

    choice = SCHEDULERS[check_scheduler(name)]
    if choice.class_name == "DPMSolverSDEScheduler":
        try:
            import torchsde  # noqa: F401
        except ImportError as error:
            raise FailedPrecondition(
                "scheduler dpm++sde needs the torchsde package, which is not installed"
            ) from error
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_") and k not in _DROPPED_KEYS}
    options = dict(choice.options)
    if choice.class_name == "DPMSolverSDEScheduler":
        # Its Brownian-tree noise is seeded separately from the pipeline's generator (random by default).
        options["noise_sampler_seed"] = int(seed)
    scheduler_class = getattr(diffusers, choice.class_name)
    return scheduler_class.from_config(config, **options)
