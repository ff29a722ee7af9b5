import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.losses import get_loss, masked_l1_loss


def test_masked_l1_known_answer():
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # errors 1,1,2,0 ; weights 10,1,1,1 -> (10 + 1 + 2 + 0) / 4
    assert masked_l1_loss(pred, target, mask, alpha=10).item() == pytest.approx(13 / 4)
    assert masked_l1_loss(pred, target, mask, alpha=1).item() == pytest.approx(get_loss("l1")(pred, target).item())


def test_loss_by_name_and_errors():
    a, b = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert get_loss("mse")(a * 3, b).item() == pytest.approx(9.0)
    with pytest.raises(CytogenError):
        get_loss("huber")
    with pytest.raises(CytogenError, match="mask"):
        get_loss("masked_l1")(a, b, None)


def test_masked_l1_gradient_weights_mask_pixels_more():
    pred = torch.zeros(1, 1, 1, 2, requires_grad=True)
    masked_l1_loss(pred, torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), alpha=5).backward()
    g = pred.grad.abs().flatten()
    assert g[0] == pytest.approx(5 * g[1])


def test_masked_l1_default_is_the_papers_alpha_10():
    # Vasudevan et al. 2023: nucleus pixels weigh alpha = 10 times the background.
    pred = torch.tensor([[[[0.5, 0.0, 1.0]]]])
    target = torch.tensor([[[[1.5, 2.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    # errors 1, 2, 0; weights 10, 1, 10 -> (10 + 2 + 0) / 3
    assert get_loss("masked_l1")(pred, target, mask).item() == pytest.approx(4.0)
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(4.0)
