"""Knowledge distillation: the loss that pulls a candidate towards the base's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    """alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the soft term's gradients on the scale of the hard one (Hinton et al.).
    """
    hard = F.cross_entropy(student, y)
    if alpha >= 1.0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * hard + (1.0 - alpha) * soft
