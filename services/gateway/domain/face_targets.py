"""Which detected faces a face pass repaints, and the prompt and adapters each gets in its request (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, segmentation_pb2
from multipass_gateway.domain.face_slots import slot_of_face

#: Face pass kinds that load each face's adapters (the others only need the faces' boxes and tunes).
ADAPTER_FACE_KINDS = frozenset({"faces"})


@dataclass(frozen=True)
class FaceFilter:
    """Which detected faces the face passes take (ADetailer's min ratio and k largest)."""

    #: Faces whose box covers less of the image than this (0..1) are left as they are; 0 takes every face.
    min_area_ratio: float = 0.0
    #: At most this many faces, the largest first; 0 takes every face.
    max_count: int = 0

    def select(
        self, faces: list[segmentation_pb2.Face], width: int, height: int
    ) -> tuple[list[segmentation_pb2.Face], list[str]]:
        """The faces to repaint, in detection order, and a warning for each rule that left faces out."""

        def area(face: segmentation_pb2.Face) -> float:
            return max(0.0, face.box.x1 - face.box.x0) * max(0.0, face.box.y1 - face.box.y0)

        image_area = max(1, width * height)
        kept = [face for face in faces if area(face) / image_area >= self.min_area_ratio]
        warnings = []
        if len(kept) < len(faces):
            warnings.append(
                f"{len(faces) - len(kept)} face(s) smaller than {self.min_area_ratio:g} of the image left as they are"
            )
        if self.max_count and len(kept) > self.max_count:
            largest = set(sorted(range(len(kept)), key=lambda i: -area(kept[i]))[: self.max_count])
            warnings.append(
                f"{len(kept) - self.max_count} face(s) beyond the {self.max_count} largest left as they are"
            )
            kept = [face for i, face in enumerate(kept) if i in largest]
        return kept, warnings


def face_targets(
    record: events_pb2.JobRecord,
    image_index: int,
    faces: list[segmentation_pb2.Face],
    spec: diffusion_pb2.PassSpec,
    scale: tuple[float, float] | None,
) -> list[diffusion_pb2.FaceTarget]:
    """Each face (box and landmarks) with the prompt and adapters of its person (the base prompt for faces
    outside every slot).

    ``scale`` (x, y) maps slot boxes to the current image when the segmentation service could not assign
    faces itself (the image was resized since the masks were made): the face goes to the slot holding its
    centre, the nearest person's where several do (:mod:`.face_slots`).
    """
    plan = record.plans[image_index]
    persons = {p.person_index: p.spec for p in plan.passes if p.kind == "person"}
    targets = []
    for face in faces:
        slot = face.slot_index if scale is None else slot_of_face(face, record.slots, scale)
        source = persons.get(slot)
        target = diffusion_pb2.FaceTarget(box=face.box, landmarks=face.landmarks)
        if source is not None:
            target.prompt, target.negative_prompt = source.prompt, source.negative_prompt
            target.loras.extend(source.loras)
        else:
            target.prompt, target.negative_prompt = spec.prompt, spec.negative_prompt
            target.loras.extend(spec.loras)
        targets.append(target)
    return targets


def faces_request(
    record: events_pb2.JobRecord,
    request: diffusion_pb2.PassRequest,
    faces: list[segmentation_pb2.Face],
    scale: tuple[float, float] | None,
) -> diffusion_pb2.PassRequest:
    """The diffusion request of a face pass: ``request`` with ``spec.faces`` filled in.

    Each face gets its person's prompt and LoRAs (:func:`face_targets`). A ``faces`` pass activates
    them, so the tune file of each (with its sha256, as planned for the person passes) is added to
    ``spec.tune_files`` for the worker to fetch, and for a ``<faceid:...>`` ref its tune's reference
    images (``<tune_id>/reference-<k>``) as the person pass had them; ``face_swap`` already carries its
    persons' reference images from the plan.
    """
    forwarded = diffusion_pb2.PassRequest()
    forwarded.CopyFrom(request)
    forwarded.spec.faces.extend(face_targets(record, request.image_index, faces, request.spec, scale))
    if request.spec.kind in ADAPTER_FACE_KINDS:
        for target in forwarded.spec.faces:
            for ref in target.loras:
                if ref.kind == "faceid":
                    for key, image in _reference_files(record, ref.tune_id).items():
                        forwarded.spec.tune_files[key].CopyFrom(image)
                elif ref.tune_id not in forwarded.spec.tune_files:
                    file = _tune_file(record, ref.tune_id)
                    if file is not None:
                        forwarded.spec.tune_files[ref.tune_id].CopyFrom(file)
    return forwarded


def _reference_files(record: events_pb2.JobRecord, tune_id: str) -> dict[str, common_pb2.ObjectRef]:
    """The ``<tune_id>/reference-<k>`` entries the plan's passes carry for the tune."""
    prefix = f"{tune_id}/reference-"
    return {
        key: ref
        for plan in record.plans
        for planned in plan.passes
        for key, ref in planned.spec.tune_files.items()
        if key.startswith(prefix)
    }


def _tune_file(record: events_pb2.JobRecord, tune_id: str) -> common_pb2.ObjectRef | None:
    for plan in record.plans:
        for planned in plan.passes:
            if tune_id in planned.spec.tune_files:
                return planned.spec.tune_files[tune_id]
    return None
