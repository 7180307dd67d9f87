"""Knowledge distillation: the loss that pulls a candidate towards the base's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from searchcomp.compute import Compute
from searchcomp.data import Batches


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


@torch.no_grad()
def teacher_outputs(teacher: torch.nn.Module, x: torch.Tensor, compute: Compute) -> torch.Tensor:
    """The teacher's logits for a batch, as distillation uses them: eval mode, the evaluation
    precision (fp32 unless configured otherwise), returned in float32."""
    teacher.eval()
    with compute.eval_autocast():
        return teacher(x).float()


def teacher_logits(teacher: torch.nn.Module, batches: Batches, compute: Compute) -> torch.Tensor:
    """Logits of ``teacher`` for every image of ``batches``, row i for image i of the subset.

    Without data augmentation the teacher sees the same image every epoch, so these rows
    stand in for a teacher forward per fine-tune step (:func:`teacher_outputs` on the same
    images gives the same values)."""
    out: torch.Tensor | None = None
    for idx, x, _ in batches.ordered().indexed():
        t = teacher_outputs(teacher, x, compute)
        if out is None:
            out = torch.empty(batches.size, t.shape[1], dtype=torch.float32, device=t.device)
        out[idx.to(t.device)] = t
    if out is None:
        raise ValueError("teacher_logits: the batches hold no images")
    return out
