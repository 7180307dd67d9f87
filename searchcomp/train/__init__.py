"""Training: the base's training loop, evaluation, and the short fine-tune each candidate gets
(distilled from the base), all on one :class:`~searchcomp.compute.Compute`."""

from searchcomp.train.bn import reestimate_bn
from searchcomp.train.distill import distill_loss, teacher_logits, teacher_outputs
from searchcomp.train.finetune import BelowFloor, FinetuneResult, finetune, total_steps
from searchcomp.train.loops import DEFAULT_COMPUTE, DivergedError, evaluate, train_base

__all__ = ["DEFAULT_COMPUTE", "BelowFloor", "DivergedError", "FinetuneResult", "distill_loss",
           "evaluate", "finetune", "reestimate_bn", "teacher_logits", "teacher_outputs", "total_steps",
           "train_base"]
