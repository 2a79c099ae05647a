"""OpenCLIP backbones from a checkpoint file: a tiny CLIP saved in the test, loaded through `--weights`.

The registry's OpenCLIP backbone is ViT-L-14-336 (a 1.7 GB checkpoint); the loader builds
`openclip.MODEL_NAME` and loads the file into it strictly. Here MODEL_NAME points at a tiny
CLIP config registered with open_clip, so the same code path (file or folder -> open_clip's
strict load with QuickGELU -> visual tower -> position table resized to 518) runs in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from spg_core.backbones import load_backbone
from spg_core.backbones import openclip as oc
from spg_core.errors import SPGError

TINY_NAME = "SPG-Test-Tiny-14"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 56, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(the saved model, folder holding open_clip_model.safetensors) with MODEL_NAME -> the tiny config."""
    import open_clip  # noqa: PLC0415 -- heavy: loaded with OpenCLIP backbones only

    cfg_dir = tmp_path_factory.mktemp("cfg")
    (cfg_dir / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    mp = pytest.MonkeyPatch()
    mp.setattr(oc, "MODEL_NAME", TINY_NAME)
    torch.manual_seed(3)
    model = open_clip.create_model(TINY_NAME, force_quick_gelu=True)
    folder = tmp_path_factory.mktemp("ckpt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / oc.CHECKPOINT_NAMES[0]))
    yield model, folder
    mp.undo()


def test_checkpoint_file_loads_the_saved_weights(tiny_clip):
    model, folder = tiny_clip
    file = folder / oc.CHECKPOINT_NAMES[0]
    bb = load_backbone("openclip-vitl14-336", weights=str(file), device="cpu")
    assert bb.weights == str(file) and bb.dim == 32 and bb.image_size == 518
    saved = model.visual.state_dict()
    loaded = bb.visual.state_dict()
    for key, value in saved.items():
        if key != "positional_embedding":
            assert torch.equal(loaded[key], value), key
    # the 4 x 4 position table, bicubically resized to the 37 x 37 grid of 518 px
    assert torch.equal(
        loaded["positional_embedding"], oc.interpolate_pos_embed(saved["positional_embedding"], (37, 37))
    )
    assert any(type(m).__name__ == "QuickGELU" for m in bb.visual.modules())
    tokens = bb.extract(torch.rand(2, 3, 518, 518))
    assert tokens.shape == (2, 37 * 37, 32) and torch.isfinite(tokens).all()


def test_a_folder_holding_the_checkpoint_gives_the_same_tokens(tiny_clip):
    _, folder = tiny_clip
    images = torch.rand(1, 3, 518, 518)
    a = load_backbone("openclip-vitl14-336", weights=str(folder), device="cpu").extract(images)
    b = load_backbone("openclip-vitl14-336", weights=str(folder / oc.CHECKPOINT_NAMES[0]), device="cpu").extract(images)
    assert torch.equal(a, b)


def test_damaged_or_foreign_checkpoints_are_one_clear_error(tiny_clip, tmp_path):
    model, folder = tiny_clip
    data = (folder / oc.CHECKPOINT_NAMES[0]).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.safetensors"  # another width: the strict load refuses it
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["visual.conv1.weight"] = torch.zeros(48, 3, 14, 14)
    save_file(state, str(foreign))
    for bad in (truncated, foreign):
        with pytest.raises(SPGError) as err:
            load_backbone("openclip-vitl14-336", weights=str(bad), device="cpu")
        assert str(bad) in str(err.value)
    with pytest.raises(SPGError) as err:
        load_backbone("openclip-vitl14-336", weights=str(tmp_path), device="cpu")  # holds no checkpoint
    assert oc.CHECKPOINT_NAMES[0] in str(err.value)
