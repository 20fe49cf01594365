"""<faceid:ID:W>: IP-Adapter FaceID on the tune's reference identity; off, the model is exactly the plain one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusion_testkit import MODELS_ROOT, SD15_MODEL, SDXL_MODEL, box_mask, pixels, scene, spec
from PIL import Image

from multipass.errors import FailedPrecondition, InvalidInput
from multipass.v1 import common_pb2, prompt_pb2
from multipass_dev.tiny_models import finishing as tiny_finishing
from multipass_dev.tiny_models.diffusion import write_random_lora
from multipass_dev.tiny_models.ip_adapters import FACEID_FILE, faceid_path
from multipass_diffusion import faceid
from multipass_diffusion.imaging.crop_inpaint import feather
from multipass_diffusion.models import file_sha256
from multipass_diffusion.nets import face_embedding
from multipass_diffusion.passes.context import PassInputs
from multipass_diffusion.tune_files import reference_key


@pytest.fixture(scope="module", autouse=True)
def embedder_installed(model_root):
    """FaceID's identities come from the face swapper's embedder (a finishing component)."""
    tiny_finishing.build(MODELS_ROOT)


@pytest.fixture(autouse=True)
def no_faceid_left(engine):
    yield
    for runtime in engine.runtimes.values():
        runtime.faceid.deactivate()
        runtime.adapters.deactivate()


def face_picture(seed: int, size: int = 80) -> Image.Image:
    """A face-like crop (background, skin, eyes) whose colours depend on ``seed``: one identity per seed."""
    rng = np.random.default_rng(seed)
    background, skin, eyes = rng.integers(0, 256, size=(3, 3))
    array = np.empty((size, size + 16, 3), np.float32)
    array[:] = background
    array[size // 6 : 5 * size // 6, size // 4 : 3 * size // 4 + 16] = skin
    for x in (size // 3, 2 * size // 3):
        array[size // 3 : size // 3 + 8, x : x + 8] = eyes
    array += rng.normal(0, 8, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def references(directory: Path, tune_id: str, seeds) -> tuple[dict, dict]:
    files, paths = {}, {}
    for index, seed in enumerate(seeds):
        path = directory / f"{tune_id}-ref-{index}-{seed}.png"
        face_picture(seed).save(path)
        key = reference_key(tune_id, index)
        files[key] = common_pb2.ObjectRef(
            bucket="multipass-tunes", key=f"tunes/t/{tune_id}/ref-{index}.png", sha256=file_sha256(path)
        )
        paths[key] = path
    return files, paths


def faceid_spec(directory: Path, tune_id: str = "40", weight: float = 1.0, seeds=(1, 2), **fields):
    files, paths = references(directory, tune_id, seeds)
    loras = list(fields.pop("loras", [])) + [
        prompt_pb2.LoraRef(tune_id=tune_id, weight=weight, kind="faceid")
    ]
    files.update(fields.pop("tune_files", {}))
    paths.update(fields.pop("tune_paths", {}))
    return spec(loras=loras, tune_files=files, **fields), paths


def unet_output(unet, identity: torch.Tensor | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    extra = {"added_cond_kwargs": {"image_embeds": [identity]}} if identity is not None else {}
    with torch.no_grad():
        return unet(sample, 500, context, **extra).sample


def disk_unet(subfolder: str):
    from diffusers import UNet2DConditionModel

    path = MODELS_ROOT / "diffusion" / SD15_MODEL / subfolder
    return UNet2DConditionModel.from_pretrained(path, local_files_only=True).eval()


def test_the_tiny_adapters_have_the_faceid_layout_and_non_zero_weights(engine):
    from safetensors.torch import load_file

    for model in (SD15_MODEL, SDXL_MODEL):
        runtime = engine.runtime(model)
        path = faceid_path(MODELS_ROOT / "diffusion", runtime.family)
        assert faceid.weights_file(MODELS_ROOT, runtime.family) == path
        state = load_file(str(path))
        width = runtime.base.cross_attention_dim
        assert state["image_proj.proj.0.weight"].shape[1] == 512
        assert state["image_proj.proj.2.weight"].shape[0] == 4 * width
        assert state["image_proj.norm.weight"].shape == (width,)
        ip = [k for k in state if k.endswith(("to_k_ip.weight", "to_v_ip.weight"))]
        assert ip and all(state[k].abs().mean() > 0.1 for k in ip)
        assert state["image_proj.proj.2.weight"].abs().mean() > 0.01
        assert (runtime.family == "sd15") == any("_lora." in k for k in state)


def test_faceid_is_a_capability_of_each_model_with_an_adapter(engine):
    found = engine.capabilities()
    assert {"faceid", f"faceid:{SD15_MODEL}", f"faceid:{SDXL_MODEL}"} <= set(found)


def test_faceid_changes_the_output_and_weight_zero_is_no_faceid(engine, tmp_path):
    plain = engine.run(spec(seed=5))
    identity_spec, paths = faceid_spec(tmp_path, seed=5)
    conditioned = engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert np.abs(pixels(conditioned.image) - pixels(plain.image)).mean() > 3.0
    assert conditioned.metadata["faceid"] == "40:1"
    assert conditioned.metadata["adapters"].startswith("tfaceid_")  # FaceID's own LoRA
    zero_spec, paths = faceid_spec(tmp_path, weight=0.0, seed=5)
    zero = engine.run(zero_spec, PassInputs(tune_paths=paths))
    assert np.array_equal(pixels(zero.image), pixels(plain.image))
    half_spec, paths = faceid_spec(tmp_path, weight=0.5, seed=5)
    half = engine.run(half_spec, PassInputs(tune_paths=paths))
    assert not np.array_equal(pixels(half.image), pixels(conditioned.image))
    assert len({plain.spec_hash, conditioned.spec_hash, zero.spec_hash, half.spec_hash}) == 4
    # The same request again: same identity, same key, same bytes.
    again = engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert again.spec_hash == conditioned.spec_hash
    assert np.array_equal(pixels(again.image), pixels(conditioned.image))


def test_the_pass_cache_key_holds_the_identity(engine, settings, tmp_path):
    from multipass_diffusion.engine import Engine
    from multipass_diffusion.pass_cache import MemoryPassCache

    cached = Engine(settings, cache=MemoryPassCache(8))
    cached.runtimes = engine.runtimes
    identity_spec, paths = faceid_spec(tmp_path, seeds=(1, 2), seed=12)
    first = cached.run(identity_spec, PassInputs(tune_paths=paths))
    hit = cached.run(identity_spec, PassInputs(tune_paths=paths))
    assert not first.cache_hit and hit.cache_hit and hit.spec_hash == first.spec_hash
    assert hit.metadata["faceid"] == "40:1"
    # Other reference pictures under the same keys (new sha256s): another identity, another key.
    other_spec, other_paths = faceid_spec(tmp_path, seeds=(5, 6), seed=12)
    assert sorted(other_spec.tune_files) == sorted(identity_spec.tune_files)
    other = cached.run(other_spec, PassInputs(tune_paths=other_paths))
    assert not other.cache_hit and other.spec_hash != first.spec_hash


def test_deactivation_restores_the_unets_exactly(engine, tmp_path):
    runtime = engine.runtime(SD15_MODEL)
    components = runtime.base
    on_disk = {"unet": unet_output(disk_unet("unet")), "unet_inpaint": unet_output(disk_unet("unet_inpaint"))}
    before = engine.run(spec(seed=8))
    identity_spec, paths = faceid_spec(tmp_path, seed=8)
    engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert runtime.faceid.attached is components
    assert components.pipe.unet.encoder_hid_proj is not None
    after = engine.run(spec(seed=8))
    assert runtime.faceid.attached is None
    for unet in components.unets:
        assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
        assert not any("IPAdapter" in type(p).__name__ for p in unet.attn_processors.values())
    assert torch.equal(unet_output(components.pipe.unet), on_disk["unet"])
    assert torch.equal(unet_output(components.inpaint_unet), on_disk["unet_inpaint"])
    assert np.array_equal(pixels(after.image), pixels(before.image))


def test_the_ip_adapter_layers_alone_change_the_unet(engine, tmp_path):
    """The projection and to_k_ip/to_v_ip, without FaceID's LoRA, condition the UNet on the identity."""
    runtime = engine.runtime(SD15_MODEL)
    identity_spec, paths = faceid_spec(tmp_path)
    request = faceid.resolve(identity_spec, PassInputs(tune_paths=paths), runtime)
    other_spec, other_paths = faceid_spec(tmp_path, "41", seeds=(9,))
    other = faceid.resolve(other_spec, PassInputs(tune_paths=other_paths), runtime)
    unet = runtime.base.pipe.unet
    plain = unet_output(unet)
    lora = runtime.faceid.activate(runtime.base, request)  # returned to the engine, which activates it
    assert lora is not None and lora.tag == "<faceid:40:1>"
    as_request = torch.tensor(request.embedding).reshape(1, 1, 512)
    as_other = torch.tensor(other.embedding).reshape(1, 1, 512)
    conditioned = unet_output(unet, as_request)
    assert (conditioned - plain).abs().mean() > 0.03
    assert (unet_output(unet, as_other) - conditioned).abs().mean() > 0.01
    runtime.faceid.activate(runtime.base, faceid.FaceIdRequest(request.tune_id, 0.0, request.embedding))
    assert torch.equal(unet_output(unet, as_request), plain)
    runtime.faceid.deactivate()
    assert torch.equal(unet_output(unet), plain)


def test_different_identities_give_different_outputs(engine, tmp_path):
    first_spec, first_paths = faceid_spec(tmp_path, "40", seeds=(1, 2), seed=6)
    other_spec, other_paths = faceid_spec(tmp_path, "41", seeds=(30, 31), seed=6)
    first = engine.run(first_spec, PassInputs(tune_paths=first_paths))
    other = engine.run(other_spec, PassInputs(tune_paths=other_paths))
    assert np.abs(pixels(first.image) - pixels(other.image)).mean() > 2.0
    assert first.spec_hash != other.spec_hash


def test_identities_are_the_normalised_mean_and_cached_by_sha256(engine, tmp_path, monkeypatch):
    runtime = engine.runtime(SD15_MODEL)
    identity_spec, paths = faceid_spec(tmp_path, "42", seeds=(3, 4))
    first = faceid.resolve(identity_spec, PassInputs(tune_paths=paths), runtime)
    embedder = face_embedding.load_embedder(runtime.model_dir, device="cpu", needed_by="test")
    pictures = [Image.open(paths[reference_key("42", k)]) for k in range(2)]
    mean = np.mean([embedder.embed(p) for p in pictures], axis=0)
    assert np.allclose(first.embedding, mean / np.linalg.norm(mean), atol=1e-6)
    assert abs(float(np.linalg.norm(first.embedding)) - 1.0) < 1e-5
    calls = []
    monkeypatch.setattr(embedder, "embed", lambda image: calls.append(image) or np.ones(512, np.float32))
    again = faceid.resolve(identity_spec, PassInputs(tune_paths=paths), runtime)
    assert calls == [] and again.embedding is first.embedding


def test_person_pass_with_faceid_and_a_lora(engine, tmp_path):
    lora = write_random_lora(MODELS_ROOT / "diffusion" / SD15_MODEL, tmp_path / "lora.safetensors", seed=3)
    source = scene(96, 96)
    mask = box_mask(source.size, (30, 30, 60, 80))
    lora_ref = prompt_pb2.LoraRef(tune_id="7", weight=1.0, kind="lora")
    lora_file = {
        "7": common_pb2.ObjectRef(bucket="multipass-tunes", key="tunes/t/7/l", sha256=file_sha256(lora))
    }
    fields = {"kind": "person", "width": 0, "height": 0, "loras": [lora_ref], "tune_files": lora_file}
    plain = engine.run(spec(**fields), PassInputs(image=source, mask=mask, tune_paths={"7": lora}))
    identity_spec, paths = faceid_spec(tmp_path, tune_paths={"7": lora}, **fields)
    person = engine.run(identity_spec, PassInputs(image=source, mask=mask, tune_paths=paths))
    assert person.metadata["faceid"] == "40:1"
    assert person.metadata["adapters"].split(",")[0].startswith("t7_")
    assert "tfaceid_" in person.metadata["adapters"]
    changed = np.abs(pixels(person.image) - pixels(plain.image)).sum(axis=-1) > 0
    assert changed.sum() > 100
    assert not changed[feather(np.asarray(mask), 4) == 0].any()  # only inside the feathered mask
    again = engine.run(spec(**fields), PassInputs(image=source, mask=mask, tune_paths={"7": lora}))
    assert np.array_equal(pixels(again.image), pixels(plain.image))


def test_sdxl_faceid_changes_the_output(engine, tmp_path):
    plain = engine.run(spec(SDXL_MODEL, seed=2))
    identity_spec, paths = faceid_spec(tmp_path, model=SDXL_MODEL, seed=2)
    conditioned = engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert np.abs(pixels(conditioned.image) - pixels(plain.image)).mean() > 2.0
    assert "adapters" not in conditioned.metadata  # the tiny SDXL adapter has no LoRA
    assert np.array_equal(pixels(engine.run(spec(SDXL_MODEL, seed=2)).image), pixels(plain.image))


def test_without_guidance_the_identity_is_not_doubled(engine, tmp_path):
    plain = engine.run(spec(cfg_scale=1.0, seed=4))
    identity_spec, paths = faceid_spec(tmp_path, cfg_scale=1.0, seed=4)
    assert not np.array_equal(
        pixels(engine.run(identity_spec, PassInputs(tune_paths=paths)).image), pixels(plain.image)
    )


def test_a_faceid_tag_without_reference_images_names_the_tag(engine, tmp_path):
    bare = spec(loras=[prompt_pb2.LoraRef(tune_id="43", weight=0.8, kind="faceid")])
    with pytest.raises(InvalidInput, match=r"<faceid:43:0.8>: tune 43 has no reference images"):
        engine.run(bare)
    listed, _ = faceid_spec(tmp_path, "44")
    with pytest.raises(
        FailedPrecondition, match=r"<faceid:44:1>: reference image 44/reference-0 was not fetched"
    ):
        engine.run(listed)
    two, paths = faceid_spec(
        tmp_path, "45", loras=[prompt_pb2.LoraRef(tune_id="46", weight=1.0, kind="faceid")]
    )
    with pytest.raises(InvalidInput, match=r"<faceid:45:1>: a pass takes one <faceid:...> tag"):
        engine.run(two, PassInputs(tune_paths=paths))


def test_missing_weights_or_embedder_fail_naming_the_file(engine, tmp_path, monkeypatch):
    runtime = engine.runtime(SD15_MODEL)
    identity_spec, paths = faceid_spec(tmp_path)
    empty = tmp_path / "models"
    monkeypatch.setattr(runtime, "model_dir", empty)
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert str(empty / "diffusion" / "ip_adapter" / "sd15" / "faceid" / FACEID_FILE) in str(caught.value)
    adapter = faceid.adapter_dir(empty, "sd15")
    adapter.mkdir(parents=True)
    (adapter / FACEID_FILE).write_bytes(faceid_path(MODELS_ROOT / "diffusion", "sd15").read_bytes())
    with pytest.raises(FailedPrecondition) as caught:
        engine.run(identity_spec, PassInputs(tune_paths=paths))
    assert str(empty / "diffusion" / "face_swapper" / "arcface.onnx") in str(caught.value)
    assert "faceid" not in runtime.capabilities()
    # A pass without faceid never needs (nor loads) the adapter.
    assert engine.run(spec()).image.size == (64, 64)


def test_an_adapter_of_another_width_is_refused(tmp_path, engine):
    from multipass_dev.tiny_models.ip_adapters import write_faceid_adapter
    from multipass_diffusion.faceid import FaceIdAdapter

    runtime = engine.runtime(SD15_MODEL)
    identity_spec, paths = faceid_spec(tmp_path)
    request = faceid.resolve(identity_spec, PassInputs(tune_paths=paths), runtime)
    write_faceid_adapter(
        engine.runtime(SDXL_MODEL).base.pipe.unet, faceid_path(tmp_path / "diffusion", "sd15"), seed=1
    )
    wrong = FaceIdAdapter(tmp_path, "sd15", label=SD15_MODEL)
    with pytest.raises(FailedPrecondition, match="cross-attention width 64 does not fit the UNet \\(32\\)"):
        wrong.activate(runtime.base, request)
    assert runtime.base.pipe.unet.encoder_hid_proj is None


def test_the_released_pickled_layout_reads_like_the_safetensors_one(tmp_path):
    released = faceid.read_weights(faceid_path(MODELS_ROOT / "diffusion", "sd15"))
    path = tmp_path / "ip-adapter-faceid.bin"
    torch.save(released, path)
    again = faceid.read_weights(path)
    assert {part: sorted(tensors) for part, tensors in again.items()} == {
        part: sorted(tensors) for part, tensors in released.items()
    }
    assert all(torch.equal(again["ip_adapter"][k], v) for k, v in released["ip_adapter"].items())
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FailedPrecondition, match="is not a readable IP-Adapter FaceID file"):
        faceid.read_weights(path)


def test_hires_keeps_the_base_identity(engine, tmp_path):
    image = scene(64, 48)
    plain = engine.run(spec(kind="hires", width=0, height=0), PassInputs(image=image))
    identity_spec, paths = faceid_spec(tmp_path, kind="hires", width=0, height=0)
    conditioned = engine.run(identity_spec, PassInputs(image=image, tune_paths=paths))
    assert conditioned.image.size == plain.image.size == (128, 96)
    assert not np.array_equal(pixels(conditioned.image), pixels(plain.image))
    assert conditioned.metadata["faceid"] == "40:1"


def test_passes_that_do_not_use_faceid_warn_and_run_the_plain_model(engine, tmp_path):
    image = scene(96, 96)
    identity_spec, paths = faceid_spec(tmp_path, kind="finish", width=0, height=0)
    output = engine.run(identity_spec, PassInputs(image=image, tune_paths=paths))
    assert "<faceid:40> ignored: the finish pass does not use faceid adapters" in output.warnings
    assert engine.runtime(SD15_MODEL).faceid.attached is None


def test_the_faces_pass_conditions_each_face_on_its_own_identity(engine, tmp_path):
    """A face whose person has <faceid:...> is repainted on that identity; the next face without one runs
    the plain model (FaceID detached for it), and the identity is in the pass-cache key."""
    from multipass.v1 import diffusion_pb2

    size, left, right = (320, 96), (16, 24, 56, 72), (264, 24, 304, 72)  # crops far apart

    def target(box, loras=()):
        return diffusion_pb2.FaceTarget(
            box=common_pb2.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]), prompt="a face", loras=list(loras)
        )

    image = scene(*size)
    plain = engine.run(
        spec(kind="faces", width=0, height=0, faces=[target(left), target(right)]), PassInputs(image=image)
    )
    identity_spec, paths = faceid_spec(tmp_path, kind="faces", width=0, height=0)
    ref = identity_spec.loras[-1]
    del identity_spec.loras[:]
    identity_spec.faces.extend([target(left, [ref]), target(right)])
    conditioned = engine.run(identity_spec, PassInputs(image=image, tune_paths=paths))
    assert conditioned.metadata["faceid"] == "0:40:1"
    assert not [w for w in conditioned.warnings if "faceid" in w]
    a, b = pixels(conditioned.image), pixels(plain.image)
    in_left = (slice(left[1], left[3]), slice(left[0], left[2]))
    in_right = (slice(right[1], right[3]), slice(right[0], right[2]))
    assert np.abs(a[in_left] - b[in_left]).mean() > 1.0
    assert np.array_equal(a[in_right], b[in_right])
    assert conditioned.spec_hash != plain.spec_hash
    other_spec, other_paths = faceid_spec(tmp_path, kind="faces", width=0, height=0, seeds=(7, 8))
    del other_spec.loras[:]
    other_spec.faces.extend([target(left, [ref]), target(right)])
    other = engine.run(other_spec, PassInputs(image=image, tune_paths=other_paths))
    assert other.spec_hash != conditioned.spec_hash  # another reference face: another key
