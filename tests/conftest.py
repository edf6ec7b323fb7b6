import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"

# Two cores: keep torch from oversubscribing them, and never reach for a hub or an experiment tracker.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_dir() -> str:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (scripts/prepare_embedded_model.sh) first")
    return str(MODEL_DIR)


@pytest.fixture(autouse=True)
def _restore_environment():
    """TrainingArguments writes ACCELERATE_MIXED_PRECISION into os.environ; without this a bf16 config parsed in
    one test would turn on autocast in every later test's trainer."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
