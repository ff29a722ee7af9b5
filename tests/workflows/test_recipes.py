"""Every bundled recipe trains through the CLI on CPU and predicts a field larger than its patches,
and the recipes that follow a paper build what the paper describes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cytogen.cli import main
from cytogen.config import load_recipe
from cytogen.errors import CytogenError
from cytogen.io.images import read_image
from cytogen.losses import check_soft_labels, get_loss
from cytogen.models import build_model
from cytogen.models.discriminators import build_discriminator

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
                     "n_heads: 2, ref_size: 32}",
                     "discriminator.kwargs={conditional: false, image_size: 32, base_channels: 4, max_channels: 16}"],
    "cyclegan2d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                   "discriminator.kwargs.n_layers=2"],
    "translate_unet3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2"],
    "pix2pix3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                  "discriminator.kwargs.n_layers=1"],
    "vox2vox_ru3d": ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "discriminator.kwargs.base_channels=4",
                     "discriminator.kwargs.n_layers=1", "gan.soft_label_steps=2"],  # warm start < 3 steps
}


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


# ---------------------------------------------------------------- the papers' settings


def _recipe(name: str, overrides: list[str] | None = None):
    return load_recipe(CONFIGS / f"{name}.yaml", overrides)


def test_unet_chain3x_recipe_builds_cosacak_kizil_3x_unet():
    rec = _recipe("unet_chain3x")
    assert (rec.model.kwargs["base_channels"], rec.model.kwargs["depth"]) == (16, 4)  # their 16 filters, 4 levels
    # Built narrower and shallower (fast); kernel, activations and dropout are the recipe's.
    rec = _recipe("unet_chain3x", ["model.kwargs.base_channels=4", "model.kwargs.depth=2"])
    net = build_model(rec.model.name, in_channels=1, out_channels=1, dims=rec.model.dims, **rec.model.kwargs)
    assert net.stage_activations == ("tanh", "gelu", "tanh")  # gelu not last: it abolished performance
    assert [type(stage.final_activation) for stage in net.stages] == [nn.Tanh, nn.GELU, nn.Tanh]
    convs = [m for stage in net.stages for block in (*stage.encoders, stage.bottleneck, *stage.decoders)
             for m in block if isinstance(m, nn.Conv2d)]
    assert convs and all(c.kernel_size == (7, 7) for c in convs)
    assert len(net.stages) == 3 and all(stage.encoders[0][0].out_channels == 4 for stage in net.stages)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in net.modules())  # pix2pix decoder dropout


def test_vox2vox_recipe_warm_start_ends_well_before_the_run():
    rec = _recipe("vox2vox_ru3d")
    assert rec.gan.soft_labels and rec.gan.adversarial != "hinge"
    assert rec.gan.soft_label_steps <= rec.train.max_steps // 4  # Sun et al.: 2500 of 20 000
    check_soft_labels(rec.gan, rec.train.max_steps)
    with pytest.raises(CytogenError, match="never end"):
        check_soft_labels(rec.gan, max_steps=rec.gan.soft_label_steps)  # e.g. --max-steps too short


def test_every_bundled_recipe_passes_the_soft_label_check():
    for path in sorted(CONFIGS.glob("*.yaml")):
        rec = load_recipe(path)
        check_soft_labels(rec.gan, rec.train.max_steps, source=str(path))


def test_tfill_recipe_critic_judges_the_nucleus_image_alone():
    rec = _recipe("tfill_coarse", ["discriminator.kwargs.base_channels=4", "discriminator.kwargs.max_channels=8"])
    assert rec.discriminator.kwargs["conditional"] is False
    # Built as the GAN task builds it: cond_channels = the generator's input channels.
    critic = build_discriminator(rec.discriminator.name, in_channels=1, cond_channels=1, dims=rec.model.dims,
                                 **rec.discriminator.kwargs).eval()
    target = torch.rand(2, 1, *rec.data.patch_size)
    with torch.no_grad():
        y = critic(torch.rand(2, 1, *rec.data.patch_size), target)
        torch.testing.assert_close(critic(torch.zeros(2, 1, *rec.data.patch_size), target), y, rtol=0, atol=0)


def test_demo_recipe_uses_vasudevan_alpha_10():
    rec = _recipe("demo_actin_nucleus")
    assert (rec.loss.name, rec.loss.alpha) == ("masked_l1", 10.0)
    loss = get_loss(rec.loss.name, rec.loss.alpha)
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 3.0], [2.0, 0.5]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # mask pixels weigh 10: (10 * 1 + 3 + 2 + 10 * 0.5) / 4 = 20 / 4
    assert loss(pred, target, mask).item() == pytest.approx(5.0)
