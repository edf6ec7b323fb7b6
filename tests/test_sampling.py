"""Every generation path samples exactly as configured, even from a model folder whose generation_config.json sets
Qwen3's defaults (temperature 0.6, top_p 0.95, top_k 20). What generate() actually ran with is read from
transformers' own `_prepare_generation_config`, wrapped so the settings it returns are recorded."""

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoTokenizer, GenerationConfig
from transformers.generation.utils import GenerationMixin

from sdpo_interactions.evaluation.generation import ChatModel
from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.sampling import Sampling
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.users.base import StyleUserSimulator

from fakes import SameReplyUser

QWEN3_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
CHAT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def qwen_like_model(tiny_model_dir, tmp_path_factory):
    """The tiny random model (tests/conftest.py) with Qwen3's sampling defaults in its generation_config.json (weights
    linked)."""
    folder = tmp_path_factory.mktemp("qwen-like")
    for path in Path(tiny_model_dir).iterdir():
        if path.name == "model.safetensors":
            (folder / path.name).symlink_to(path.resolve())
        else:
            shutil.copy(path, folder / path.name)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(QWEN3_DEFAULTS)
    config.pop("_from_model_config", None)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture
def ran_with(monkeypatch):
    """The generation configs generate() really used, in call order."""
    seen = []
    original = GenerationMixin._prepare_generation_config

    def spy(self, *args, **kwargs):
        config, model_kwargs = original(self, *args, **kwargs)
        seen.append(config)
        return config, model_kwargs

    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", spy)
    return seen


def settings(config: GenerationConfig) -> dict:
    return {"do_sample": config.do_sample, "temperature": config.temperature, "top_p": config.top_p,
            "top_k": config.top_k}


@pytest.fixture(scope="module")
def trainer(qwen_like_model, tmp_path_factory):
    config = OnlineSDPOConfig(
        output_dir=str(tmp_path_factory.mktemp("run")), per_device_train_batch_size=2, max_completion_length=4,
        temperature=1.0, report_to=[], bf16=False,
    )
    data = Dataset.from_list([{"prompt": prompt_messages("Name a colour.", SYSTEM_PROMPTS["general"])}] * 2)
    return OnlineSDPOTrainer(
        model=qwen_like_model, user_simulator=SameReplyUser(), args=config, train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(qwen_like_model),
    )


def test_the_model_defaults_would_override_a_plain_generate_call(trainer, ran_with):
    """The trap: TRL's config (temperature 1.0, top_p 1.0, top_k None) passed straight to generate() samples at
    the folder's 0.6 and 0.95, since those two equal the library defaults and are replaced."""
    inputs = trainer.processing_class(["Hello"], return_tensors="pt")
    trainer.model.generate(**inputs, generation_config=trainer.generation_config)
    assert settings(ran_with[-1]) == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": None}


def test_policy_generation_samples_exactly_as_configured(trainer, ran_with):
    trainer.model.train()
    trainer._generate([trainer.contexts.render(CHAT)] * 2, None)
    assert settings(ran_with[-1]) == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": None}
    # The folder's own defaults are back afterwards: checkpoints save the model's generation_config unchanged.
    assert trainer.model.generation_config.temperature == 0.6
    assert trainer.policy_sampling() == {
        "backend": "transformers", "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None,
        "repetition_penalty": 1.0, "generation_kwargs": None,
    }


@pytest.mark.parametrize(
    "sampling, expected",
    [
        (Sampling(temperature=0.0), {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}),
        (Sampling(temperature=0.7), {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0}),
    ],
)
def test_evaluation_generation_samples_exactly_as_configured(qwen_like_model, ran_with, sampling, expected):
    ChatModel(qwen_like_model).generate([CHAT], 3, sampling, 1, {})
    assert settings(ran_with[-1]) == expected


def test_local_user_samples_exactly_as_configured(qwen_like_model, ran_with):
    default = StyleUserSimulator(qwen_like_model, "poetic", max_new_tokens=3, device="cpu")
    default.generate_feedback(["Why is the sky blue?"], ["Because of the sea."])
    assert settings(ran_with[-1]) == {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": 20}
    plain = StyleUserSimulator(
        qwen_like_model, "poetic", max_new_tokens=3, device="cpu", sampling=Sampling(temperature=1.0)
    )
    plain.generate_feedback(["Why is the sky blue?"], ["Because of the sea."])
    assert settings(ran_with[-1]) == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    assert plain.settings()["sampling"]["temperature"] == 1.0
