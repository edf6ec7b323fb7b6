"""Personas, the local user simulator, and the converted embedded model it runs on (its replies, and its stopping at
the end of its turn, are that model's behaviour: they are tested on it)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.sampling import Sampling
from sdpo_interactions.users.base import StyleUserSimulator, UserSimulator, user_messages


def test_unknown_style_fails_before_touching_the_model_path():
    with pytest.raises(ValueError, match="Known styles"):
        StyleUserSimulator("/nonexistent/model", "grumpy")


def test_user_sees_persona_request_and_answer_but_is_told_not_to_answer():
    system, user = user_messages(STYLE_PERSONAS["poetic"], "What is rain?", "Water falling.")
    assert STYLE_PERSONAS["poetic"] in system["content"] and "Do not answer" in system["content"]
    assert "What is rain?" in user["content"] and "Water falling." in user["content"]


def test_a_simulator_plays_the_persona_text_it_is_given(tiny_model_dir):
    user = StyleUserSimulator(tiny_model_dir, "my_own", persona="You want answers in French.", max_new_tokens=2,
                              device="cpu")
    assert user.settings()["persona"] == "You want answers in French."
    assert "You want answers in French." in user.settings()["system_prompt"]


def test_a_custom_simulator_needs_only_generate_feedback():
    class Minimal(UserSimulator):
        def generate_feedback(self, prompts, completions):
            return ["fine"] * len(prompts)

    assert Minimal().settings() == {"class": "Minimal", "style": None, "persona": None}


def test_embedded_model_stops_at_end_of_turn(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer("Hello")["input_ids"][0] != tokenizer.convert_tokens_to_ids("<|im_start|>")  # no stray BOS
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]) == "The capital of France is Paris.<|im_end|>"


def test_local_simulator_answers_each_pair_in_order(model_dir):
    user = StyleUserSimulator(model_dir, "concise_casual_beginner", max_new_tokens=12, sampling=Sampling(0.0),
                              batch_size=2, device="cpu", dtype="float32")  # the folder's bf16 is slow on a CPU
    prompts = ["What is 2+2?", "Name a colour.", "Summarise: the cat sat all day."]
    completions = ["4", "Blue, the colour of the sky and sea.", "TL;DR: a cat sat."]
    replies = user.generate_feedback(prompts, completions)
    assert len(replies) == 3 and all(isinstance(r, str) and r for r in replies)
    # Greedy replies do not depend on batch composition: the third pair alone gives the same reply.
    assert user.generate_feedback(prompts[2:], completions[2:]) == replies[2:]
    assert user.settings()["sampling"]["temperature"] == 0 and "system_prompt" in user.settings()
    with pytest.raises(ValueError, match="3 prompts but 2 completions"):
        user.generate_feedback(prompts, completions[:2])
