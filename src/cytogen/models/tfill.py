"""TFill-Coarse, the actin -> nucleus generator of Vasudevan et al. (2023): a CNN encoder, a
transformer over low-resolution tokens, and a decoder with StyleGAN2-style multi-resolution
outputs (2D only).

The encoder stacks residual blocks (two convs, each followed by LeakyReLU(0.2) and pixel-wise
normalisation, plus a skip connection), each followed by a learned stride-2 conv. The
transformer runs pre-norm blocks over the tokens of the lowest-resolution map with a learned
position embedding defined on a reference grid and bilinearly resized to the actual grid, so
a model trained on one patch size predicts at others. The decoder mirrors the encoder with
up-sampling; a 1x1 output head after every decoder block adds its image to the running sum
of the coarser heads, up-sampled x2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cytogen.models.blocks import FINAL_ACTIVATIONS, check_generator_input, make_activation
from cytogen.models.registry import register_model

__all__ = ["PixelNorm", "TFillCoarse", "TransformerBlock"]


class PixelNorm(nn.Module):
    """Pixel-wise normalisation: ``x / sqrt(mean over channels of x**2 + eps)``.

    Parameters
    ----------
    eps : float
        Added under the square root.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each pixel's feature vector to unit root-mean-square."""
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)


def _conv_unit(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.LeakyReLU(0.2), PixelNorm())


class _ResBlock(nn.Module):
    """Two ``conv3x3 -> LeakyReLU(0.2) -> PixelNorm`` units plus a (1x1 if needed) skip."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_unit(in_channels, out_channels),
                                  _conv_unit(out_channels, out_channels))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.skip(x) + self.body(x))


class _SelfAttention(nn.Module):
    """Multi-head self-attention on ``(B, N, C)`` tokens (scaled dot-product attention)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_heads, c // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, C/heads)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MSA(LN(x))``, then ``x + MLP(LN(x))``.

    Parameters
    ----------
    dim : int
        Token width.
    n_heads : int
        Attention heads (must divide ``dim``).
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim`` (GELU activation).
    dropout : float
        Dropout on attention weights and after the MLP.
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """Apply attention and MLP with residual connections to ``(B, N, dim)`` tokens."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _positive_int(label: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return value


@register_model("tfill_coarse")
class TFillCoarse(nn.Module):
    """TFill-Coarse generator: residual CNN encoder, transformer, multi-resolution decoder.

    Maps ``(B, in_channels, Y, X) -> (B, out_channels, Y, X)``; 2D only.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channel counts.
    dims : {2}
        Must be 2 (the transformer works on a 2D token grid).
    base_channels : int
        Channels at full resolution; the level at ``1 / 2**i`` resolution has
        ``min(base_channels * 2**i, max_channels)`` channels (encoder and decoder).
    max_channels : int
        Cap on the conv channels.
    n_down : int
        Number of residual blocks + stride-2 convs in the encoder (and of decoder blocks).
    embed_dim : int
        Token width of the transformer.
    n_blocks : int
        Number of transformer blocks (0 skips the transformer).
    n_heads : int
        Attention heads (must divide ``embed_dim``).
    mlp_ratio : float
        Hidden width of the transformer MLPs relative to ``embed_dim``.
    ref_size : int or (int, int)
        Training patch size ``(Y, X)`` the learned position embedding is defined for; its
        grid is ``ref_size // 2**n_down``. At other sizes the embedding is bilinearly
        resized to the actual token grid.
    final_activation : {None, "tanh", "sigmoid", "gelu"}
        Activation after the summed multi-resolution outputs.
    dropout : float
        Dropout in the transformer and after the residual blocks.

    Attributes
    ----------
    size_multiple : tuple of int
        ``(2**n_down, 2**n_down)``: input sizes must be divisible by it.
    pos_embed : torch.nn.Parameter
        ``(1, embed_dim, ref_y // 2**n_down, ref_x // 2**n_down)``.

    Notes
    -----
    Parameter count with the defaults (1 -> 1 channel): 14,759,972, of which 9.48 million
    are in the 12 transformer blocks. At 128 x 128 the transformer sees only 8 x 8 tokens
    and most compute is in the full-resolution convs, so it trains on a CPU.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        dims: int = 2,
        base_channels: int = 32,
        max_channels: int = 256,
        n_down: int = 4,
        embed_dim: int = 256,
        n_blocks: int = 12,
        n_heads: int = 8,
        mlp_ratio: float = 4.0,
        ref_size: int | tuple[int, int] | list[int] = 128,
        final_activation: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dims != 2:
            raise ValueError(
                f"tfill_coarse is 2D only (dims=2), got dims={dims!r}; for 3D volumes use "
                f"'unet', 'unet_chain' or 'r2unet'"
            )
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels),
                             ("base_channels", base_channels), ("max_channels", max_channels),
                             ("n_down", n_down), ("embed_dim", embed_dim),
                             ("n_heads", n_heads)):
            _positive_int(label, value)
        if not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"n_blocks must be a non-negative integer, got {n_blocks!r}")
        if embed_dim % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide embed_dim={embed_dim}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if final_activation == "none":
            final_activation = None
        if final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(
                f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}"
            )
        ref = ((ref_size, ref_size) if isinstance(ref_size, int)
               else tuple(ref_size) if isinstance(ref_size, (tuple, list)) else ())
        factor = 2**n_down
        if (len(ref) != 2 or any(not isinstance(r, int) or r < factor or r % factor
                                 for r in ref)):
            raise ValueError(
                f"ref_size must be a training patch size (int or (Y, X)) divisible by "
                f"2**n_down={factor}, got {ref_size!r}"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = 2
        self.n_down = n_down
        self.size_multiple: tuple[int, ...] = (factor, factor)

        widths = [min(base_channels * 2**i, max_channels) for i in range(n_down + 1)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1),
                                  nn.LeakyReLU(0.2))
        # Each level: a residual block at the level's width, then a learned stride-2 conv that
        # also widens (keeps the full-resolution convs narrow: cheap on a CPU).
        self.encoder = nn.ModuleList(
            nn.Sequential(
                _ResBlock(widths[i], widths[i], dropout),
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
            )
            for i in range(n_down)
        )

        self.to_tokens = nn.Conv2d(widths[-1], embed_dim, 1)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, embed_dim, ref[0] // factor, ref[1] // factor))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, n_heads, mlp_ratio, dropout)
                                    for _ in range(n_blocks))
        self.norm = nn.LayerNorm(embed_dim)
        self.from_tokens = nn.Conv2d(embed_dim, widths[-1], 1)

        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in reversed(range(n_down)):
            self.decoder.append(nn.Sequential(
                _ResBlock(widths[i + 1], widths[i], dropout),
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(widths[i], widths[i], 3, padding=1),
                nn.LeakyReLU(0.2),
            ))
            self.heads.append(nn.Conv2d(widths[i], out_channels, 1))
        self.final_activation = make_activation(final_activation)

    def _check_input(self, x: Tensor) -> None:
        check_generator_input(self, x)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Return the position embedding resized (bilinearly) to a token ``grid``.

        Parameters
        ----------
        grid : (int, int)
            Token grid ``(Y, X)`` (input size divided by ``2**n_down``).

        Returns
        -------
        torch.Tensor
            ``(1, embed_dim, grid[0], grid[1])``.
        """
        pos = self.pos_embed
        if tuple(pos.shape[2:]) != tuple(grid):
            pos = F.interpolate(pos, size=tuple(grid), mode="bilinear", align_corners=False)
        return pos

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, Y, X)``; sizes divisible by ``size_multiple``.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, Y, X)``.
        """
        self._check_input(x)
        h = self.stem(x)
        for level in self.encoder:
            h = level(h)

        z = self.to_tokens(h)
        b, c, gy, gx = z.shape
        z = z + self.position_embedding((gy, gx)).to(z.dtype)
        tokens = z.flatten(2).transpose(1, 2)  # (B, N, C)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        h = self.from_tokens(tokens.transpose(1, 2).reshape(b, c, gy, gx))

        out: Tensor | None = None
        for level, head in zip(self.decoder, self.heads):
            h = level(h)
            image = head(h)
            if out is None:
                out = image
            else:
                out = F.interpolate(out, scale_factor=2.0, mode="bilinear",
                                    align_corners=False).to(image.dtype) + image
        assert out is not None
        return self.final_activation(out)
