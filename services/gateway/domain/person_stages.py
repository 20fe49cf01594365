"""Parallel person passes: which persons of an image may run at the same time, and the chain as a graph (pure).

When the ``segment`` pass completes, :func:`regroup` predicts each person's crop box from its mask's box
with the worker's own box code and splits the persons into stages of persons that commute; a stage of two
or more becomes its persons plus a ``composite`` pass. :func:`ready_passes`, :func:`input_position` and
:func:`composite_layers` read that graph. The rule, and why it is exact: docs/PARALLEL_PERSONS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multipass import crop_geometry
from multipass.crop_geometry import Box
from multipass.v1 import diffusion_pb2, events_pb2, jobs_pb2, segmentation_pb2

#: Passes done well enough for the passes depending on them to start.
DONE = frozenset({jobs_pb2.PASS_STATUS_COMPLETED, jobs_pb2.PASS_STATUS_SKIPPED})
COMPOSITE_KIND = "composite"
#: Capability a worker advertises when it runs composite passes.
COMPOSITE_CAPABILITY = "pass:composite"
#: Progress weight of a composite pass (no denoising steps; a copy of pixels).
COMPOSITE_WEIGHT = 1


def parallel_working_size(info: diffusion_pb2.InfoResponse, person_model: str, *, enabled: bool) -> int:
    """The working size (short side) person crops of ``person_model`` are made at; 0 = do not parallelise.

    Diffusion.Info reports one working size, that of its first model's family; it applies to every model
    when the worker serves one family. A mixed worker, a worker that lists its pass kinds without
    ``composite``, or no working size at all leave the persons sequential.
    """
    if not enabled or info.working_size <= 0:
        return 0
    capabilities = set(info.capabilities)
    if any(c.startswith("pass:") for c in capabilities) and COMPOSITE_CAPABILITY not in capabilities:
        return 0
    families = {part.strip() for part in info.model_family.split(",") if part.strip()}
    if len(families) != 1:
        return 0
    family = next(iter(families))
    if info.model_families and info.model_families.get(person_model, family) != family:
        return 0
    return info.working_size


# --- the rule ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """Where one person pass may read (``crop``) and write (``support``); both are upper bounds."""

    #: None: the pass reads and writes nothing (empty mask: it returns its image unchanged).
    crop: Box | None
    support: Box | None
    #: False when the mask or its box is unknown: the person then runs alone.
    known: bool = True


UNKNOWN = Footprint(None, None, known=False)


def footprint(
    mask: segmentation_pb2.MaskResult, spec: diffusion_pb2.PassSpec, working_size: int
) -> Footprint:
    """The predicted crop box and feathered-mask support of a person pass on the mask's image."""
    width, height = mask.mask.width, mask.mask.height
    if width <= 0 or height <= 0 or working_size <= 0:
        return UNKNOWN
    x0, y0, x1, y1 = (int(round(v)) for v in (mask.box.x0, mask.box.y0, mask.box.x1, mask.box.y1))
    if x1 <= x0 or y1 <= y0:
        if mask.area_fraction > 0:
            return UNKNOWN  # a mask with pixels but no box: do not guess
        return Footprint(None, None)
    reach = crop_geometry.feather_reach(crop_geometry.feather_sigma(spec.mask_blur))
    support = crop_geometry.grown_box(Box(x0, y0, x1, y1), reach, width, height)
    crop = crop_geometry.person_crop_box(
        support,
        width,
        height,
        crop_padding=spec.crop_padding,
        crop_factor=spec.crop_factor,
        spec_width=spec.width,
        spec_height=spec.height,
        working_size=working_size,
    )
    return Footprint(crop, support)


def independent(a: Footprint, b: Footprint) -> bool:
    """True when neither pass reads a pixel the other may change (so their order does not matter)."""
    if not (a.known and b.known):
        return False
    if a.crop is None or b.crop is None:
        return True
    return not a.crop.intersects(b.support) and not b.crop.intersects(a.support)


def stages(footprints: Sequence[Footprint]) -> list[list[int]]:
    """Split persons (in chain order) into sequential stages of mutually independent persons.

    Each person joins the stage right after the last stage holding a person it conflicts with (a new stage
    at the end when there is none): it only moves ahead of persons it commutes with, so running the stages
    in order, each stage's persons in any order, gives the sequential result.
    """
    result: list[list[int]] = []
    for position, mine in enumerate(footprints):
        target = 0
        for number, stage in enumerate(result):
            if any(not independent(mine, footprints[other]) for other in stage):
                target = number + 1
        if target == len(result):
            result.append([position])
        else:
            result[target].append(position)
    return result


# --- the chain as a graph ------------------------------------------------------------------------------


def is_graph(plan: events_pb2.ImagePlan) -> bool:
    return any(planned.depends_on for planned in plan.passes)


def _index(plan: events_pb2.ImagePlan, name: str) -> int | None:
    for index, planned in enumerate(plan.passes):
        if planned.name == name:
            return index
    return None


def dependencies(plan: events_pb2.ImagePlan, index: int) -> list[int]:
    """Indices of the passes pass ``index`` waits for (the pass before it when none are named)."""
    named = plan.passes[index].depends_on
    if not named:
        return [index - 1] if index > 0 else []
    return [i for i in (_index(plan, name) for name in named) if i is not None]


def ready_passes(plan: events_pb2.ImagePlan, states: Sequence[jobs_pb2.PassState]) -> list[int]:
    """Pending passes all of whose dependencies are done, in chain order."""
    return [
        index
        for index, state in enumerate(states)
        if state.status == jobs_pb2.PASS_STATUS_PENDING
        and all(states[dep].status in DONE for dep in dependencies(plan, index))
    ]


def input_position(plan: events_pb2.ImagePlan, index: int) -> int:
    """The chain position whose current image pass ``index`` works on (``job_state.current_image``)."""
    after = plan.passes[index].input_after
    if after:
        found = _index(plan, after)
        if found is not None:
            return found + 1
    return index


def composite_layers(
    record: events_pb2.JobRecord, image_index: int, index: int
) -> list[diffusion_pb2.CompositeLayer]:
    """The layers of composite pass ``index``: each person's output, mask and feather, in chain order."""
    plan = record.plans[image_index]
    image = record.job.images[image_index]
    layers = []
    for dep in dependencies(plan, index):
        planned, state = plan.passes[dep], image.passes[dep]
        layer = diffusion_pb2.CompositeLayer(mask_blur=planned.spec.mask_blur)
        if state.output.key:
            layer.image.CopyFrom(state.output)
        mask = image.masks.get(f"person-{planned.person_index}")
        if mask is not None:
            layer.mask.CopyFrom(mask)
        layers.append(layer)
    return layers


def regroup(
    record: events_pb2.JobRecord, image_index: int, masks: Sequence[segmentation_pb2.MaskResult]
) -> list[list[str]]:
    """Turn image ``image_index``'s sequential persons into parallel stages where the rule allows.

    Called when its ``segment`` pass completed with ``masks``. Rewrites the plan and the pass states of the
    persons (all still pending) in place: each parallel stage's persons, then its composite pass. Returns the
    stages (pass names) when the chain changed, else an empty list.
    """
    plan = record.plans[image_index]
    image = record.job.images[image_index]
    positions = [i for i, planned in enumerate(plan.passes) if planned.kind == "person"]
    if len(positions) < 2 or positions != list(range(positions[0], positions[0] + len(positions))):
        return []
    persons = [plan.passes[i] for i in positions]
    if any(p.parallel_working_size <= 0 or p.depends_on for p in persons) or positions[0] == 0:
        return []
    if any(image.passes[i].status != jobs_pb2.PASS_STATUS_PENDING for i in positions):
        return []
    by_person = {}
    for mask in masks:
        name = mask.label or f"person-{mask.index}"
        by_person[name] = mask
    prints = []
    for planned in persons:
        mask = by_person.get(f"person-{planned.person_index}")
        prints.append(
            UNKNOWN if mask is None else footprint(mask, planned.spec, planned.parallel_working_size)
        )
    grouping = stages(prints)
    if all(len(stage) == 1 for stage in grouping):
        return []

    before = plan.passes[positions[0] - 1].name
    new_plan: list[events_pb2.PlannedPass] = []
    new_states: list[jobs_pb2.PassState] = []
    composites = 0
    for stage in grouping:
        members = [persons[p] for p in stage]
        if len(members) == 1:
            new_plan.append(_copy(members[0]))
            new_states.append(_copy(image.passes[positions[stage[0]]]))
            before = members[0].name
            continue
        for member, position in zip(members, stage, strict=True):
            planned = _copy(member)
            planned.depends_on.append(before)
            planned.input_after = before
            new_plan.append(planned)
            new_states.append(_copy(image.passes[positions[position]]))
        name = f"composite-{composites}"
        composites += 1
        new_plan.append(_composite(name, members, before))
        new_states.append(
            jobs_pb2.PassState(name=name, kind=COMPOSITE_KIND, status=jobs_pb2.PASS_STATUS_PENDING)
        )
        before = name

    start, end = positions[0], positions[-1] + 1
    _splice(plan.passes, start, end, new_plan)
    _splice(image.passes, start, end, new_states)
    return [[persons[p].name for p in stage] for stage in grouping]


def _composite(name: str, members: Sequence[events_pb2.PlannedPass], before: str) -> events_pb2.PlannedPass:
    first = members[0].spec
    spec = diffusion_pb2.PassSpec(
        kind=COMPOSITE_KIND, model=first.model, width=first.width, height=first.height
    )
    planned = events_pb2.PlannedPass(
        name=name,
        kind=COMPOSITE_KIND,
        runs_in="diffusion",
        person_index=-1,
        weight=COMPOSITE_WEIGHT,
        spec=spec,
        input_after=before,
    )
    planned.depends_on.extend(member.name for member in members)
    return planned


def _copy(message):
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def _splice(field, start: int, end: int, replacement: Sequence) -> None:
    """Replace ``field[start:end]`` (a repeated message field) by ``replacement``."""
    tail = [_copy(item) for item in field[end:]]
    del field[start:]
    for item in (*replacement, *tail):
        field.add().CopyFrom(item)
