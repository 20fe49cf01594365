"""Jobs as JSON: the gateway's ``Job`` (proto field names) plus the links this service adds."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from multipass.v1 import jobs_pb2


def message_dict(message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data with the proto's own field names; enums by name; every field
    present, zero values included (a client reads `image_index: 0`, not a missing key)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def job_files(job: jobs_pb2.Job) -> list[dict[str, Any]]:
    """Every stored image of a job: each pass output, each mask and each final image, in chain order."""
    files: list[dict[str, Any]] = []
    for image in job.images:
        for state in image.passes:
            if state.output.key:
                files.append({"image": image.index, "name": state.name, "kind": "pass", "ref": state.output})
        for name in sorted(image.masks):
            files.append(
                {"image": image.index, "name": f"mask-{name}", "kind": "mask", "ref": image.masks[name]}
            )
        if image.final.key:
            files.append({"image": image.index, "name": "final", "kind": "final", "ref": image.final})
    return files


def file_path(job_id: str, image: int, name: str) -> str:
    return f"/v1/jobs/{job_id}/files/{image}/{name}.png"


def job_view(job: jobs_pb2.Job, base_url: str) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers: the Job, plus ``links`` and ``files`` served by this service."""
    view = message_dict(job)
    view["files"] = [
        {
            "image": entry["image"],
            "name": entry["name"],
            "kind": entry["kind"],
            "url": base_url + file_path(job.job_id, entry["image"], entry["name"]),
        }
        for entry in job_files(job)
    ]
    view["links"] = {
        "self": f"{base_url}/v1/jobs/{job.job_id}",
        "events": f"{base_url}/v1/jobs/{job.job_id}/events",
        "archive": f"{base_url}/v1/jobs/{job.job_id}/archive.zip",
    }
    return view
