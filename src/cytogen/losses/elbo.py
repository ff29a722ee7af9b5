"""The beta-VAE objective of the Statistical Cell (Donovan-Maiye et al. 2022, Eq 3 and section 4.3).

The training loss is the paper's reparameterised ELBO ``2 [(1 - beta) recon + beta KL]`` with
beta in [0, 1] (keeps the loss' order of magnitude the same for every beta), recon the squared
error summed over channels and pixels of each image (a Gaussian likelihood up to constants), KL the
analytic KL divergence of the diagonal-Gaussian posterior from N(0, I), per latent dimension.
Evaluation uses the low-variance estimator of Kingma & Welling (analytic KL + Monte-Carlo
reconstruction averaged over reparameterised samples; 10 in the paper).

Everything is computed in float32, also under ``torch.autocast``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from cytogen.errors import CytogenError

__all__ = ["beta_elbo_loss", "check_beta", "elbo_estimate", "kl_per_dim", "recon_sse"]


def check_beta(beta: float) -> float:
    """``beta`` as a float, checked to lie in [0, 1].

    Raises
    ------
    CytogenError
        If ``beta`` is not a number in [0, 1].
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or not 0.0 <= float(beta) <= 1.0:
        raise CytogenError(f"beta must be a number in [0, 1] (the weight of the KL term in "
                           f"2[(1 - beta) recon + beta KL]), got {beta!r}")
    return float(beta)


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, ``(B, D)``, in nats (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def recon_sse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over channels and pixels, ``(B,)`` (float32)."""
    if x_hat.shape != x.shape:
        raise CytogenError(f"reconstruction {tuple(x_hat.shape)} and image {tuple(x.shape)} "
                           f"differ in shape")
    return (x_hat.float() - x.float()).square().flatten(1).sum(1)


def beta_elbo_loss(recon: Tensor, kl: Tensor, beta: float) -> Tensor:
    """The paper's training loss ``mean_b 2 [(1 - beta) recon_b + beta sum_d kl_bd]`` (scalar).

    Parameters
    ----------
    recon : Tensor
        ``(B,)`` per-image reconstruction error (:func:`recon_sse`).
    kl : Tensor
        ``(B, D)`` KL per latent dimension (:func:`kl_per_dim`), or ``(B,)`` already summed.
    beta : float
        In [0, 1]: 0 is a plain autoencoder, 1 ignores the reconstruction.
    """
    beta = check_beta(beta)
    kl_b = kl.float().flatten(1).sum(1) if kl.ndim > 1 else kl.float()
    if kl_b.shape != recon.shape:
        raise CytogenError(f"recon {tuple(recon.shape)} and kl {tuple(kl.shape)} must share the batch axis")
    return (2.0 * ((1.0 - beta) * recon.float() + beta * kl_b)).mean()


@torch.no_grad()
def elbo_estimate(encode: Callable[[], tuple[Tensor, Tensor]], decode: Callable[[Tensor], Tensor],
                  x: Tensor, n_samples: int = 10) -> dict[str, Tensor]:
    """Unweighted ELBO of each image: analytic KL + reconstruction averaged over ``n_samples``
    reparameterised samples of q(z | x) (the low-variance estimator; paper section 4.3).

    Parameters
    ----------
    encode : callable
        No arguments -> ``(mu, logvar)``, each ``(B, D)`` (e.g. ``lambda: net.encode(x)``).
    decode : callable
        ``z -> x_hat`` with ``x_hat`` the shape of ``x`` (e.g. ``lambda z: net.decode(z, x_r, t)``).
    x : Tensor
        The images that ``x_hat`` is compared with.
    n_samples : int
        Monte-Carlo samples of z (the paper: 10).

    Returns
    -------
    dict
        ``"elbo"`` (B,) ``= -(mean_s recon_s + kl.sum(1))``, ``"recon"`` (B,) the mean over
        samples, ``"kl"`` (B, D); float32, in summed squared error + nats. The caller chooses the
        network's mode (``eval()`` for BatchNorm's running statistics).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise CytogenError(f"n_samples must be a positive integer (the paper uses 10), got {n_samples!r}")
    mu, logvar = encode()
    mu32, logvar32 = mu.float(), logvar.float()
    std = torch.exp(0.5 * logvar32)
    recon = torch.zeros(mu.shape[0], dtype=torch.float32, device=mu.device)
    for _ in range(n_samples):
        z = (mu32 + torch.randn_like(mu32) * std).to(mu.dtype)
        recon += recon_sse(decode(z), x)
    recon /= n_samples
    kl = kl_per_dim(mu32, logvar32)
    return {"elbo": -(recon + kl.sum(1)), "recon": recon, "kl": kl}
