"""Pretraining objectives, one file per method; each owns its masking, targets and loss."""

from .mae import MAE, masked_patch_loss

__all__ = ["MAE", "masked_patch_loss"]
