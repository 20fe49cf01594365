"""ControlNet 1.1's HED and line networks: the published files' keys and shapes, what they draw, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusion_testkit import scene
from safetensors.torch import save_file

from multipass.errors import FailedPrecondition
from multipass_diffusion.annotators import HedNetwork, LineNetwork, load_network
from multipass_diffusion.preprocessors import Preprocessors

# Parameter names and shapes of the published lllyasviel/Annotators files (a sample of each).
PUBLISHED_HED = {
    "norm": (1, 3, 1, 1),
    "block1.convs.0.weight": (64, 3, 3, 3),
    "block1.convs.1.bias": (64,),
    "block1.projection.weight": (1, 64, 1, 1),
    "block3.convs.2.weight": (256, 256, 3, 3),
    "block5.convs.2.weight": (512, 512, 3, 3),
    "block5.projection.bias": (1,),
}
PUBLISHED_LINEART = {
    "model0.1.weight": (64, 3, 7, 7),
    "model1.0.weight": (128, 64, 3, 3),
    "model1.3.weight": (256, 128, 3, 3),
    "model2.0.conv_block.1.weight": (256, 256, 3, 3),
    "model2.2.conv_block.5.bias": (256,),
    "model3.0.weight": (256, 128, 3, 3),
    "model3.3.weight": (128, 64, 3, 3),
    "model4.1.weight": (1, 64, 7, 7),
}


def test_the_networks_have_the_published_files_keys():
    hed, line = HedNetwork().state_dict(), LineNetwork().state_dict()
    assert {key: tuple(hed[key].shape) for key in PUBLISHED_HED} == PUBLISHED_HED
    assert {key: tuple(line[key].shape) for key in PUBLISHED_LINEART} == PUBLISHED_LINEART
    assert len(hed) == 1 + 2 * (2 + 2 + 3 + 3 + 3) + 2 * 5  # norm, convolutions, side outputs
    assert len(line) == 2 * (1 + 2 + 3 * 2 + 2 + 1)  # no instance-norm parameters


def _edge_detector() -> HedNetwork:
    """A HED whose side outputs see brightness differences: edges of the scene light up."""
    network = HedNetwork()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        first = network.block1.convs[0].weight
        first[0, :, 1, 0], first[0, :, 1, 2] = 1.0, -1.0  # horizontal gradient, both signs
        first[1, :, 1, 0], first[1, :, 1, 2] = -1.0, 1.0
        network.block1.convs[1].weight[0, 0, 1, 1] = network.block1.convs[1].weight[0, 1, 1, 1] = 1.0
        network.block1.projection.weight[0, 0] = 1.0
        for index in range(1, 6):
            getattr(network, f"block{index}").projection.bias.fill_(-5.0 if index > 1 else -1.0)
    return network


def test_hed_draws_the_edges_of_a_scene_from_a_pth_file(tmp_path):
    directory = tmp_path / "hed"
    directory.mkdir()
    torch.save(_edge_detector().state_dict(), directory / "ControlNetHED.pth")
    out = np.asarray(Preprocessors(tmp_path).condition("hed", scene(128, 96), (128, 96)))[..., 0].astype(int)
    assert out[40:56, 41:43].min() > 200  # the yellow rectangle's left edge
    assert out[30:60, 50:80].max() < 10  # its flat inside


def test_lineart_reads_safetensors_and_draws_white_lines_on_black(tmp_path):
    network = LineNetwork()
    with torch.no_grad():
        network.model4[1].bias.fill_(-20.0)  # the generator says "line" everywhere: all white after inversion
    directory = tmp_path / "lineart"
    directory.mkdir()
    save_file(network.state_dict(), str(directory / "sk_model.safetensors"))
    preprocessors = Preprocessors(tmp_path)
    assert preprocessors.installed() == ["lineart"]
    out = np.asarray(preprocessors.condition("lineart", scene(70, 50), (70, 50)))  # not a multiple of 4
    assert out.shape == (50, 70, 3) and out.min() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda path: path.write_bytes(b"not a checkpoint"), "not a readable weight file"),
        (
            lambda path: torch.save(LineNetwork().state_dict(), path),
            "not the published hed preprocessor: missing block1.convs.0.bias.*unexpected model0",
        ),
        (
            lambda path: torch.save(
                {"norm": torch.zeros(3)}
                | {k: v for k, v in HedNetwork().state_dict().items() if k != "norm"},
                path,
            ),
            "shape differs for norm",
        ),
        (lambda path: torch.save([torch.zeros(1)], path), "no state dict of tensors"),
    ],
)
def test_a_file_of_another_network_is_named_not_guessed(tmp_path, content, reason):
    path = tmp_path / "ControlNetHED.pth"
    content(path)
    with pytest.raises(FailedPrecondition, match=reason):
        load_network("hed", path)


def test_a_pickle_with_code_is_refused_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran')",))

    path = tmp_path / "ControlNetHED.pth"
    torch.save({"norm": Payload()}, path, _use_new_zipfile_serialization=True)
    with pytest.raises(FailedPrecondition, match="not a readable weight file"):
        load_network("hed", path)
