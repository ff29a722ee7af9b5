"""Figures of the masks -> images pipeline: masks on channels, synthetic images with outlines."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from cytogen.report.cellseg_figures import outline_rgb
from cytogen.report.figures import stretch

#: Channel colours as in Cosacak & Kizil's Fig. S1 (blue, green, red, light grey), then more.
CHANNEL_RGB = np.array([[0.2, 0.4, 1.0], [0.1, 0.9, 0.2], [1.0, 0.2, 0.2], [0.8, 0.8, 0.8],
                        [1.0, 0.8, 0.1], [0.8, 0.2, 1.0], [0.1, 0.9, 0.9], [1.0, 0.5, 0.0]])


def channels_rgb(stack: np.ndarray) -> np.ndarray:
    """``(Y, X, 3)``: each mask channel of ``(K, Y, X)`` in its colour (a union channel is left out by the caller)."""
    rgb = np.zeros((*stack.shape[1:], 3), np.float32)
    for c in range(stack.shape[0]):
        rgb += stack[c][..., None] * CHANNEL_RGB[c % len(CHANNEL_RGB)]
    return np.clip(rgb, 0, 1)


def synthetic_preview_figure(samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
                             size: float = 3.2) -> Figure:
    """One row per sample ``(name, image (Y, X), labels (Y, X), mask channels (K, Y, X) or None)``:
    the mask channels in colour, the generated image, and the image with the exact label outlines."""
    fig = Figure(figsize=(3 * size, size * len(samples)))
    axes = fig.subplots(len(samples), 3, squeeze=False)
    for r, (name, image, labels, stack) in enumerate(samples):
        panels = [("masks on channels" if stack is not None else "labels",
                   channels_rgb(stack) if stack is not None else (labels > 0).astype(float)),
                  ("generated image", stretch(image)), ("exact labels (outlines)", outline_rgb(image, labels))]
        for c, (title, img) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {title}" if c == 0 else title, fontsize=9)
    fig.tight_layout()
    return fig
