"""The tunes a prompt's tags name, checked at submit: each ``<lora:ID:W>`` / ``<faceid:ID:W>`` tune exists,
is the tenant's and fits the model of every pass that loads it; a name (not digits) is a named LoRA the
workers have (:func:`multipass_gateway.domain.requirements.named_lora_problems`). Returns the files and
reference images the plan carries; fills the prompt's ``{{name}}`` placeholders from the tunes'
characteristics."""

from __future__ import annotations

import asyncio

from multipass.errors import InvalidInput, NotFound, Reason, Violation, echo, violations_summary
from multipass.v1 import common_pb2, diffusion_pb2, prompt_pb2
from multipass_gateway.domain import characteristics, requirements
from multipass_gateway.infra.tune_store import TuneStore, valid_tune_id


async def check_prompt_tunes(
    tunes: TuneStore,
    tenant: str,
    parsed: prompt_pb2.ParsedPrompt,
    info: diffusion_pb2.InfoResponse,
    base_model: str,
    person_model: str,
) -> tuple[dict[str, common_pb2.ObjectRef], dict[str, list[common_pb2.ImageRef]]]:
    """Tune files and reference images by tune id; NotFound (UNKNOWN_TUNE) when a tag names no tune of
    the tenant, else InvalidInput; either names every bad tag. The prompt's ``{{name}}`` placeholders
    are filled from the tunes' characteristics here (:mod:`multipass_gateway.domain.characteristics`).

    A tune's family must be that of every model whose passes load it (base and person models may
    differ), from ``Diffusion.Info.model_families``.
    """
    files: dict[str, common_pb2.ObjectRef] = {}
    references: dict[str, list[common_pb2.ImageRef]] = {}
    models = requirements.tune_models(parsed, base_model, person_model)
    with_references = False
    # face_swap takes each face's identity from its person's tune; a prompt without persons (one subject,
    # the base tags) from the base tags' tune.
    person_ids = {ref.tune_id for person in parsed.persons for ref in person.loras}
    if not parsed.persons:
        person_ids = {ref.tune_id for ref in parsed.base_loras}
    tags = requirements.tune_ids(parsed)
    # A name (not digits) is a named LoRA of the workers' model directory, for every tenant.
    named = [ref for ref in tags if not valid_tune_id(ref.tune_id)]
    problems, unknown = requirements.named_lora_problems(named, models, info)
    tags = [ref for ref in tags if valid_tune_id(ref.tune_id)]
    wanted = list(dict.fromkeys(ref.tune_id for ref in tags))  # read together, each once
    found = dict(zip(wanted, await asyncio.gather(*(tunes.find(tenant, t) for t in wanted)), strict=True))
    for ref in tags:
        field = ref.tag or f"<{ref.kind or 'lora'}:{ref.tune_id}>"
        tune = found[ref.tune_id]
        if tune is None:
            problems.append(Violation(field, f"tune {echo(ref.tune_id)} does not exist"))
            unknown.append(ref.tune_id)
            continue
        if not tune.file.key and ref.kind != "faceid":  # a faceid tune: reference images only
            problems.append(
                Violation(
                    field,
                    f"tune {ref.tune_id} is a faceid tune (reference images, no weights); "
                    f"write <faceid:{ref.tune_id}:1>",
                )
            )
            continue
        for model in models[(ref.kind, ref.tune_id)] if tune.file.key else ():
            family = requirements.model_family(info, model)
            # An unknown family (an older worker serving both) is left to the worker's own check.
            if family and tune.base_family != family:
                problems.append(
                    Violation(
                        field,
                        f"tune {ref.tune_id} is a {tune.base_family} {tune.kind}; model {model} is {family}",
                    )
                )
        if ref.kind == "faceid" and not tune.reference_images:
            problems.append(Violation(field, f"tune {ref.tune_id} has no reference images for <faceid:...>"))
        if ref.tune_id in person_ids and tune.reference_images:
            with_references = True
        if tune.file.key:
            files[ref.tune_id] = tune.file
        references[ref.tune_id] = list(tune.reference_images)
    if parsed.params.face_swap and not with_references:
        problems.append(
            Violation(
                "params.face_swap",
                "needs a person tune with reference images (none of the persons' tunes has any)"
                if parsed.persons
                else "needs a tune with reference images in the prompt (none of its tunes has any)",
            )
        )
    if not unknown:
        # {{name}} placeholders take the tunes' characteristics (parsed is changed only when all fill).
        problems += characteristics.apply(
            parsed, {tune_id: dict(tune.characteristics) for tune_id, tune in found.items() if tune}
        )
    if unknown:
        raise NotFound(
            violations_summary(problems),
            violations=problems,
            reason=Reason.UNKNOWN_TUNE,
            metadata={"tuneIds": ",".join(unknown)},
        )
    if problems:
        raise InvalidInput.of(problems)
    return files, references
