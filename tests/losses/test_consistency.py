"""Known answers for the consistency loss (cytogen.losses.consistency, paper 004 Eq 1 / Eq 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.losses.consistency import consistency_loss, consistency_terms

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_terms(y: np.ndarray, offsets: np.ndarray, mask: np.ndarray, log_base: float):
    """Eq 1 on explicit zero-padded full-canvas arrays with a double loop over i != j."""
    n, d = offsets.shape
    full = np.zeros((n,) + mask.shape)
    for p in range(n):
        sl = (p,) + tuple(slice(o, o + s) for o, s in zip(offsets[p], y.shape[1:]))
        full[sl] = y[p]
    area = full.sum()
    overlap = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                overlap += (full[i] * np.log(1.0 - full[j]) / math.log(log_base)).sum()
    outside = (full * (1.0 - mask)[None]).sum()
    return area, overlap, outside


def _brute_loss_torch(y: torch.Tensor, offsets: np.ndarray, mask: torch.Tensor, lam, beta, log_base):
    """The same brute force in torch (float64), for gradients."""
    n = y.shape[0]
    full = []
    for p in range(n):
        canvas = torch.zeros(mask.shape, dtype=torch.float64)
        sl = tuple(slice(o, o + s) for o, s in zip(offsets[p], y.shape[1:]))
        canvas[sl] = y[p]
        full.append(canvas)
    loss = -sum(f.sum() for f in full)
    for i in range(n):
        for j in range(n):
            if i != j:
                loss = loss - lam * (full[i] * torch.log(1.0 - full[j]) / math.log(log_base)).sum()
    loss = loss + beta * sum((f * (1.0 - mask)).sum() for f in full)
    return loss / n


def _random_case(rng, n, k, canvas):
    d = len(canvas)
    y = rng.uniform(0.02, 0.98, size=(n,) + k)
    offsets = np.stack([rng.integers(0, c - s + 1, size=n) for c, s in zip(canvas, k)], axis=1)
    mask = (rng.random(canvas) < 0.6).astype(np.float64)
    assert offsets.shape == (n, d)
    return y, offsets, mask


@pytest.mark.parametrize("lam,beta,log_base", [(3.32, 15.0, 10.0), (1.0, 0.0, 10.0),
                                               (0.5, 2.0, math.e), (7.0, 0.3, 2.0)])
def test_loss_equals_brute_force_2d(lam, beta, log_base):
    rng = np.random.default_rng(1)
    y, off, mask = _random_case(rng, 6, (5, 5), (12, 13))
    area, overlap, outside = _brute_terms(y, off, mask, log_base)
    yt = torch.tensor(y, dtype=torch.float32)
    t = consistency_terms(yt, torch.tensor(off), torch.tensor(mask, dtype=torch.float32), log_base=log_base)
    assert t["area"].item() == pytest.approx(area, rel=1e-5)
    assert t["overlap"].item() == pytest.approx(overlap, rel=1e-4, abs=1e-4)
    assert t["outside"].item() == pytest.approx(outside, rel=1e-5)
    assert overlap < 0  # the patches do overlap in this case
    loss = consistency_loss(yt, torch.tensor(off), torch.tensor(mask, dtype=torch.float32),
                            lam=lam, beta=beta, log_base=log_base)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx((-area - lam * overlap + beta * outside) / 6, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("lam,beta,log_base", [(3.32, 15.0, 10.0), (2.0, 1.0, math.e)])
def test_loss_equals_brute_force_3d(lam, beta, log_base):
    rng = np.random.default_rng(2)
    y, off, mask = _random_case(rng, 5, (3, 4, 4), (6, 8, 9))
    area, overlap, outside = _brute_terms(y, off, mask, log_base)
    loss = consistency_loss(torch.tensor(y, dtype=torch.float32), torch.tensor(off),
                            torch.tensor(mask, dtype=torch.float32), lam=lam, beta=beta, log_base=log_base)
    assert overlap < 0
    assert loss.item() == pytest.approx((-area - lam * overlap + beta * outside) / 5, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("shape,canvas", [((4, 4), (9, 10)), ((2, 3, 3), (4, 6, 5))])
def test_gradient_matches_brute_force(shape, canvas):
    rng = np.random.default_rng(3)
    y, off, mask = _random_case(rng, 4, shape, canvas)
    logits = torch.tensor(np.log(y / (1 - y)), dtype=torch.float32, requires_grad=True)
    loss = consistency_loss(torch.sigmoid(logits), torch.tensor(off), torch.tensor(mask, dtype=torch.float32))
    loss.backward()
    ref_logits = torch.tensor(np.log(y / (1 - y)), dtype=torch.float64, requires_grad=True)
    ref = _brute_loss_torch(torch.sigmoid(ref_logits), off, torch.tensor(mask), 3.32, 15.0, 10.0)
    ref.backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-4)
    assert torch.allclose(logits.grad.double(), ref_logits.grad, rtol=1e-3, atol=1e-5)


def test_hand_computed_two_patches():
    # Canvas 3x3; patch 0 at (0, 0), patch 1 at (1, 1): they share canvas pixel (1, 1),
    # which is y0[1, 1] = 0.5 and y1[0, 0] = 0.9. The mask is 0 at (0, 0) and (2, 2).
    y0 = [[0.1, 0.2], [0.3, 0.5]]
    y1 = [[0.9, 0.4], [0.6, 0.7]]
    mask = torch.ones(3, 3)
    mask[0, 0] = mask[2, 2] = 0
    y = torch.tensor([y0, y1])
    off = torch.tensor([[0, 0], [1, 1]])
    # area = 1.1 + 2.6 = 3.7
    # overlap = 0.5 log10(1 - 0.9) + 0.9 log10(1 - 0.5) = -0.5 - 0.9 * 0.30103 = -0.770927
    # outside = y0[0, 0] + y1[1, 1] = 0.1 + 0.7 = 0.8
    # L = (-3.7 + 3.32 * 0.770927 + 15 * 0.8) / 2 = (-3.7 + 2.559478 + 12) / 2 = 5.429739
    t = consistency_terms(y, off, mask)
    assert t["area"].item() == pytest.approx(3.7, abs=1e-6)
    assert t["overlap"].item() == pytest.approx(-0.770927, abs=1e-5)
    assert t["outside"].item() == pytest.approx(0.8, abs=1e-6)
    assert consistency_loss(y, off, mask).item() == pytest.approx(5.429739, abs=1e-5)
    # without the overlap and the mask terms only the area is left: -3.7 / 2
    assert consistency_loss(y, off, mask, lam=0.0, beta=0.0).item() == pytest.approx(-1.85, abs=1e-6)


def test_lam_3_32_balances_area_against_a_coin_toss():
    # two identical patches on top of each other, both 0.5 everywhere (Eq 3)
    y = torch.full((2, 8, 8), 0.5)
    off = torch.zeros(2, 2, dtype=torch.long)
    t = consistency_terms(y, off, torch.ones(8, 8))
    assert t["area"].item() == pytest.approx(64.0)
    assert t["overlap"].item() == pytest.approx(2 * 32 * math.log10(0.5), rel=1e-6)
    balanced = consistency_loss(y, off, torch.ones(8, 8), lam=1 / math.log10(2))
    assert abs(balanced.item()) < 1e-5
    near = consistency_loss(y, off, torch.ones(8, 8), lam=3.32)
    assert abs(near.item()) < 1e-3 * 32  # 3.32 ~ 1 / log10(2) = 3.3219


def test_non_overlapping_patches_have_no_overlap_term():
    y = torch.rand(3, 4, 4) * 0.9
    off = torch.tensor([[0, 0], [0, 4], [4, 0]])
    t = consistency_terms(y, off, torch.ones(8, 8))
    assert t["overlap"].item() == 0.0
    assert t["outside"].item() == pytest.approx(0.0, abs=1e-7)


def test_certain_pixels_are_clamped_and_finite():
    y = torch.tensor([[[1.0, 0.3], [0.2, 1.0]], [[1.0, 0.1], [0.4, 0.2]]], requires_grad=True)
    off = torch.tensor([[0, 0], [1, 1]])
    eps = 1e-6
    loss = consistency_loss(y, off, torch.ones(3, 3), eps=eps, beta=0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(y.grad).all()
    # shared pixel: y0[1,1] = 1 and y1[0,0] = 1, each sees log10(eps) = -6 from the other
    area = y.detach().sum().item()
    assert loss.item() == pytest.approx((-area - 3.32 * (1.0 * -6 + 1.0 * -6)) / 2, rel=1e-4)


def test_bf16_input_is_computed_in_float32():
    rng = np.random.default_rng(4)
    y, off, mask = _random_case(rng, 4, (4, 4), (8, 8))
    yb = torch.tensor(y, dtype=torch.bfloat16)
    m = torch.tensor(mask, dtype=torch.float32)
    lb = consistency_loss(yb, torch.tensor(off), m)
    l32 = consistency_loss(yb.float(), torch.tensor(off), m)
    assert lb.dtype == torch.float32
    assert lb.item() == pytest.approx(l32.item(), rel=1e-6)


def test_channel_axis_and_empty_batch():
    rng = np.random.default_rng(5)
    y, off, mask = _random_case(rng, 3, (4, 4), (7, 7))
    y_t, off_t, m_t = torch.tensor(y), torch.tensor(off), torch.tensor(mask)
    assert consistency_loss(y_t[:, None], off_t, m_t).item() == pytest.approx(
        consistency_loss(y_t, off_t, m_t).item())
    empty = torch.zeros(0, 4, 4, requires_grad=True)
    z = consistency_loss(empty, torch.zeros(0, 2, dtype=torch.long), m_t)
    assert z.item() == 0.0 and z.requires_grad


def test_patch_outside_canvas_is_refused():
    with pytest.raises(CytogenError, match="canvas"):
        consistency_loss(torch.rand(2, 4, 4), torch.tensor([[0, 0], [5, 0]]), torch.ones(8, 8))
    with pytest.raises(CytogenError, match="canvas"):
        consistency_loss(torch.rand(1, 4, 4), torch.tensor([[-1, 0]]), torch.ones(8, 8))
    with pytest.raises(CytogenError):
        consistency_loss(torch.rand(2, 4, 4), torch.zeros(2, 2, dtype=torch.long), torch.ones(8, 8),
                         log_base=1.0)
