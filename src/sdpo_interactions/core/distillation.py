"""The logit modes' forward passes and per-token divergence, computed so that no (B, T, V) tensor is ever kept.

At loss time the teacher's final hidden states over y (no gradient) and the student's (with gradient) are taken from
one forward pass each, without their logits. The answers' tokens are then projected through each side's output layer
a chunk of positions at a time, and each chunk's divergence is computed under activation checkpointing: a chunk's
(c, V) logits live only while that chunk is computed, and again while its backward runs. What stays between the
passes and the loss is (B, T, H) hidden states, not (B, T, V) logits.

Logits are divided by the sampling temperature on both sides (as TRL does, and as the sampled-token log-probs are)
and taken in float32 (or the model's precision, if higher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sdpo_interactions.core.teacher import Teacher, parameter_sharding


@dataclass
class LogitTerms:
    """The logit modes' per-token values for a micro-batch of B answers with T tokens; 0 off the completion mask."""

    divergence: torch.Tensor  # (B, T), with gradient
    student_logps: torch.Tensor  # (B, T): log p_student(y_t), with gradient
    teacher_logps: torch.Tensor  # (B, T): log p_teacher(y_t), without
    entropies: torch.Tensor  # (B, T): the student's entropy, without


@dataclass(frozen=True)
class OutputHead:
    """Where a causal LM's logits come from: the names of its output layer's parameters, and Gemma's soft cap."""

    weight: str
    bias: Optional[str]
    softcap: Optional[float]

    @classmethod
    def of(cls, model: torch.nn.Module) -> "OutputHead":
        layer = model.get_output_embeddings()
        if type(layer) is not torch.nn.Linear:
            raise ValueError(f"the logit modes project hidden states through a plain linear output layer; this "
                             f"model's is {type(layer).__name__} (an adapter on lm_head?): use sampled_token")
        names = {id(p): n for n, p in model.named_parameters()}
        bias = None if layer.bias is None else names[id(layer.bias)]
        return cls(names[id(layer.weight)], bias, getattr(model.config, "final_logit_softcapping", None))

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """(..., H) -> (..., V) logits as the model's own forward makes them, in float32 at least."""
        logits = F.linear(hidden, weight, bias)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
    """(B, L) -> (B, L, H): the hidden states the output layer reads, through the model's own forward (so that a
    DDP wrapper sees the pass) with no logits computed (an empty `logits_to_keep`)."""
    nothing = torch.empty(0, dtype=torch.long, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=nothing,
                output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def check_output_head(model: torch.nn.Module, head: OutputHead, unwrap: Callable) -> None:
    """Refuse, at start-up, a model whose logits are not its output layer applied to its last hidden states."""
    bare = unwrap(model)
    ids = torch.arange(1, 5, device=bare.get_output_embeddings().weight.device).unsqueeze(0)
    params = dict(bare.named_parameters())
    training = model.training
    model.eval()  # no dropout (LoRA's, say) between the two passes compared
    try:
        with torch.no_grad():
            hidden = final_hidden_states(model, ids, torch.ones_like(ids))
            expected = model(input_ids=ids, use_cache=False).logits.float()
            projected = head.logits(hidden, params[head.weight], params.get(head.bias))
    except TypeError as err:
        raise ValueError(f"the logit modes need a model whose forward takes logits_to_keep: {err}") from None
    finally:
        model.train(training)
    if not torch.allclose(projected, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item()):
        raise ValueError(f"{type(bare).__name__} changes its logits after the output layer in a way the logit modes "
                         "do not reproduce: use distillation_mode=sampled_token")


class LogitDistillation:
    """The teacher's and the student's passes at loss time and the chunked divergence between them."""

    def __init__(self, teacher: Teacher, token_divergence: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 head: OutputHead, temperature: float, chunk_size: int, unwrap: Callable):
        self.teacher = teacher
        self.token_divergence = token_divergence
        self.head = head
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.unwrap = unwrap

    @classmethod
    def for_trainer(cls, trainer, token_divergence: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> "LogitDistillation":
        """With the trainer's teacher, temperature and chunk size, after checking that its model's logits can be
        rebuilt from its hidden states (one tiny forward pass)."""
        sharded = parameter_sharding(trainer.accelerator)
        if sharded:
            raise ValueError(f"distillation_mode={trainer.args.distillation_mode} applies the output layer outside the "
                             f"model's forward, which {sharded} shards across processes: use sampled_token there")
        unwrap = trainer.accelerator.unwrap_model
        head = OutputHead.of(unwrap(trainer.model))
        check_output_head(trainer.model, head, unwrap)
        return cls(trainer.teacher, token_divergence, head=head, temperature=trainer.temperature,
                   chunk_size=trainer.args.distillation_chunk_size, unwrap=unwrap)

    def terms(self, model: torch.nn.Module, prompt_ids, prompt_mask, completion_ids, completion_mask,
              teacher_ids, teacher_mask) -> LogitTerms:
        """Prompts (B, P), hindsight contexts (B, C), answers (B, T); `model` is the one the loss runs (wrapped)."""
        length = completion_ids.size(1)
        # The teacher first: a teacher with its own weights swaps them in, which must not happen inside the
        # student's graph.
        with torch.no_grad(), self.teacher.weights() as teacher_model:
            teacher_hidden = final_hidden_states(teacher_model, torch.cat([teacher_ids, completion_ids], dim=1),
                                                 torch.cat([teacher_mask, completion_mask], dim=1))
            teacher_hidden = teacher_hidden[:, -length - 1:-1]
        student_hidden = final_hidden_states(model, torch.cat([prompt_ids, completion_ids], dim=1),
                                             torch.cat([prompt_mask, completion_mask], dim=1))[:, -length - 1:-1]
        mask = completion_mask.bool()
        flat = self.flat_terms(student_hidden[mask], teacher_hidden[mask], completion_ids[mask])
        return LogitTerms(*(v.new_zeros(mask.shape).masked_scatter(mask, v) for v in flat))

    def flat_terms(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, token_ids: torch.Tensor
                   ) -> tuple[torch.Tensor, ...]:
        """N positions' hidden states (N, H) and tokens (N,) -> divergence, student and teacher log-prob of the
        token, student entropy, each (N,), computed `chunk_size` positions at a time."""
        params = dict(self.unwrap(self.teacher.policy()).named_parameters())
        weights = (params[self.head.weight], params.get(self.head.bias), self.teacher.parameter(self.head.weight),
                   None if self.head.bias is None else self.teacher.parameter(self.head.bias))
        size = self.chunk_size
        pieces = []
        for start in range(0, token_ids.numel(), size):
            chunk = (student_hidden[start:start + size], teacher_hidden[start:start + size],
                     token_ids[start:start + size], *weights)
            if torch.is_grad_enabled():
                pieces.append(checkpoint(self._chunk, *chunk, use_reentrant=False))
            else:
                pieces.append(self._chunk(*chunk))
        if not pieces:  # no token to learn from: zeros that still reach the graph, so every process runs backward
            empty = student_hidden.sum(dim=-1) * 0
            return empty, empty, empty.detach(), empty.detach()
        return tuple(torch.cat(column) for column in zip(*pieces))

    def _chunk(self, student_hidden, teacher_hidden, token_ids, weight, bias, teacher_weight, teacher_bias):
        student = torch.log_softmax(self.head.logits(student_hidden, weight, bias) / self.temperature, dim=-1)
        with torch.no_grad():
            teacher = torch.log_softmax(self.head.logits(teacher_hidden, teacher_weight, teacher_bias)
                                        / self.temperature, dim=-1)
            teacher_token = teacher.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
            entropy = -(student.exp() * student).sum(dim=-1)
        student_token = student.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
        return self.token_divergence(student, teacher), student_token, teacher_token, entropy
