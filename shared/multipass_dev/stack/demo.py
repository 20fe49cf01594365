"""``multipass demo``: one multi-person job through the public API of a running stack.

Registers a random LoRA per person placeholder of ``examples/multi-person.prompt`` as a tune (built for
the stack's SD1.5-family model), substitutes the new tune ids into the prompt, submits it, follows it
with progress bars and downloads every pass output, mask and final image with a contact sheet.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from multipass.v1 import jobs_pb2
from multipass_client.channel import Client
from multipass_client.downloads import ObjectReader
from multipass_client.follow import follow_and_download

#: ``<lora:ID>`` or ``<lora:ID:WEIGHT>``.
LORA_TAG = re.compile(r"<lora:(?P<id>[^:>\s]+)(?P<weight>:[^>]*)?>")
#: ``ohwx woman`` → class ``woman``.
TOKEN_CLASS = re.compile(r"\b(?P<token>ohwx|sks)\s+(?P<cls>[A-Za-z]+)")
BREAK = re.compile(r"\bBREAK\b")
#: A ``name=value`` line of the parameter block (not part of the prompt text).
PARAM_LINE = re.compile(r"^\s*[a-z_]+\s*=")
#: Parameters that keep the demo quick on CPU with the tiny random models.
TINY_MODEL_PARAMS = {"steps": "4"}


@dataclass(frozen=True)
class Placeholder:
    """A tune id used in the example prompt, with the token and class of its person segment."""

    tune_id: str
    token: str
    class_name: str


def example_prompt_path() -> Path:
    """``examples/multi-person.prompt`` of the source tree (or of the current directory)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = root / "examples" / "multi-person.prompt"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "examples/multi-person.prompt not found next to the sources or in the current directory"
    )


def find_placeholders(prompt: str) -> list[Placeholder]:
    """Distinct LoRA tune ids in order of appearance, each with the token/class of its BREAK segment."""
    text = "\n".join(line for line in prompt.splitlines() if not PARAM_LINE.match(line))
    found: dict[str, Placeholder] = {}
    for segment in BREAK.split(text):
        person = TOKEN_CLASS.search(segment)
        for tag in LORA_TAG.finditer(segment):
            tune_id = tag.group("id")
            if tune_id not in found:
                found[tune_id] = Placeholder(
                    tune_id,
                    person.group("token") if person else "ohwx",
                    person.group("cls") if person else "person",
                )
    return list(found.values())


def substitute_tunes(prompt: str, mapping: dict[str, str]) -> str:
    """Replace the tune id of every ``<lora:ID...>`` tag found in ``mapping``."""

    def replace(match: re.Match) -> str:
        new = mapping.get(match.group("id"), match.group("id"))
        return f"<lora:{new}{match.group('weight') or ''}>"

    return LORA_TAG.sub(replace, prompt)


def sd15_model(model_dir: Path) -> Path:
    """The SD1.5-family diffusers model the demo LoRAs are built for."""
    base = Path(model_dir) / "diffusion"
    preferred = base / "sd15-tiny"
    if (preferred / "model_index.json").is_file():
        return preferred
    candidates = sorted(
        p.parent for p in base.glob("*/model_index.json") if not (p.parent / "text_encoder_2").exists()
    )
    if not candidates:
        raise FileNotFoundError(
            f"no SD1.5-family diffusers model (model_index.json without text_encoder_2) under {base}"
        )
    return candidates[0]


def register_demo_tunes(
    client: Client, placeholders: list[Placeholder], model: Path, console: Console
) -> dict[str, str]:
    """A random-weight LoRA per placeholder, registered as a tune; returns placeholder id → new tune id."""
    from multipass_dev.tiny_models.diffusion import write_random_lora

    mapping: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="multipass-demo-") as tmp:
        for position, placeholder in enumerate(placeholders):
            path = write_random_lora(
                model, Path(tmp) / f"demo-person-{position}.safetensors", seed=1000 + position
            )
            tune = client.tunes.register(
                path,
                token=placeholder.token,
                class_name=placeholder.class_name,
                base_family="sd15",
                name=f"demo {placeholder.token} {placeholder.class_name} {position}",
            )
            mapping[placeholder.tune_id] = tune.tune_id
            console.print(
                f"registered tune {tune.tune_id} ({placeholder.token} {placeholder.class_name}) for <lora:{placeholder.tune_id}>"
            )
    return mapping


def submit_with_installed_components(
    client: Client, prompt: str, params: dict[str, str], console: Console, attempts: int = 5
) -> tuple[jobs_pb2.SubmitJobResponse, dict[str, str]]:
    """Submit; when the stack lacks a component a parameter needs (FAILED_PRECONDITION naming
    ``params.<name>``), say so and submit again with that parameter turned off."""
    import grpc

    from multipass_client.errors import violations_of

    params = dict(params)
    for _ in range(attempts):
        try:
            return client.jobs.submit(prompt, params), params
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            missing = {
                field.removeprefix("params."): description
                for field, description in violations_of(error)
                if field.startswith("params.") and params.get(field.removeprefix("params.")) != "false"
            }
            if not missing:
                raise
            for name, description in missing.items():
                console.print(f"[yellow]{name}: {description}; the demo runs with {name}=false[/yellow]")
                params[name] = "false"
    return client.jobs.submit(prompt, params), params


def run_demo(
    client: Client,
    *,
    out_dir: Path,
    model_dir: Path,
    reader: ObjectReader | None,
    console: Console,
    prompt_path: Path | None = None,
    params: dict[str, str] | None = None,
    tiny_models: bool = True,
) -> jobs_pb2.Job:
    prompt_path = prompt_path or example_prompt_path()
    original = prompt_path.read_text(encoding="utf-8")
    placeholders = find_placeholders(original)
    mapping = register_demo_tunes(client, placeholders, sd15_model(model_dir), console)
    prompt = substitute_tunes(original, mapping)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = out_dir / "demo.prompt"
    written.write_text(prompt, encoding="utf-8")
    console.print(f"prompt with the new tune ids: {written}")
    job_params = {**(TINY_MODEL_PARAMS if tiny_models else {}), **(params or {})}
    response, job_params = submit_with_installed_components(client, prompt, job_params, console)
    for warning in response.warnings:
        console.print(f"warning: {warning}")
    console.print(f"submitted job {response.job_id}" + (f" with {job_params}" if job_params else ""))
    job, downloaded = follow_and_download(client, response.job_id, out_dir, reader, console)
    console.print()
    for image in downloaded.images:
        if image.contact_sheet is not None:
            console.print(f"contact sheet: {image.contact_sheet}")
    if tiny_models:
        console.print(
            "These images come from tiny random-weight models, so they look like noise: the demo exercises every "
            "pass, mask and event. For real images: `multipass models pull sd15 sam grounding faces` with "
            "MULTIPASS_MODEL_DIR set (docs/MODELS.md), then `make down && make run`."
        )
    console.print("The stack is still running (`multipass status`); `make down` stops it.")
    return job
