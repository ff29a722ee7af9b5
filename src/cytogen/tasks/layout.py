"""Memory layout for training: channels-last models and batches (set by the workflow)."""

from __future__ import annotations

from typing import Any

import torch


class MemoryFormatMixin:
    """Mix into a LightningModule: with ``memory_format`` set, the module is converted at
    setup and every batch tensor of matching rank after it reaches the device.

    ``memory_format`` is ``torch.channels_last`` (2D), ``torch.channels_last_3d`` (3D) or None
    (default layout). Checkpoints and exported weights hold the same values either way.
    """

    memory_format: torch.memory_format | None = None

    def _format_rank(self) -> int:
        return 4 if self.memory_format == torch.channels_last else 5

    def setup(self, stage: str) -> None:
        # Before Lightning wraps the module for DDP, whose gradient buckets copy the strides.
        if self.memory_format is not None:
            self.to(memory_format=self.memory_format)  # type: ignore[attr-defined]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.memory_format is None or not isinstance(batch, dict):
            return batch
        rank = self._format_rank()
        return {k: v.contiguous(memory_format=self.memory_format)
                if isinstance(v, torch.Tensor) and v.ndim == rank else v for k, v in batch.items()}
