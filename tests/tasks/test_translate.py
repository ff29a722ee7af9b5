"""A short training run must learn: validation error well below an untrained model's."""

import numpy as np
import torch

from cytogen.config import recipe_from_dict
from cytogen.data.datasets import read_field
from cytogen.data.manifest import read_manifest
from cytogen.evaluate.pixel import pearson_r
from cytogen.models import build_model
from cytogen.predict.model_folder import load_model_folder
from cytogen.tasks.common import pearson_per_sample
from cytogen.workflows.predict import predict_image
from cytogen.workflows.train import train

TINY = {
    "model": {"name": "unet", "dims": 2, "kwargs": {"depth": 2, "base_channels": 8}},
    "data": {"patch_size": [64, 64], "batch_size": 8, "patches_per_epoch": 64, "val_patches": 16},
    "loss": {"name": "masked_l1", "alpha": 3.0, "mask": "manifest"},
    "optim": {"lr": 0.003, "warmup_steps": 5},
    "train": {"max_steps": 120, "val_every": 40, "seed": 0, "precision": "32"},
    "predict": {"tile": [128, 128]},
}


def test_pearson_per_sample_matches_numpy():
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    got = pearson_per_sample(a, b)
    for i in range(3):
        assert abs(got[i].item() - pearson_r(a[i].numpy(), b[i].numpy())) < 1e-5


def test_short_training_beats_untrained_model(synth_set, tmp_path):
    summary = train(recipe_from_dict(TINY), synth_set, tmp_path / "run", progress=False)
    assert summary["steps"] == 120
    model = load_model_folder(tmp_path / "run" / "model")
    torch.manual_seed(0)
    untrained = load_model_folder(tmp_path / "run" / "model")
    untrained.net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8).eval()
    val = [e for e in read_manifest(synth_set) if e.split == "val"]
    err_trained, err_untrained, rs = [], [], []
    for e in val:
        rf = read_field(e)
        truth = rf.target.data.astype(np.float64)
        pred = predict_image(model, rf.source)
        err_trained.append(np.abs(pred - truth).mean() / truth.std())
        err_untrained.append(np.abs(predict_image(untrained, rf.source) - truth).mean() / truth.std())
        rs.append(pearson_r(pred, truth))
    assert np.mean(err_trained) < 0.5 * np.mean(err_untrained)
    assert np.median(rs) > 0.6
