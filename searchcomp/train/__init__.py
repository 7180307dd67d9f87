"""Training: the base's training loop, evaluation, and the short fine-tune each candidate gets
(distilled from the base)."""

from searchcomp.train.distill import distill_loss
from searchcomp.train.finetune import BelowFloor, FinetuneResult, finetune, total_steps
from searchcomp.train.loops import DivergedError, evaluate, train_base

__all__ = ["BelowFloor", "DivergedError", "FinetuneResult", "distill_loss", "evaluate",
           "finetune", "total_steps", "train_base"]
