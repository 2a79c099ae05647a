"""--image-size on run / extract / train-sae / select, and the token store's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tiny_data import TINY_AUX, TINY_RUN_ARGS, tiny_pair, tiny_set

from spg_core import cli
from spg_core.backbones import load_backbone
from spg_core.config import ExtractConfig
from spg_core.errors import SPGError
from spg_core.pipeline import extract
from spg_core.runs import RunDir
from spg_core.store import TokenStore

DINOV2 = "dinov2-large-tiny"  # patch 14


@pytest.mark.parametrize("size, near", [(100, "98 or 112"), (5, "14"), (449, "448 or 462")])
def test_a_size_off_the_patch_grid_is_refused_naming_the_neighbours(size, near):
    with pytest.raises(SPGError, match=near) as e:
        load_backbone(DINOV2, device="cpu", image_size=size)
    assert f"--image-size {size}" in str(e.value) and "patch size 14" in str(e.value)


def _rc(argv: list[str]) -> int | None:
    """`spg ARGV`'s exit status: a named error returns 2; argparse and config refusals exit 2."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    "argv",
    [
        ["extract", "--dataset", "synthetic-a", "--backbone", DINOV2],
        ["run", "--aux", "synthetic-a", "--target", "synthetic-b", "--out", "OUT", "--backbone", DINOV2],
        ["train-sae", "--aux", "synthetic-a", "--out", "OUT", "--backbone", DINOV2],
        ["select", "--aux", "synthetic-a", "--out", "OUT", "--backbones", DINOV2],
    ],
)
@pytest.mark.parametrize("size, says", [("0", "image"), ("100", "98 or 112"), ("-14", "image")])
def test_every_command_refuses_a_bad_size_before_any_work(tmp_path, capsys, argv, size, says):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert _rc([*argv, "--image-size", size, "--device", "cpu", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert says in err and size in err
    assert not (tmp_path / "tokens").exists() and not (tmp_path / "synthetic").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_size_is_in_the_store_key_and_the_run_config(tmp_path):
    aux = tiny_set(tmp_path / "data", TINY_AUX)
    small = extract(
        aux, load_backbone(DINOV2, device="cpu", image_size=28), ExtractConfig(cache_dir=str(tmp_path), quiet=True)
    )
    default = extract(aux, load_backbone(DINOV2, device="cpu"), ExtractConfig(cache_dir=str(tmp_path), quiet=True))
    assert small.root != default.root
    assert (small.num_patches, default.num_patches) == (4, 16)

    aux, _target = tiny_pair(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train-sae", "--aux", aux, "--out", str(out), *TINY_RUN_ARGS, "--cache-dir", str(tmp_path)]
    assert cli.main([*argv, "--image-size", "32"]) in (0, None)
    cfg = RunDir(out).run_config()
    config = json.loads((out / "config.json").read_text())
    assert cfg.image_size == 32 and config["backbone_identity"]["image_size"] == 32


def test_store_dtype_follows_the_protocol_and_the_option(tmp_path):
    """official: float32 (tokens exactly as extracted); studio: float16; --token-dtype overrides."""
    aux = tiny_set(tmp_path / "data", TINY_AUX)
    base = ["extract", "--dataset", aux, "--backbone", "dinov3-vitl16-tiny", "--quiet", "--device", "cpu"]
    stores = {}
    for extra in (
        ["--protocol", "official"],
        ["--protocol", "studio"],
        ["--protocol", "official", "--token-dtype", "float16"],
    ):
        before = set(Path(tmp_path, "tokens").glob("*")) if (tmp_path / "tokens").exists() else set()
        assert cli.main([*base, *extra, "--cache-dir", str(tmp_path)]) in (0, None)
        (new,) = set(Path(tmp_path, "tokens").glob("*")) - before
        stores[" ".join(extra)] = json.loads((new / "manifest.json").read_text())["key"]["dtype"]
    assert list(stores.values()) == ["float32", "float16", "float16"]
    official = next(Path(tmp_path, "tokens").glob("*"))
    for root in Path(tmp_path, "tokens").glob("*"):
        store = TokenStore(root)
        assert store.tokens([0]).dtype.is_floating_point and store.tokens([0]).shape[1:] == (16, 32)
    assert official.exists()
