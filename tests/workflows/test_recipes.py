"""Every bundled recipe trains through the CLI on CPU and predicts a field larger than its patches."""

from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.io.images import read_image
from cytogen.synth.cells import write_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_2D = ["--set", "data.patch_size=[32,32]", "--set", "predict.tile=[64,64]"]
TINY_3D = ["--set", "data.patch_size=[8,32,32]", "--set", "predict.tile=[16,48,48]"]
SMALL = {
    "translate_unet2d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2"],
    "pix2pix2d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                  "discriminator.kwargs.n_layers=2"],
    "unet_chain3x": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                     "discriminator.kwargs.n_layers=2"],
    "tfill_coarse": ["model.kwargs={base_channels: 4, max_channels: 16, n_down: 2, embed_dim: 16, n_blocks: 2, "
                     "n_heads: 2, ref_size: 32}", "discriminator.kwargs={image_size: 32, base_channels: 4, max_channels: 16}"],
    "cyclegan2d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                   "discriminator.kwargs.n_layers=2"],
    "translate_unet3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2"],
    "pix2pix3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                  "discriminator.kwargs.n_layers=1"],
    "vox2vox_ru3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                     "discriminator.kwargs.n_layers=1"],
}


@pytest.fixture(scope="module")
def synth3d(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("s3") / "d", n_fields=4, shape=(16, 64, 64), seed=2)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_recipe_trains_and_predicts_larger_field(name, synth_set, synth3d, tmp_path):
    three_d = name.endswith("3d")
    manifest = synth3d if three_d else synth_set
    sets = [a for kv in SMALL[name] for a in ("--set", kv)]
    sets += TINY_3D if three_d else TINY_2D
    sets += ["--set", "data.patches_per_epoch=8", "--set", "data.batch_size=2", "--set", "data.val_patches=2",
             "--set", "train.val_every=2"]
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / f"{name}.yaml"), "--data", str(manifest), "--out", str(run),
                 "--max-steps", "3", *sets]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", str(run / "model"), "--data", str(manifest), "--split", "test", "--out", str(pred)]) == 0
    out = read_image(next(pred.glob("*.tif")))
    expected = (1, 16, 64, 64) if three_d else (1, 128, 128)  # fields larger than the 32 px patches
    assert out.data.shape == expected and np.all(np.isfinite(out.data))
