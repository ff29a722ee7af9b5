"""The Statistical Cell's beta-VAEs (Donovan-Maiye et al., PLOS Comp Biol 2022, section 4.2), 2D and 3D.

* :class:`ReferenceVAE` (``"statcell_reference"``) models p(x_r): the reference channels (cell
  mask or membrane, DNA) -> z_r -> x_r.
* :class:`TargetVAE` (``"statcell_target"``) models p(x_t | x_r, t): its encoder sees the target
  concatenated with the reference and the structure type as a one-hot map broadcast over space
  (extra input channels); its decoder gets, at every block, the reference linearly interpolated to
  the block's output size through a 1x1 conv and a learned vector of the structure type (one-hot
  through a linear layer), both added (the authors' code adds the same two conditionings in the
  encoder at every block; here the encoder gets them once, at the input).

Both use the residual blocks of Fig 7 (:mod:`cytogen.models.vae_blocks`): each encoder block halves
every spatial axis and has the next width of ``widths``; the last map is flattened into two linear
layers for mu and log-variance; the decoder mirrors it (linear layer to the smallest map, blocks
that double every axis with widths in reverse, a final 3x3 conv and a sigmoid: data are in [0, 1]).
Spectral normalisation wraps every conv, transposed conv and linear layer (``spectral_norm=True``);
BatchNorm and ReLU as in the authors' code (``norm=`` / ``activation=`` to change).

Sizes (measured on one CPU thread, forward + backward + Adam step, beta-ELBO loss):

* defaults, 2D 64 x 64: 3.26 M parameters (reference; target 3.26 M), 0.7 s per batch of 32;
* 3D (32, 64, 64) with the default widths: 10.2 M, 10 s per batch of 8 (too slow for a CPU);
  ``widths=(16, 32, 64, 128)``: 2.9 M, 3.9 s per batch of 8; (16, 32, 32) with
  ``widths=(16, 32, 64)``: 0.94 M, 0.28 s per batch of 8;
* the paper's scale (latent 512; its 2D model has 22.3 M parameters, its 3D one 122.6 M):
  2D ``latent_dim=512, widths=(32, 64, 128, 256, 512)`` at 128 x 96 gives 19.3 M; 3D
  ``latent_dim=512, widths=(48, 96, 192, 384, 768)`` at (64, 128, 96) gives 106 M (GPU sizes).

``size`` must be divisible by ``2**len(widths)`` on every axis (a CytogenError says so).
:attr:`~ReferenceVAE.architecture` gives the complete ``{"name", "kwargs"}`` to rebuild a model
with :func:`build_vae` (save it with the weights).

These are not generators (image -> image) and are registered in :data:`VAES`, not in
``cytogen.models.MODELS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cytogen.errors import CytogenError
from cytogen.models.blocks import conv_nd, make_activation, make_norm
from cytogen.models.vae_blocks import DownBlock, UpBlock, check_vae_choices, check_vae_size, sn_wrap
from cytogen.registry import Registry

__all__ = ["VAES", "ReferenceVAE", "TargetVAE", "build_vae", "reparameterize"]

#: The Statistical Cell models, built by name (not generators: not in ``MODELS``).
VAES: Registry[nn.Module] = Registry("statcell model")


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """A sample ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (differentiable in mu, logvar)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def _check_widths(widths: Sequence[int], latent_dim: int, what: str) -> tuple[int, ...]:
    try:
        w = tuple(int(c) for c in widths)
    except (TypeError, ValueError):
        raise CytogenError(f"{what}: widths must be a list of positive integers, got {widths!r}") from None
    if not w or any(c <= 0 for c in w):
        raise CytogenError(f"{what}: widths must be a non-empty list of positive integers, got {widths!r}")
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
        raise CytogenError(f"{what}: latent_dim must be a positive integer (the paper uses up to 512), "
                           f"got {latent_dim!r}")
    return w


def _check_input(x: Tensor, channels: int, size: tuple[int, ...], what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 + len(size) or x.shape[1] != channels \
            or tuple(x.shape[2:]) != size:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise CytogenError(f"{what}: expected a tensor (B, {channels}, {', '.join(map(str, size))}), "
                           f"got {shape}; crops must have the model's channels and size")


class _Encoder(nn.Module):
    """Down blocks -> flatten -> (mu, logvar)."""

    def __init__(self, in_channels: int, dims: int, size: tuple[int, ...], latent_dim: int,
                 widths: tuple[int, ...], norm: str, activation: str, bypass: str,
                 spectral_norm: bool) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.Sequential(*[
            DownBlock(a, b, dims, norm=norm, activation=activation, bypass=bypass,
                      spectral_norm=spectral_norm) for a, b in zip(chans[:-1], chans[1:])])
        n_flat = widths[-1] * prod(s // 2 ** len(widths) for s in size)
        self.mu = sn_wrap(nn.Linear(n_flat, latent_dim), spectral_norm)
        self.logvar = sn_wrap(nn.Linear(n_flat, latent_dim), spectral_norm)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.blocks(x).flatten(1)
        return self.mu(h), self.logvar(h)


class _Decoder(nn.Module):
    """Linear -> smallest map -> up blocks (optionally conditioned) -> 3x3 conv -> sigmoid."""

    def __init__(self, out_channels: int, dims: int, size: tuple[int, ...], latent_dim: int,
                 widths: tuple[int, ...], norm: str, activation: str, spectral_norm: bool,
                 ref_channels: int = 0, n_classes: int = 0) -> None:
        super().__init__()
        self.small = tuple(s // 2 ** len(widths) for s in size)
        self.first = widths[-1]
        self.fc = sn_wrap(nn.Linear(latent_dim, widths[-1] * prod(self.small)), spectral_norm)
        self.fc_act = nn.Sequential(make_norm(norm, widths[-1], dims), make_activation(activation))
        rev = (*widths[::-1], widths[0])
        self.blocks = nn.ModuleList([
            UpBlock(a, b, dims, norm=norm, activation=activation, spectral_norm=spectral_norm,
                    ref_channels=ref_channels, n_classes=n_classes) for a, b in zip(rev[:-1], rev[1:])])
        self.out = sn_wrap(conv_nd(dims)(widths[0], out_channels, 3, 1, 1), spectral_norm)

    def forward(self, z: Tensor, x_ref: Tensor | None = None, onehot: Tensor | None = None) -> Tensor:
        h = self.fc_act(self.fc(z).reshape(z.shape[0], self.first, *self.small))
        for block in self.blocks:
            h = block(h, x_ref, onehot)
        return torch.sigmoid(self.out(h))


class _VAEBase(nn.Module):
    name = ""

    def _common(self, dims: int, size: Sequence[int], latent_dim: int, widths: Sequence[int],
                norm: str, activation: str, bypass: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        what = f"{self.name} model"
        w = _check_widths(widths, latent_dim, what)
        size_t = check_vae_size(size, dims, len(w), what)
        check_vae_choices(norm, activation, bypass)
        self.dims, self.size, self.latent_dim, self.widths = dims, size_t, latent_dim, w
        return size_t, w

    @property
    def architecture(self) -> dict[str, Any]:
        """``{"name", "kwargs"}``: everything :func:`build_vae` needs to rebuild this model."""
        return {"name": self.name, "kwargs": dict(self._kwargs)}


@VAES.register("statcell_reference")
class ReferenceVAE(_VAEBase):
    """beta-VAE of the reference channels, p(x_r) (paper section 4.2).

    Parameters
    ----------
    in_channels : int
        Reference channels (2: cell, DNA).
    dims : {2, 3}
        2D or 3D crops.
    size : sequence of int
        Crop size (Y, X) or (Z, Y, X); divisible by ``2**len(widths)`` on every axis.
    latent_dim : int
        Dimensions of z_r (the paper: 512).
    widths : sequence of int
        Channels of each encoder block (one block per entry, each halves every axis); the decoder
        uses them in reverse.
    spectral_norm : bool
        Spectral normalisation of every conv and linear layer (the paper's choice).
    norm, activation, bypass : str
        ``"batch"``, ``"relu"``, ``"pool"`` as the authors; see :class:`~cytogen.models.vae_blocks.DownBlock`.
    """

    name = "statcell_reference"

    def __init__(self, in_channels: int = 2, dims: int = 2, size: Sequence[int] = (64, 64),
                 latent_dim: int = 64, widths: Sequence[int] = (32, 64, 128, 256),
                 spectral_norm: bool = True, norm: str = "batch", activation: str = "relu",
                 bypass: str = "pool") -> None:
        super().__init__()
        size_t, w = self._common(dims, size, latent_dim, widths, norm, activation, bypass)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise CytogenError(f"{self.name} model: in_channels must be a positive integer, "
                               f"got {in_channels!r}")
        self.in_channels = in_channels
        self._kwargs = dict(in_channels=in_channels, dims=dims, size=list(size_t), latent_dim=latent_dim,
                            widths=list(w), spectral_norm=bool(spectral_norm), norm=norm,
                            activation=activation, bypass=bypass)
        self.encoder = _Encoder(in_channels, dims, size_t, latent_dim, w, norm, activation, bypass,
                                spectral_norm)
        self.decoder = _Decoder(in_channels, dims, size_t, latent_dim, w, norm, activation, spectral_norm)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, latent_dim)``, of ``x`` (B, C, *size)."""
        _check_input(x, self.in_channels, self.size, f"{self.name}.encode")
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(B, in_channels, *size)`` in [0, 1] from latents ``z`` (B, latent_dim)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_hat, mu, logvar)``; ``x_hat`` decodes one reparameterised sample of q(z | x)."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar


@VAES.register("statcell_target")
class TargetVAE(_VAEBase):
    """Conditional beta-VAE of one target structure, p(x_t | x_r, t) (paper section 4.2).

    Parameters
    ----------
    in_channels : int
        Target channels (1).
    ref_channels : int
        Reference channels (2), given to the encoder (concatenated) and to every decoder block.
    n_classes : int
        Number of structure types; ``t`` indexes them.
    dims, size, latent_dim, widths, spectral_norm, norm, activation, bypass
        As :class:`ReferenceVAE`.
    """

    name = "statcell_target"

    def __init__(self, in_channels: int = 1, ref_channels: int = 2, n_classes: int = 1, dims: int = 2,
                 size: Sequence[int] = (64, 64), latent_dim: int = 64,
                 widths: Sequence[int] = (32, 64, 128, 256), spectral_norm: bool = True,
                 norm: str = "batch", activation: str = "relu", bypass: str = "pool") -> None:
        super().__init__()
        size_t, w = self._common(dims, size, latent_dim, widths, norm, activation, bypass)
        for key, val in (("in_channels", in_channels), ("ref_channels", ref_channels),
                         ("n_classes", n_classes)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise CytogenError(f"{self.name} model: {key} must be a positive integer, got {val!r}")
        self.in_channels, self.ref_channels, self.n_classes = in_channels, ref_channels, n_classes
        self._kwargs = dict(in_channels=in_channels, ref_channels=ref_channels, n_classes=n_classes,
                            dims=dims, size=list(size_t), latent_dim=latent_dim, widths=list(w),
                            spectral_norm=bool(spectral_norm), norm=norm, activation=activation,
                            bypass=bypass)
        self.encoder = _Encoder(in_channels + ref_channels + n_classes, dims, size_t, latent_dim, w,
                                norm, activation, bypass, spectral_norm)
        self.decoder = _Decoder(in_channels, dims, size_t, latent_dim, w, norm, activation, spectral_norm,
                                ref_channels=ref_channels, n_classes=n_classes)

    def _onehot(self, t: Tensor, batch: int, like: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                    torch.float64) or tuple(t.shape) != (batch,):
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise CytogenError(f"{self.name}: t must be an integer tensor (B,) = ({batch},) of structure "
                               f"indices, got {got}")
        if batch and (int(t.min()) < 0 or int(t.max()) >= self.n_classes):
            raise CytogenError(f"{self.name}: structure index out of range [0, {self.n_classes}) "
                               f"(got {int(t.min())}..{int(t.max())}); the model was built for "
                               f"n_classes={self.n_classes}")
        return F.one_hot(t.long(), self.n_classes).to(like.dtype)

    def encode(self, x_t: Tensor, x_r: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of the target ``x_t`` given reference ``x_r`` and structure ``t`` (B,)."""
        _check_input(x_t, self.in_channels, self.size, f"{self.name}.encode x_t")
        _check_input(x_r, self.ref_channels, self.size, f"{self.name}.encode x_r")
        onehot = self._onehot(t, x_t.shape[0], x_t)
        maps = onehot.reshape(*onehot.shape, *([1] * self.dims)).expand(-1, -1, *self.size)
        return self.encoder(torch.cat([x_t, x_r.to(x_t.dtype), maps], dim=1))

    def decode(self, z: Tensor, x_r: Tensor, t: Tensor) -> Tensor:
        """Target images ``(B, in_channels, *size)`` in [0, 1] from ``z`` given ``x_r`` and ``t``."""
        _check_input(x_r, self.ref_channels, self.size, f"{self.name}.decode x_r")
        return self.decoder(z, x_r, self._onehot(t, z.shape[0], z))

    def forward(self, x_t: Tensor, x_r: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_hat, mu, logvar)``; ``x_hat`` decodes one reparameterised sample of q(z | x_t, x_r, t)."""
        mu, logvar = self.encode(x_t, x_r, t)
        return self.decode(reparameterize(mu, logvar), x_r, t), mu, logvar


def build_vae(name: str, **kwargs: Any) -> nn.Module:
    """Build a Statistical Cell model by name (``"statcell_reference"`` or ``"statcell_target"``).

    Raises
    ------
    CytogenError
        For an unknown name (listing the known ones) or arguments the model does not accept.
    """
    return VAES.build(name, **kwargs)
