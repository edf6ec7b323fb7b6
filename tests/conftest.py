import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"

# Two cores: keep torch from oversubscribing them, and never reach for a hub or an experiment tracker.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that wait for work sleep instead of spinning (read when torch loads, after this file). On two cores
# shared with other jobs, spinning threads take the cores from the thread with the work: a generate() of the embedded
# model measured 24 s of CPU with spinning threads and 3 s without.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The tiny model's shape: SmolLM2's Llama architecture and vocabulary, two small layers. The output layer is not tied
# to the embeddings, so that the end-of-turn token can have a row of its own (see tiny_model_dir).
TINY_MODEL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
# The scale of the end-of-turn row: a random direction of this scale makes <|im_end|> likely in some contexts and
# unlikely in others, so that sampled answers of a dozen tokens sometimes stop and sometimes run to the limit, and
# greedy ones never stop at their first token. A uniformly random output layer would almost never stop.
TINY_EOS_SCALE = 1.0


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The embedded SmolLM2-135M-Instruct: where the model's behaviour matters (stopping at the end of its turn, the
    demo, the pipeline, a served user that must answer like the local one)."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (scripts/prepare_embedded_model.sh) first")
    return str(MODEL_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(model_dir, tmp_path_factory) -> str:
    """A random two-layer Llama on the embedded model's tokenizer, chat template and generation config, saved once a
    session: for the plumbing (trainers, checkpoints, evaluation, LoRA), where what the model says does not matter
    and a training step takes a fraction of a second instead of seconds."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    config = AutoConfig.from_pretrained(model_dir)
    config.update(TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            eos_row = torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(5))
            model.lm_head.weight[tokenizer.eos_token_id] = TINY_EOS_SCALE * eos_row
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(MODEL_DIR / "generation_config.json", folder / "generation_config.json")
    return str(folder)


@pytest.fixture(autouse=True)
def _restore_environment():
    """TrainingArguments writes ACCELERATE_MIXED_PRECISION into os.environ; without this a bf16 config parsed in
    one test would turn on autocast in every later test's trainer."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
