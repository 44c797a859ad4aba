"""The DINO self-distillation loss with teacher centring and sharpening.

Teacher outputs are centred (minus a running mean ``c``) and sharpened with a low temperature;
student outputs are softened with ``student_temp``. The loss is the cross-entropy
``-sum_k q_k log p_k`` averaged over every (teacher view, student view) pair except a view with
itself; the teacher sees only the global views, which are the student's first views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLoss", "LossStats"]


@dataclass
class LossStats:
    """Collapse diagnostics of one step (detached scalars)."""

    teacher_entropy: torch.Tensor  # mean entropy of the teacher's distributions (nats)
    kl: torch.Tensor  # mean KL(teacher || student) over the loss pairs (nats)


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                update_center: bool = True) -> tuple[torch.Tensor, LossStats]:
        """``student_out``: (n_views * B, K), ``teacher_out``: (n_global * B, K), both crop-major."""
        n_views = student_out.shape[0] // (teacher_out.shape[0] // self.n_global)
        student_out = student_out.float()
        teacher_out = teacher_out.float().detach()
        log_p = F.log_softmax(student_out / self.student_temp, dim=-1).chunk(n_views)
        q_logits = (teacher_out - self.center) / teacher_temp
        q = F.softmax(q_logits, dim=-1).chunk(self.n_global)
        log_q = F.log_softmax(q_logits, dim=-1).chunk(self.n_global)

        total = student_out.new_zeros(())
        kl = student_out.new_zeros(())
        n_pairs = 0
        for iq in range(self.n_global):
            for v in range(n_views):
                if v == iq:  # the same view seen by both networks carries no learning signal
                    continue
                ce = torch.sum(-q[iq] * log_p[v], dim=-1).mean()
                total = total + ce
                with torch.no_grad():
                    kl = kl + torch.sum(q[iq] * (log_q[iq] - log_p[v]), dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError("the DINO loss needs at least two views")
        with torch.no_grad():
            q_all = torch.cat(q)
            entropy = -(q_all * torch.cat(log_q)).sum(-1).mean()
        if update_center:
            self.update_center(teacher_out)
        return total / n_pairs, LossStats(teacher_entropy=entropy.detach(), kl=(kl / n_pairs).detach())

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher's mean output (averaged over every global view of the batch)."""
        batch_center = teacher_out.float().mean(dim=0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            batch_center /= torch.distributed.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
