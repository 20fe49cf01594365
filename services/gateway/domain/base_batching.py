"""Which first passes of a new job run as one diffusion batch (pure: protobuf in, protobuf out).

Base passes a job dispatches at its start that differ only in their seed go as ONE request: the lead
image's request carries the others as ``BatchMember`` entries and each member's planned pass remembers its
lead (``batched_with``); every chain then advances on its own. Which requests batch and how failures are
handled: docs/DIFFUSION.md ("Batched base passes").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from multipass.v1 import diffusion_pb2, events_pb2

#: Images of one batched request unless the gateway's settings say otherwise (GPU memory grows with it).
DEFAULT_MAX_BATCH = 4
BATCHED_KIND = "base"

#: (image index, pass index) of a pass in a job record.
PassAt = tuple[int, int]


def batch_key(entry: events_pb2.OutboxRequest) -> bytes | None:
    """What must be equal for two requests to share a batch; None when this request never batches."""
    request = entry.request
    if request.spec.kind != BATCHED_KIND or request.attempt != 1 or len(request.batch):
        return None
    spec = diffusion_pb2.PassSpec()
    spec.CopyFrom(request.spec)
    spec.ClearField("seed")
    identity = f"{entry.subject}\0{request.pass_name}\0{request.output_bucket}\0".encode()
    return identity + spec.SerializeToString(deterministic=True)


def group(entries: Sequence[events_pb2.OutboxRequest], max_batch: int) -> list[list[int]]:
    """Indices of ``entries`` grouped into batches of at most ``max_batch``, in order of first appearance.

    Each group's first index is its lead; a group of one is an ordinary (unbatched) request.
    """
    groups: list[list[int]] = []
    open_groups: dict[bytes, list[int]] = {}
    for index, entry in enumerate(entries):
        key = batch_key(entry) if max_batch > 1 else None
        current = open_groups.get(key) if key is not None else None
        if current is not None and len(current) < max_batch:
            current.append(index)
            continue
        fresh = [index]
        groups.append(fresh)
        if key is not None:
            open_groups[key] = fresh
    return groups


def attach_members(lead: diffusion_pb2.PassRequest, members: Sequence[diffusion_pb2.PassRequest]) -> None:
    """Add each member request to ``lead`` as a :class:`BatchMember` (what differs: image, attempt, seed, key).

    A batched request names no ``next_pass`` (the passes after it differ per member)."""
    if members:
        lead.ClearField("next_pass")
    for member in members:
        lead.batch.add(
            image_index=member.image_index,
            attempt=member.attempt,
            seed=member.spec.seed,
            output_key=member.output_key,
        )


def batch_first_passes(
    record: events_pb2.JobRecord,
    dispatch: Sequence[PassAt],
    build: Callable[[events_pb2.JobRecord, int, int], events_pb2.OutboxRequest],
    max_batch: int,
) -> tuple[list[PassAt], dict[PassAt, list[PassAt]]]:
    """Group a starting job's first passes: returns (passes to dispatch, members of each batched lead).

    ``build`` makes a pass's request from the record (``job_state.build_request``): specs are compared
    as they will be sent, with the chain's images and masks filled in. Members are marked in the record
    (``batched_with`` = the lead's image index) and left out of the returned dispatch list.
    """
    if max_batch <= 1 or len(dispatch) <= 1:
        return list(dispatch), {}
    entries = [build(record, image, index) for image, index in dispatch]
    leads: list[PassAt] = []
    batches: dict[PassAt, list[PassAt]] = {}
    for indices in group(entries, max_batch):
        lead = dispatch[indices[0]]
        leads.append(lead)
        if len(indices) == 1:
            continue
        members = [dispatch[i] for i in indices[1:]]
        batches[lead] = members
        for image, index in members:
            record.plans[image].passes[index].batched_with = lead[0]
    return leads, batches


def members_riding_with(record: events_pb2.JobRecord, image_index: int, pass_name: str) -> list[PassAt]:
    """Passes named ``pass_name`` of other images still waiting in image ``image_index``'s batch.

    A batched request that is given up on as a whole (its deliveries all died with their workers) is
    reported for the lead only; the transition applies that failure to these members as well.
    """
    found = []
    for image, plan in enumerate(record.plans):
        if image == image_index:
            continue
        for index, planned in enumerate(plan.passes):
            if (
                planned.name == pass_name
                and planned.HasField("batched_with")
                and planned.batched_with == image_index
            ):
                found.append((image, index))
    return found
