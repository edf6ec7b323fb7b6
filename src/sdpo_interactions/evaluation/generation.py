"""Local generation of the responses an evaluation compares: a checkpoint's, the baseline's, a local judge's.

Greedy unless asked otherwise, and always exactly as configured (sampling.py), split across processes under
`accelerate launch` and gathered to every process.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

from sdpo_interactions.sampling import Sampling, generate_exactly


def stable_key(*parts) -> str:
    """A hash of JSON-serialisable parts: the identity of a cached response or of a judged pair."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GenerationSettings:
    """How a response is written. Part of every cache and pair key, so changing one never reuses stale work."""

    system_prompt: str
    chat_template_kwargs: dict
    max_new_tokens: int
    sampling: Sampling
    seed: int

    def as_dict(self) -> dict:
        return {
            "system_prompt": self.system_prompt,
            "chat_template_kwargs": self.chat_template_kwargs,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.sampling.as_dict(),
            "seed": self.seed,
        }


class ChatModel:
    """A local causal LM that answers chat conversations in batches, on this process's device."""

    def __init__(self, name_or_path: str, dtype: str = "auto"):
        import torch
        from accelerate import PartialState
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name_or_path = str(name_or_path)
        self.device = PartialState().device
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype).to(self.device).eval()

    def generate(
        self,
        conversations: Sequence[list[dict]],
        max_new_tokens: int,
        sampling: Sampling,
        batch_size: int,
        chat_template_kwargs: dict,
        progress=None,
    ) -> list[str]:
        """Replies decoded exactly with `sampling` (greedy at temperature 0), whatever the model folder's defaults.
        `progress` (a tqdm bar, say) is advanced by each batch's size."""
        import torch

        config = sampling.generation_config(max_new_tokens, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        replies: list[str] = []
        for start in range(0, len(conversations), batch_size):
            texts = [
                self.tokenizer.apply_chat_template(
                    m, tokenize=False, add_generation_prompt=True, **chat_template_kwargs
                )
                for m in conversations[start : start + batch_size]
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                output = generate_exactly(self.model, batch, config)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if progress is not None:
                progress.update(len(texts))
        return replies

    def label_logprobs(self, conversations: Sequence[list[dict]], labels: Sequence[str], batch_size: int,
                       chat_template_kwargs: dict) -> list[dict[str, float]]:
        """log p(label | conversation) as the answer's start, for each label: the best of its spellings
        (LABEL_SPELLINGS, the authors' StyleJudge), a spelling of several tokens scoring the sum of their log-probs.

        Spellings are grouped by all their tokens but the last, so one forward pass per group reads every spelling
        that ends there: typically two passes, after the prompt itself and after a newline.
        """
        prompts = [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, **chat_template_kwargs)
                   for m in conversations]
        spellings = label_spellings(self.tokenizer, labels)
        scores = [dict.fromkeys(labels, -math.inf) for _ in prompts]
        for prefix in sorted({ids[:-1] for ids in spellings}):
            for start in range(0, len(prompts), batch_size):
                chunk = [list(p) + list(prefix) for p in prompts[start: start + batch_size]]
                prefix_logps, next_logps = self._continuation_logps(chunk, len(prefix))
                for row, (before, after) in enumerate(zip(prefix_logps, next_logps)):
                    for ids, label in spellings.items():
                        if ids[:-1] == prefix:
                            score = before + after[ids[-1]].item()
                            scores[start + row][label] = max(scores[start + row][label], score)
        return scores

    def _continuation_logps(self, sequences: list[list[int]], prefix_length: int):
        """For token sequences ending in a prefix of `prefix_length` tokens: each prefix's summed log-prob after the
        rest (B,), and the next token's log-probs (B, V). Left-padded, with positions counted from each sequence's
        own start, so padding changes nothing; only the last prefix_length + 1 positions' logits are made."""
        import torch

        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=prefix_length + 1).logits
        logps = torch.log_softmax(logits.float(), dim=-1)  # (B, prefix_length + 1, V)
        prefix_ids = ids[:, width - prefix_length:] if prefix_length else ids[:, :0]
        prefix = logps[:, :-1].gather(-1, prefix_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1)
        return prefix.tolist(), logps[:, -1]

    def close(self) -> None:
        """Free the weights before the next model loads (one 8B model per GPU at a time)."""
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# How a judge may start its answer with a label: the authors' StyleJudge tries these and keeps the best.
LABEL_SPELLINGS = ("{}", " {}", "\n{}", "\n {}")


def label_spellings(tokenizer, labels: Sequence[str]) -> dict[tuple[int, ...], str]:
    """Token ids of every spelling of every label -> the label (a spelling two labels share would be ambiguous)."""
    spellings: dict[tuple[int, ...], str] = {}
    for label in labels:
        for spelling in LABEL_SPELLINGS:
            ids = tuple(tokenizer.encode(spelling.format(label), add_special_tokens=False))
            if ids and spellings.setdefault(ids, label) != label:
                raise ValueError(f"the tokenizer spells labels {spellings[ids]!r} and {label!r} alike: {ids}")
    return spellings


def sharded_generate(model_path: str, jobs: list[tuple[str, list[dict], GenerationSettings]], *, dtype: str,
                     batch_size: int, desc: str = "Responses") -> dict[str, str]:
    """Responses for (key, messages, settings) jobs, split across processes and gathered on every process.

    The main process shows a progress bar of its own share (the others run at the same pace)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm
    from transformers import set_seed

    state = PartialState()
    model = ChatModel(model_path, dtype)
    done: list[tuple[str, str]] = []
    with state.split_between_processes(jobs) as mine:
        by_settings: dict[str, tuple[GenerationSettings, list[tuple[str, list[dict]]]]] = {}
        for key, messages, settings in mine:
            by_settings.setdefault(stable_key(settings.as_dict()), (settings, []))[1].append((key, messages))
        shard = f" (process 0's {len(mine)} of {len(jobs)})" if state.num_processes > 1 else ""
        with tqdm(total=len(mine), desc=desc + shard, unit="response", disable=not state.is_main_process) as bar:
            for settings, group in by_settings.values():
                set_seed(settings.seed + state.process_index)
                replies = model.generate(
                    [m for _, m in group], settings.max_new_tokens, settings.sampling, batch_size,
                    settings.chat_template_kwargs, progress=bar,
                )
                done.extend((key, reply) for (key, _), reply in zip(group, replies))
    model.close()
    return dict(gather_object(done))
