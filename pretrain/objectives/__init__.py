"""Pretraining objectives, one file per method; each owns its masking, targets and loss.

Importing this package registers every objective (see :mod:`.base` for the contract between
an objective and the trainer).
"""

from .base import (
    build_objective,
    list_objectives,
    objective_param_problems,
    objective_params,
    register_objective,
)
from .mae import MAE, masked_patch_loss
from .satmaepp import SatMAEPP
from .selectivemae import SelectiveMAE
from .softcon import SoftCon

__all__ = ["MAE", "SatMAEPP", "SelectiveMAE", "SoftCon", "build_objective", "list_objectives",
           "masked_patch_loss", "objective_param_problems", "objective_params",
           "register_objective"]
