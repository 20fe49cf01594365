"""What a parsed prompt needs from the diffusion workers, checked at submit (pure).

The installed components it names (:func:`required_capabilities`), the pass kinds its chain will hold
(:func:`diffusion_kinds`), the models that load each of its tunes (:func:`tune_models`) and the model
families Diffusion.Info reports (:func:`model_family`). A component the workers lack is refused naming
the model-directory feature behind it and the ``multipass models pull`` command that installs it
(:func:`missing_components`, from ``multipass.model_catalog``), so it never fails at pass time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from multipass.errors import Violation
from multipass.model_catalog.features import feature_of_capability, fix_command
from multipass.model_catalog.layout import CONTROLNET_KINDS as SERVED_CONTROLNETS
from multipass.v1 import diffusion_pb2, prompt_pb2

#: Installed component needed per option: (capability, field it is named after in errors).
CAPABILITY_UPSCALER = "upscaler"
CAPABILITY_FACE_RESTORER = "face_restorer"
CAPABILITY_FACE_SWAPPER = "face_swapper"
CAPABILITY_PROMPT_EXPANDER = "prompt_expander"
CAPABILITY_POSE = "controlnet:pose"
#: ControlNet kinds whose conditioning image is estimated from a picture by a model with weights
#: (the worker lists the installed ones as ``preprocessor:<kind>``); canny, mlsd, ... need none.
WEIGHTED_PREPROCESSORS = frozenset({"depth", "hed", "lineart", "pose"})


def is_capability_complete(capabilities: frozenset[str] | set[str]) -> bool:
    """Whether the workers list everything they run (``pass:<kind>``), so absent means missing."""
    return any(name.startswith("pass:") for name in capabilities)


def can_estimate_pose(capabilities: frozenset[str] | set[str]) -> bool:
    return "preprocessor:pose" in capabilities or not is_capability_complete(capabilities)


def has_finish(params: prompt_pb2.Params) -> bool:
    return params.film_grain or bool(params.color_grading)


def controlnet_off(params: prompt_pb2.Params) -> bool:
    """An explicit ``controlnet_conditioning_scale=0``: the ControlNet would add nothing, so none runs (a
    pass spec's 0 means "the default scale")."""
    return params.HasField("controlnet_conditioning_scale") and params.controlnet_conditioning_scale == 0


def controlnet_declined(parsed: prompt_pb2.ParsedPrompt) -> bool:
    """An explicit ``controlnet=none`` (or ``off``): no ControlNet at all, so a prompt with persons and no
    input image does not get the default layout's pose on its base pass either."""
    return "controlnet" in parsed.explicit_params and not parsed.params.controlnet


def required_capabilities(
    parsed: prompt_pb2.ParsedPrompt, *, has_input_image: bool, complete: bool = False
) -> list[tuple[str, str]]:
    """(capability, field) for every installed component the request needs; checked at submit.

    ``complete``: the workers list their pass kinds and preprocessors too (see :func:`diffusion_kinds`).
    """
    params = parsed.params
    needs: list[tuple[str, str]] = []
    if complete:
        needs += [(f"pass:{kind}", field) for kind, field in diffusion_kinds(parsed)]
    if parsed.flags.only_upscale:  # nothing is generated: only the upscaler is used
        return [*needs, (CAPABILITY_UPSCALER, "--only_upscale")]
    # Keep-background mode has no base pass, the only pass that takes the controlnet option.
    conditions_base = params.controlnet and not parsed.keep_background and not controlnet_off(params)
    if conditions_base and (has_input_image or params.controlnet_txt2img):
        needs.append((f"controlnet:{params.controlnet}", "params.controlnet"))
        if complete and has_input_image and params.controlnet in WEIGHTED_PREPROCESSORS:
            needs.append((f"preprocessor:{params.controlnet}", "params.controlnet"))
    if params.super_resolution or parsed.flags.only_upscale:
        needs.append(
            (CAPABILITY_UPSCALER, "params.super_resolution" if params.super_resolution else "--only_upscale")
        )
    if params.face_correct:
        needs.append((CAPABILITY_FACE_RESTORER, "params.face_correct"))
    if params.face_swap:
        needs.append((CAPABILITY_FACE_SWAPPER, "params.face_swap"))
    if params.prompt_expansion:
        needs.append((CAPABILITY_PROMPT_EXPANDER, "params.prompt_expansion"))
    return needs


def diffusion_kinds(parsed: prompt_pb2.ParsedPrompt) -> list[tuple[str, str]]:
    """(pass kind, field that asked for it) of every diffusion pass the chain will hold."""
    params = parsed.params
    if parsed.flags.only_upscale:
        kinds = [("upscale", "--only_upscale")]
    else:
        kinds = [] if parsed.keep_background else [("base", "prompt")]
        if parsed.persons:
            kinds.append(("person", "prompt"))
        optional = [
            ("hires", "params.hires_fix", params.hires_fix),
            ("faces", "params.inpaint_faces", params.inpaint_faces),
            ("face_correct", "params.face_correct", params.face_correct),
            ("face_swap", "params.face_swap", params.face_swap),
            ("upscale", "params.super_resolution", params.super_resolution),
        ]
        kinds += [(kind, field) for kind, field, wanted in optional if wanted]
    if has_finish(params):
        kinds.append(("finish", "params.color_grading" if params.color_grading else "params.film_grain"))
    return kinds


def families(model_family: str) -> frozenset[str]:
    """The families a Diffusion.Info answer names (``"sd15"``, or ``"sd15,sdxl"`` for a mixed worker)."""
    return frozenset(part.strip() for part in model_family.split(",") if part.strip())


def model_family(info: diffusion_pb2.InfoResponse, model: str) -> str:
    """The family of ``model`` from Diffusion.Info: its ``model_families`` entry; "" when unknown.

    A worker without the per-model map (an older one) is read from ``model_family`` when that names a
    single family; a mixed answer leaves the family unknown (the worker checks it when the pass runs).
    """
    if model in info.model_families:
        return info.model_families[model]
    served = families(info.model_family)
    return next(iter(served)) if len(served) == 1 else ""


def tune_models(
    parsed: prompt_pb2.ParsedPrompt, base_model: str, person_model: str
) -> dict[tuple[str, str], list[str]]:
    """The models whose passes load each tune of the prompt, by (kind, tune id).

    Base tags (base and common) load on the base model (base and hires passes); person tags (person and
    common) on the person model (person passes and the faces pass). Face swap loads no adapter, and the
    faces pass gives the base tags to faces of no person only when both models are one.
    """
    base = {(ref.kind, ref.tune_id) for ref in parsed.base_loras}
    person = {(ref.kind, ref.tune_id) for p in parsed.persons for ref in p.loras}
    models: dict[tuple[str, str], list[str]] = {}
    for ref in tune_ids(parsed):
        key = (ref.kind, ref.tune_id)
        used = ([base_model] if key in base else []) + ([person_model] if key in person else [])
        models[key] = list(dict.fromkeys(used))
    return models


def named_loras(info: diffusion_pb2.InfoResponse) -> list[str]:
    """Names of the named LoRAs the workers have (capability ``lora:<NAME>``)."""
    return sorted(
        name
        for name in (c.removeprefix("lora:") for c in info.capabilities if c.startswith("lora:"))
        if ":" not in name
    )


def named_lora_installed(name: str, info: diffusion_pb2.InfoResponse) -> bool:
    return f"lora:{name}" in info.capabilities


def named_lora_problems(
    refs: Iterable[prompt_pb2.LoraRef],
    models: dict[tuple[str, str], list[str]],
    info: diffusion_pb2.InfoResponse,
) -> tuple[list[Violation], list[str]]:
    """What is wrong with tags that name a LoRA rather than a tune (``<lora:detail-tweaker:0.5>``): a name
    the workers have no file of, a ``<faceid:...>`` (it takes a faceid tune's id), or a file that does not
    fit the model of a pass that loads it (``lora:<NAME>:<model>`` is absent). Also returns the names no
    worker has (the caller's NOT_FOUND)."""
    problems: list[Violation] = []
    missing: list[str] = []
    for ref in refs:
        field = ref.tag or f"<{ref.kind or 'lora'}:{ref.tune_id}>"
        if ref.kind == "faceid":
            problems.append(
                Violation(field, f"<faceid:...> takes the id (digits) of a faceid tune; got {ref.tune_id!r}")
            )
            continue
        if not named_lora_installed(ref.tune_id, info):
            missing.append(ref.tune_id)
            installed = ", ".join(named_loras(info)) or "none"
            problems.append(
                Violation(
                    field,
                    f"no tune or named LoRA {ref.tune_id!r}: tune ids are digits, and the diffusion workers "
                    f"have no diffusion/loras/{ref.tune_id}.safetensors (named LoRAs installed: {installed})",
                )
            )
            continue
        for model in models.get((ref.kind, ref.tune_id), []):
            if f"lora:{ref.tune_id}:{model}" not in info.capabilities:
                family = model_family(info, model) or "another family"
                problems.append(
                    Violation(field, f"named LoRA {ref.tune_id} does not fit model {model} ({family})")
                )
    return problems, missing


def tune_ids(parsed: prompt_pb2.ParsedPrompt) -> list[prompt_pb2.LoraRef]:
    """Every model tag of the prompt (base, common and persons), first occurrence of each tag."""
    seen: set[tuple[str, str]] = set()
    refs: list[prompt_pb2.LoraRef] = []
    for ref in [*parsed.base_loras, *parsed.common_loras, *(r for p in parsed.persons for r in p.loras)]:
        key = (ref.kind, ref.tune_id)
        if key not in seen:
            seen.add(key)
            refs.append(ref)
    return refs


@dataclass(frozen=True)
class MissingComponent:
    """A capability the request needs and the workers lack, the feature behind it and its fix."""

    capability: str
    field: str
    #: The model-directory feature (``multipass models check``); None for what no model file provides.
    feature: str | None
    #: ``multipass models pull PROFILE``; "" when no profile provides it.
    fix: str

    def violation(self) -> Violation:
        head, _, kind = self.capability.partition(":")
        if head == "controlnet" and self.feature is None:
            # No model file provides it: reference-only asked of workers older than it.
            return Violation(
                self.field,
                f"controlnet={kind} is not implemented by the diffusion workers of this version; the "
                f"ControlNets they serve are {', '.join(SERVED_CONTROLNETS)}, composition (once installed) "
                "and reference",
            )
        description = f"needs {self.capability!r}, which the diffusion workers do not have installed"
        if self.fix:
            description += f"; install it with `{self.fix}`"
        elif self.feature:
            description += f" (feature {self.feature}; no `multipass models pull` profile provides it)"
        return Violation(self.field, description)


#: ControlNet kinds whose workers also list them per model (``controlnet:<kind>:<model>``): their files
#: are per family, so a worker serving two families may have them for one only.
PER_MODEL_CONTROLNETS = frozenset({"composition"})


def per_model(
    needs: list[tuple[str, str]], installed: set[str] | frozenset[str], base_model: str
) -> list[tuple[str, str]]:
    """``needs`` with ``controlnet:<kind>`` of a per-model kind asked of the base model's own entry, where
    the workers list the kind at all (so one that lacks it entirely is still named as such)."""
    found = []
    for capability, field in needs:
        head, _, kind = capability.partition(":")
        if head == "controlnet" and kind in PER_MODEL_CONTROLNETS and capability in installed:
            capability = f"{capability}:{base_model}"
        found.append((capability, field))
    return found


def missing_components(
    needs: Iterable[tuple[str, str]], installed: set[str] | frozenset[str], family_of: Callable[[str], str]
) -> list[MissingComponent]:
    """Each (capability, field) of ``needs`` not in ``installed``, once, with its feature and fix.

    ``family_of(capability)``: the model family the fix must fit ("" when any does).
    """
    missing = []
    for capability, field in dict.fromkeys(needs):
        if capability in installed:
            continue
        feature = feature_of_capability(capability)
        fix = fix_command(feature, family_of(capability)) if feature else ""
        missing.append(MissingComponent(capability, field, feature, fix))
    return missing


def pull_command(missing: Iterable[MissingComponent]) -> str:
    """One ``multipass models pull`` naming every profile the missing components need ("" when none)."""
    profiles = dict.fromkeys(m.fix.removeprefix("multipass models pull ") for m in missing if m.fix)
    return f"multipass models pull {' '.join(profiles)}" if profiles else ""
