import numpy as np
import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.losses import mse_loss
from cytogen.losses.exclusivity import exclusivity_loss, max_of_others, with_exclusivity


def test_max_of_others_known_answer_tensor_and_array():
    stack = np.array([[[1.0, 5.0]], [[3.0, 2.0]], [[2.0, 4.0]]])  # (S=3, 1, 2)
    np.testing.assert_array_equal(max_of_others(stack, 0), [[3.0, 4.0]])
    np.testing.assert_array_equal(max_of_others(stack, 1), [[2.0, 5.0]])
    t = max_of_others(torch.from_numpy(stack), 2)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), [[3.0, 5.0]])
    with pytest.raises(CytogenError, match="at least 2"):
        max_of_others(stack[:1], 0)


def test_loss_known_answer_and_bounds():
    pred = torch.tensor([[[[0.9, 0.1, 0.5, 3.0]]]])
    ref = torch.tensor([[[[0.1, 0.8, 0.5, 0.0]]]])
    # gaps 0.8, 0.7, 0, 3 -> relu(1 - gap) = 0.2, 0.3, 1, 0
    assert exclusivity_loss(pred, ref).item() == pytest.approx(1.5 / 4)
    assert exclusivity_loss(pred, ref, margin=0.5).item() == pytest.approx(0.5 / 4)
    big = torch.randn(2, 3, 8, 8) * 100
    v = exclusivity_loss(big, torch.randn(2, 1, 8, 8)).item()
    assert 0.0 <= v <= 1.0  # bounded, unlike the bare -|y - r|


def test_gradient_pushes_down_where_another_structure_is_higher_and_up_where_highest():
    pred = torch.tensor([[[[0.6, 0.3]]]], requires_grad=True)
    ref = torch.tensor([[[[0.4, 0.5]]]], requires_grad=True)  # pixel 0: pred highest; pixel 1: other higher
    exclusivity_loss(pred, ref).backward()
    g = pred.grad.flatten()
    assert g[0] < 0 < g[1]  # descent raises pixel 0 and lowers pixel 1
    assert ref.grad is None  # the reference is frozen


def test_zero_weight_leaves_loss_unchanged_and_weight_adds_term():
    pred = torch.rand(2, 1, 8, 8, requires_grad=True)
    tgt, ref = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    recon = mse_loss(pred, tgt)
    assert with_exclusivity(recon, pred, None, 0.0) is recon
    assert with_exclusivity(recon, pred, ref, 0.0) is recon
    both = with_exclusivity(recon, pred, ref, 2.0)
    assert both.item() == pytest.approx(recon.item() + 2.0 * exclusivity_loss(pred, ref).item())
    with pytest.raises(CytogenError, match="reference"):
        with_exclusivity(recon, pred, None, 1.0)
    with pytest.raises(CytogenError, match=">= 0"):
        with_exclusivity(recon, pred, ref, -1.0)


def test_descent_raises_exclusivity_of_a_blurry_pair():
    from cytogen.evaluate.exclusivity import exclusivity

    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64)
    a = torch.sigmoid(-x / 0.3)[None, None, None]  # two blurry complementary edges overlapping at 0
    b = torch.sigmoid(x / 0.3)[None, None, None]
    pred = a.clone().requires_grad_(True)
    opt = torch.optim.SGD([pred], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        with_exclusivity(mse_loss(pred, a), pred, b, 1.0).backward()
        opt.step()
    before = exclusivity(np.stack([a.flatten().numpy(), b.flatten().numpy()])[:, None]).overall
    after = exclusivity(np.stack([pred.detach().flatten().numpy(), b.flatten().numpy()])[:, None]).overall
    assert after > before + 0.02


def test_shape_mismatch_refused():
    with pytest.raises(CytogenError, match="does not match"):
        exclusivity_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(CytogenError, match="margin"):
        exclusivity_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), margin=0)
