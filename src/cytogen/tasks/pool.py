"""History pool of generated images for discriminators (Shrivastava et al. 2017; Zhu et al. 2017)."""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """History of generated images: half of the time a stored image replaces the new one.

    Discriminators see older fakes too, which damps oscillation. ``size=0`` disables the pool.
    The stored images and the pool's own random generator are part of :meth:`state_dict`, so a
    resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch mixing ``images`` with stored ones (stored ones are swapped out)."""
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                k = int(torch.randint(self.size, (1,), generator=self.gen))
                out.append(self.images[k].to(img.device, img.dtype))
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Stored images (one tensor, on the CPU) and the generator state."""
        images = torch.cat([i.detach().cpu() for i in self.images], 0) if self.images else torch.empty(0)
        return {"images": images, "rng": self.gen.get_state(), "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        images = state["images"]
        self.images = [images[i:i + 1].clone() for i in range(images.shape[0])] if images.numel() else []
        self.gen.set_state(state["rng"])
