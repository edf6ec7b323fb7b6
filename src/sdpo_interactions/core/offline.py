"""Offline SDPO: learn from logged conversations, where y is the assistant's logged answer and o the user's real
next message. No generation and no simulator; the hindsight context, the teacher and student passes, the signal,
the advantage, the loss reduction and the token log are online SDPO's own (sdpo_trainer.py), imported, not copied.

y was not sampled from the policy being trained, so this is not a policy-gradient step on the policy's own
answers: it raises or lowers the likelihood of each logged token by how much the user's reply made it more or less
likely in hindsight. The authors' offline update is exactly that signal-weighted log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdpo_interactions.core.trainer import ADVANTAGE_BASELINES, OnlineSDPOConfig, OnlineSDPOTrainer


def signal_weighted_nll(logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token loss `-A_t * log p(y_t | x, y_<t)` with the advantage held constant, shapes (B, T)."""
    return -advantages.detach() * logps


def first_tokens_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """`mask` (B, T) with each row's first `k` positions zeroed (completions are right-padded, so they start at 0)."""
    keep = torch.arange(mask.size(1), device=mask.device) >= k
    return mask * keep.to(mask.dtype).unsqueeze(0)


@dataclass
class OfflineSDPOConfig(OnlineSDPOConfig):
    """OnlineSDPOConfig with the authors' offline defaults: the raw signal, and the first tokens left out."""

    advantage_baseline: str = field(
        default="none",
        metadata={"help": "What is subtracted from the per-token signal; offline the authors use the raw signal "
                          "(`none`). `sequence_mean` and `leave_one_out` work as online.",
                  "choices": list(ADVANTAGE_BASELINES)},
    )
    ignore_first_tokens: int = field(
        default=2,
        metadata={"help": "Leave the first this many tokens of each logged answer out of the loss (the authors' 2: "
                          "an answer's opening tokens carry little of the user's reaction)."},
    )

    def __post_init__(self):
        if self.ignore_first_tokens < 0:
            raise ValueError(f"ignore_first_tokens must be >= 0, got {self.ignore_first_tokens}")
        if self.use_vllm:
            raise ValueError("use_vllm has no use offline: the answers are logged, nothing is generated")
        super().__post_init__()


class OfflineSDPOTrainer(OnlineSDPOTrainer):
    """SDPO on a dataset of (prompt messages, logged answer, the user's next message) samples.

    The dataset has columns `prompt` (chat messages up to the user turn that y answers), `completion` (y) and
    `feedback` (o), as `conversations.load_conversation_dataset` makes them.
    """

    _tag_names = ["trl", "sdpo", "offline-sdpo"]

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 callbacks=None, optimizers=(None, None), peft_config=None, run_settings=None):
        if args is not None and not isinstance(args, OfflineSDPOConfig):
            raise TypeError(f"args must be an OfflineSDPOConfig, got {type(args).__name__}")
        super().__init__(model, user_simulator=None, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, callbacks=callbacks, optimizers=optimizers,
                         peft_config=peft_config, run_settings=run_settings)

    def _check_feedback_source(self) -> None:
        """The feedback is in the data."""

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        missing = {"prompt", "completion", "feedback"} - set(inputs[0])
        if missing:
            raise ValueError(f"OfflineSDPOTrainer needs prompt, completion and feedback columns; missing {sorted(missing)}")
        messages = [x["prompt"] for x in inputs]
        batch = self._fixed_answers(messages, [x["completion"] for x in inputs])
        return self._score_with_feedback(inputs, messages, batch, [x["feedback"] for x in inputs], 0.0)

    def _loss_mask(self, completion_mask: torch.Tensor, has_feedback: torch.Tensor) -> torch.Tensor:
        """Online's mask without each answer's first `ignore_first_tokens` tokens, as in the authors' update."""
        return first_tokens_mask(super()._loss_mask(completion_mask, has_feedback), self.args.ignore_first_tokens)

    def _per_token_policy_loss(self, logps, old_logps, advantages, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The authors' offline update: the signal-weighted log-likelihood of the logged answer."""
        return signal_weighted_nll(logps, advantages), torch.exp(logps - old_logps)
