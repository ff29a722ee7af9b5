"""Known answers for the Statistical Cell objective (cytogen.losses.elbo)."""

from __future__ import annotations

import math

import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.losses import beta_elbo_loss, elbo_estimate, kl_per_dim, recon_sse

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_per_dim_known_answers():
    zero = torch.zeros(3, 5)
    assert torch.equal(kl_per_dim(zero, zero), torch.zeros(3, 5))
    assert torch.allclose(kl_per_dim(torch.ones(3, 5), zero), torch.full((3, 5), 0.5))
    # sigma^2 = 4, mu = 0: 0.5 (4 - 1 - log 4)
    lv = torch.full((2, 3), math.log(4.0))
    assert torch.allclose(kl_per_dim(torch.zeros(2, 3), lv), torch.full((2, 3), 0.5 * (3 - math.log(4.0))))
    mu, lv = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    p = torch.distributions.Normal(torch.zeros(4, 6), torch.ones(4, 6))
    assert torch.allclose(kl_per_dim(mu, lv), torch.distributions.kl_divergence(q, p), atol=1e-5)


def test_kl_analytic_matches_monte_carlo(seeded):
    mu, lv = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -1.0, 0.7]])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    p = torch.distributions.Normal(0.0, 1.0)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(kl_per_dim(mu, lv), mc, atol=0.02)


def test_losses_are_float32_under_low_precision():
    mu = torch.randn(2, 4, dtype=torch.bfloat16)
    assert kl_per_dim(mu, mu).dtype == torch.float32
    x = torch.rand(2, 1, 4, 4, dtype=torch.bfloat16)
    assert recon_sse(x, x * 0).dtype == torch.float32


def test_recon_sse_known_answer():
    x = torch.zeros(2, 2, 4, 4)
    x_hat = x.clone()
    x_hat[0] += 0.5          # 32 pixels * 0.25 = 8
    x_hat[1, 1, 0, 0] = 3.0  # 9
    assert torch.allclose(recon_sse(x_hat, x), torch.tensor([8.0, 9.0]))
    with pytest.raises(CytogenError, match="shape"):
        recon_sse(x_hat[:, :1], x)


def test_beta_elbo_loss_weights():
    recon = torch.tensor([10.0, 20.0])
    kl = torch.tensor([[1.0, 2.0], [3.0, 4.0]])   # sums 3, 7
    assert beta_elbo_loss(recon, kl, 0.0).item() == pytest.approx(2 * 15.0)
    assert beta_elbo_loss(recon, kl, 1.0).item() == pytest.approx(2 * 5.0)
    assert beta_elbo_loss(recon, kl, 0.5).item() == pytest.approx(15.0 + 5.0)
    assert beta_elbo_loss(recon, kl, 0.25).item() == pytest.approx(2 * (0.75 * 15 + 0.25 * 5))
    assert beta_elbo_loss(recon, kl.sum(1), 0.25).item() == pytest.approx(2 * (0.75 * 15 + 0.25 * 5))
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(CytogenError, match="beta"):
            beta_elbo_loss(recon, kl, bad)
    with pytest.raises(CytogenError, match="batch"):
        beta_elbo_loss(recon, kl[:1], 0.5)


def test_elbo_estimate_known_answer_and_no_grad(seeded):
    # decode(z) = z compared with x = 0: E||z||^2 = sum(mu^2 + sigma^2)
    mu = torch.tensor([[1.0, -2.0], [0.0, 0.5]], requires_grad=True)
    lv = torch.log(torch.tensor([[0.25, 1.0], [4.0, 1.0]]))
    x = torch.zeros(2, 2)
    out = elbo_estimate(lambda: (mu, lv), lambda z: z, x, n_samples=20_000)
    expected = (mu.detach() ** 2 + lv.exp()).sum(1)
    assert torch.allclose(out["recon"], expected, rtol=0.03)
    assert torch.allclose(out["kl"], kl_per_dim(mu.detach(), lv))
    assert torch.allclose(out["elbo"], -(out["recon"] + out["kl"].sum(1)))
    assert not out["elbo"].requires_grad
    assert out["elbo"].shape == (2,) and out["kl"].shape == (2, 2)
    with pytest.raises(CytogenError, match="n_samples"):
        elbo_estimate(lambda: (mu, lv), lambda z: z, x, n_samples=0)


def test_elbo_estimate_variance_falls_with_samples(seeded):
    mu, lv = torch.zeros(1, 4), torch.zeros(1, 4)
    w = torch.randn(4, 6)
    x = torch.zeros(1, 6)

    def spread(n):
        vals = torch.stack([elbo_estimate(lambda: (mu, lv), lambda z: z @ w, x, n_samples=n)["elbo"][0]
                            for _ in range(300)])
        return vals.var().item()

    v1, v10 = spread(1), spread(10)
    assert v10 < v1 / 4   # ~1/10 expected
