"""Named LoRAs: ``<lora:NAME:W>`` for files of the model directory's ``diffusion/loras/`` (A1111's Lora folder)."""

from __future__ import annotations

import shutil

import pytest
from diffusion_testkit import SD15_MODEL, SDXL_MODEL, box_mask, scene, spec

from multipass.errors import InvalidInput
from multipass.images import encode_png
from multipass.model_catalog.layout import named_lora_files
from multipass.v1 import prompt_pb2
from multipass_diffusion import named_loras
from multipass_diffusion.models import file_sha256
from multipass_diffusion.passes.context import PassInputs


def named(name: str, weight: float = 1.0) -> prompt_pb2.LoraRef:
    return prompt_pb2.LoraRef(tune_id=name, weight=weight, kind="lora", tag=f"<lora:{name}:{weight:g}>")


def test_a_named_lora_changes_the_pass_and_leaves_the_model_unmodified(engine):
    before = engine.run(spec(seed=4))
    tweaked = engine.run(spec(seed=4, loras=[named("detail-tweaker")]))
    after = engine.run(spec(seed=4))
    assert tweaked.image.tobytes() != before.image.tobytes()
    assert encode_png(after.image) == encode_png(before.image)
    # The weight counts, like a tune's.
    half = engine.run(spec(seed=4, loras=[named("detail-tweaker", 0.5)]))
    assert half.image.tobytes() not in (before.image.tobytes(), tweaked.image.tobytes())


def test_a_named_lora_in_a_person_pass_and_on_its_own_family_only(engine):
    source = scene(96, 96)
    mask = box_mask(source.size, (30, 30, 60, 80))
    person = {"kind": "person", "width": 0, "height": 0}
    plain = engine.run(spec(**person), PassInputs(image=source, mask=mask))
    tweaked = engine.run(spec(**person, loras=[named("detail-tweaker")]), PassInputs(image=source, mask=mask))
    assert tweaked.image.tobytes() != plain.image.tobytes()
    with pytest.raises(InvalidInput, match=r"<lora:sdxl-film-look:1>.*SDXL tune; model sd15-tiny"):
        engine.run(spec(loras=[named("sdxl-film-look")]))
    assert engine.run(spec(SDXL_MODEL, loras=[named("sdxl-film-look")])).image is not None


def test_a_name_that_is_not_installed_says_where_it_was_looked_for(engine):
    with pytest.raises(InvalidInput) as caught:
        engine.run(spec(loras=[named("no-such-style")]))
    (violation,) = caught.value.violations
    assert violation.field == "<lora:no-such-style:1>"
    assert "no named LoRA diffusion/loras/no-such-style.safetensors is installed" in violation.description
    # A tune id (digits) is never looked up in the folder: it needs its tune file.
    with pytest.raises(InvalidInput, match=r"<lora:123:1>: has no file in spec.tune_files$"):
        engine.run(spec(loras=[named("123")]))


def test_workers_list_each_named_lora_and_the_models_it_fits(engine):
    capabilities = set(engine.capabilities())
    assert {
        "lora:detail-tweaker",
        f"lora:detail-tweaker:{SD15_MODEL}",
        "lora:sdxl-film-look",
        f"lora:sdxl-film-look:{SDXL_MODEL}",
    } <= capabilities
    assert f"lora:detail-tweaker:{SDXL_MODEL}" not in capabilities
    assert f"lora:sdxl-film-look:{SD15_MODEL}" not in capabilities


def test_installed_names_skip_what_cannot_be_a_tag(model_root, tmp_path):
    folder = tmp_path / "diffusion" / "loras"
    folder.mkdir(parents=True)
    source = model_root / "diffusion" / "loras" / "detail-tweaker.safetensors"
    for name in ("film", "12345", ".hidden", "with space"):
        shutil.copy(source, folder / f"{name}.safetensors")
    (folder / "notes.txt").write_text("not a LoRA")
    assert list(named_lora_files(tmp_path)) == ["film"]
    assert named_loras.path_of(tmp_path, "film") == folder / "film.safetensors"
    assert named_loras.path_of(tmp_path, "../loras/film") is None
    assert named_loras.sha256(folder / "film.safetensors") == file_sha256(source)
