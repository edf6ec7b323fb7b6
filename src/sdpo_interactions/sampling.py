"""Generation that samples exactly as configured, whatever the model folder's generation_config.json says.

transformers >= 4.50 replaces every setting of a `GenerationConfig` that equals the library default (temperature
1.0, top_p 1.0, top_k 50, do_sample False, ...) with the model folder's value. Qwen3 ships temperature 0.6, top_p
0.95 and top_k 20, so a policy asked to sample at temperature 1.0 would sample at 0.6 while its log-probs are
scored at 1.0: the answer would not be drawn from the distribution that forms the advantage and the PPO ratio.
Every generation path of this project goes through this module so that what is configured is what runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

from transformers import GenerationConfig, PreTrainedModel


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one generation path; temperature 0 means greedy decoding.

    `top_k=0` and `top_p=1.0` switch those filters off, and `min_p=None` leaves min-p sampling off.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def as_dict(self) -> dict:
        return asdict(self)

    def generation_config(self, max_new_tokens: int, pad_token_id: int, eos_token_id) -> GenerationConfig:
        """A complete GenerationConfig: every sampling field set, so no model default has anything to fill in."""
        if self.temperature == 0:
            return GenerationConfig(
                max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            )
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=True, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        )


def generate_exactly(model: PreTrainedModel, inputs: dict, config: GenerationConfig):
    """`model.generate` with exactly `config`: `use_model_defaults=False` is transformers' switch for that."""
    return model.generate(**inputs, generation_config=config, use_model_defaults=False)


@contextlib.contextmanager
def model_defaults_ignored(model) -> Iterator[None]:
    """For generate() calls we do not write (TRL's), hide the model folder's sampling defaults while they run.

    Each generating module (the model itself, or the base model inside a PEFT wrapper) gets a generation config
    holding only its special tokens, so the merge finds nothing to fill in; the real one is restored afterwards and
    is what checkpoints save.
    """
    saved = [
        (module, module.generation_config)
        for module in model.modules()
        if isinstance(module, PreTrainedModel) and getattr(module, "generation_config", None) is not None
    ]
    for module, config in saved:
        module.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            decoder_start_token_id=config.decoder_start_token_id,
        )
    try:
        yield
    finally:
        for module, config in saved:
            module.generation_config = config
