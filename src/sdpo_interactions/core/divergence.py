"""The logit modes' maths as pure functions of log-probabilities: the top-k support with its tail bucket, and the
divergence family between the student's and the teacher's next-token distributions.

Every function takes log-probabilities over one axis (the last): N positions with S support entries, (N, S). The
student carries the gradient; the teacher never does. The definitions follow TRL's `experimental/sdpo/loss_utils.py`
(verl's `core_algos.py` has the same code) and the authors' `live_updater.py`; docs/algorithm.md gives the formulas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The captured mass of a top-k support is capped just under 1 (log-mass at most -1e-7), as in all three sources, so
# that the tail log(1 - mass) stays finite when the top-k holds (almost) everything.
TAIL_LOG_MASS_CAP = -1e-7


def add_tail_bucket(topk_logps: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of a top-k support -> (N, k + 1), the last entry the log of the mass outside it."""
    captured = torch.logsumexp(topk_logps, dim=-1, keepdim=True).clamp(max=TAIL_LOG_MASS_CAP)
    return torch.cat([topk_logps, torch.log(-torch.expm1(captured))], dim=-1)


def renormalised(logps: torch.Tensor) -> torch.Tensor:
    """(N, k) log-probs of a support, renormalised to sum to 1 over it: the distribution conditional on it."""
    return logps - torch.logsumexp(logps, dim=-1, keepdim=True)


def topk_support(student_logps: torch.Tensor, teacher_logps: torch.Tensor, *, k: int, add_tail: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions (N, V) restricted to the student's k most likely tokens (the support TRL's local path, the
    authors and verl all use), each with its own tail bucket (N, k + 1), or each renormalised over the k (N, k)."""
    index = student_logps.detach().topk(k, dim=-1).indices
    student, teacher = student_logps.gather(-1, index), teacher_logps.gather(-1, index)
    if add_tail:
        return add_tail_bucket(student), add_tail_bucket(teacher)
    return renormalised(student), renormalised(teacher)


def kl(p_logps: torch.Tensor, q_logps: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q) over the last axis: (N, S) twice -> (N,)."""
    return F.kl_div(q_logps, p_logps, reduction="none", log_target=True).sum(dim=-1)


def divergence(student_logps: torch.Tensor, teacher_logps: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """The per-position divergence (N,) between student S and teacher T over a support (N, S each).

    alpha = 1: the reverse KL(S || T) (the paper's Eq. 2, the authors' only choice, TRL's default); alpha = 0: the
    forward KL(T || S); in between TRL's generalised Jensen-Shannon divergence with the mixture
    M = (1 - alpha) S + alpha T: (1 - alpha) KL(S || M) + alpha KL(T || M). The family is discontinuous at both ends
    (the interior formula tends to 0 there), which is why they are the plain KLs.
    """
    teacher_logps = teacher_logps.detach()
    if alpha == 1.0:
        return kl(student_logps, teacher_logps)
    if alpha == 0.0:
        return kl(teacher_logps, student_logps)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"distillation_alpha must be in [0, 1], got {alpha}")
    mixture = torch.logsumexp(torch.stack([student_logps + math.log(1 - alpha), teacher_logps + math.log(alpha)]),
                              dim=0)
    return (1 - alpha) * kl(student_logps, mixture) + alpha * kl(teacher_logps, mixture)


def importance_ratio(logps: torch.Tensor, behaviour_logps: torch.Tensor) -> torch.Tensor:
    """The sampled token's ratio exp(logp - behaviour logp) (B, T), detached, its log clamped to [-20, 20] as TRL
    does. `distillation_is_clip` caps it from above only (TRL's one-sided clip) before it weights the loss."""
    return torch.exp((logps.detach() - behaviour_logps).clamp(min=-20.0, max=20.0))
