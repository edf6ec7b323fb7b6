"""The teacher pass scores a generation batch chunk by chunk, so its largest logits tensor is bounded by the chunk.

With Qwen3's ~152k vocabulary, [batch, length, vocab] float32 logits for a whole generation batch would be the
largest tensor of a step; the peak is measured here as the largest logits tensor the model returns during the pass,
on the tiny random model (tests/conftest.py), which has the embedded model's 49k vocabulary.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.prompts import prompt_messages

CHUNK = 1  # per_device_train_batch_size: TRL's chunk for its own log-prob passes
GENERATION_BATCH = 4  # steps_per_generation=4: four chunks' worth of samples are scored at generation time
ANSWERS = [
    "Rent increases are limited by local law; check your lease and your city's rent rules before you pay.",
    "Rest, drink water, walk gently and eat protein; the soreness fades in three to five days.",
    "Put the glasses away at night and give her a puzzle feeder.",
    "Write down what you did, then talk to your lead first; go to HR if nothing changes.",
]


@pytest.fixture(scope="module")
def scoring(tiny_model_dir, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = OnlineSDPOConfig(
        output_dir=str(tmp_path_factory.mktemp("memory")), per_device_train_batch_size=CHUNK,
        per_device_eval_batch_size=GENERATION_BATCH, gradient_accumulation_steps=4, max_completion_length=32,
        report_to=[], bf16=False,
    )
    prompts = [prompt_messages(f"Question {i}: {a[:30]}?", "") for i, a in enumerate(ANSWERS)]
    trainer = OnlineSDPOTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer,
                                train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    eos = tokenizer.eos_token
    ids = tokenizer([a + eos for a in ANSWERS], add_special_tokens=False)["input_ids"]
    completion_ids, completion_mask = trainer._pad(ids, "right")
    teacher_texts = [trainer.contexts.teacher_context(m, "Shorter, please.")[0] for m in prompts]
    trainer.model.train()  # training mode: the chunk is per_device_train_batch_size
    logps, seen = largest_logits(trainer, teacher_texts, completion_ids, completion_mask)
    return dict(trainer=trainer, teacher_texts=teacher_texts, completion_ids=completion_ids,
                completion_mask=completion_mask, logps=logps, seen=seen)


def largest_logits(trainer, teacher_texts, completion_ids, completion_mask):
    """The teacher log-probs, and the shapes and bytes of every logits tensor the model returned meanwhile."""
    seen = []

    def record(module, args, kwargs, output):
        seen.append((tuple(output.logits.shape), output.logits.numel() * output.logits.element_size()))

    hook = trainer.model.register_forward_hook(record, with_kwargs=True)
    try:
        logps, _ = trainer.scorer.teacher_pass(teacher_texts, completion_ids, completion_mask)
    finally:
        hook.remove()
    return logps, seen


def test_teacher_logits_never_exceed_one_chunk(scoring):
    trainer, completion_ids, seen = scoring["trainer"], scoring["completion_ids"], scoring["seen"]
    assert scoring["logps"].shape == completion_ids.shape == (GENERATION_BATCH, completion_ids.size(1))
    vocab, length = trainer.model.config.vocab_size, completion_ids.size(1)
    chunk_bytes = CHUNK * (length + 1) * vocab * 4  # TRL keeps one extra position, then drops it
    whole_batch_bytes = GENERATION_BATCH * length * vocab * 4
    assert [shape[0] for shape, _ in seen] == [CHUNK] * (GENERATION_BATCH // CHUNK)
    peak = max(size for _, size in seen)
    assert peak <= chunk_bytes < whole_batch_bytes / 2


def test_chunking_does_not_change_the_teacher_logps(scoring):
    """In eval mode the chunk is per_device_eval_batch_size, here the whole batch: the same values, one pass."""
    trainer, mask = scoring["trainer"], scoring["completion_mask"]
    trainer.model.eval()
    try:
        whole, seen = largest_logits(trainer, scoring["teacher_texts"], scoring["completion_ids"], mask)
    finally:
        trainer.model.train()
    assert [shape[0] for shape, _ in seen] == [GENERATION_BATCH]
    assert torch.allclose(scoring["logps"][mask.bool()], whole[mask.bool()], atol=1e-4)
