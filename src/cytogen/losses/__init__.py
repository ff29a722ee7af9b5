"""Loss functions as plain functions."""

from cytogen.losses.reconstruction import get_loss, l1_loss, masked_l1_loss, mse_loss

__all__ = ["get_loss", "l1_loss", "masked_l1_loss", "mse_loss"]
