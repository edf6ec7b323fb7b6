"""The OpenAI-compatible user against a real server: `transformers serve` on 127.0.0.1 with the embedded model.

One server for the module. Greedy replies make the server checkable: it must answer exactly what the same model
answers locally (same persona prompt, same chat template), and a reply in a token log can be asked for again.
`transformers serve` refuses a top_k field, so these users send none (`top_k=0`).
"""

import json
import sys
from pathlib import Path

import pytest
from sdpo_interactions.testing.openai_server import TransformersServer
from sdpo_interactions.testing.runs import REQUESTS, SECRETS, drop_weights, finish, read_jsonl, start, subprocess_env, write_prompts

from sdpo_interactions.users.api import OpenAIStyleUserSimulator
from sdpo_interactions.run_files import RUN_SETTINGS_NAME
from sdpo_interactions.sampling import Sampling
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME
from sdpo_interactions.users.base import StyleUserSimulator

pytestmark = pytest.mark.slow  # a `transformers serve` process for the module, and torchrun

STYLE = "concise_casual_beginner"
GREEDY = {"temperature": 0.0, "top_k": 0, "max_tokens": 12}
USER_KEY = "sk-user-server-MARKER-51c0"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with TransformersServer(model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


def served_user(server, **kwargs) -> OpenAIStyleUserSimulator:
    return OpenAIStyleUserSimulator(STYLE, base_url=server.base_url, model=server.model, **{**GREEDY, **kwargs})


def test_served_user_replies_exactly_as_the_same_model_locally(server, model_dir):
    prompts = REQUESTS[:3]
    completions = ["Ask a tenant union.", "Rest, eat and walk a little each day.", "Put the glasses away at night."]
    sim = served_user(server, max_concurrency=3)
    served = sim.generate_feedback(prompts, completions)
    local = StyleUserSimulator(model_dir, STYLE, max_new_tokens=GREEDY["max_tokens"], sampling=Sampling(temperature=0.0),
                               batch_size=1, dtype="float32")
    assert served == local.generate_feedback(prompts, completions)
    assert all(served) and len(set(served)) == 3  # three real, distinct replies, each back at its own request
    metrics = sim.pop_metrics()
    assert (metrics["requests"], metrics["failed"]) == (3, 0)


def test_two_ranks_share_one_server_and_every_reply_stays_with_its_sample(server, tmp_path):
    """train.py under torchrun, 2 processes x 2 samples, one step; no rank loads a user model. The policy trains a
    LoRA adapter, so the same run also covers LoRA under two processes (gloo)."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", REQUESTS[:4])
    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [
        torchrun, "--standalone", "--nproc_per_node=2", "train.py", "--train_jsonl", str(prompts),
        "--system_prompt", "general", "--model_name_or_path", str(server.model), "--output_dir", str(out),
        "--user_api_base", server.base_url, "--user_api_model", server.model, "--user_temperature", "0",
        "--user_top_k", "0", "--user_max_new_tokens", str(GREEDY["max_tokens"]), "--user_api_max_concurrency", "2",
        "--user_api_chat_template_kwargs", "{}",  # transformers serve refuses the field; vLLM reads it
        "--max_completion_length", "8", "--per_device_train_batch_size", "2", "--max_steps", "1",
        "--logging_steps", "1", "--token_log_samples", "64", "--save_strategy", "no", "--report_to", "none",
        "--bf16", "false", "--gradient_checkpointing", "false", "--seed", "3", "--dataloader_num_workers", "0",
        "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
    ]
    env = dict(subprocess_env(), USER_API_KEY=USER_KEY)
    log = tmp_path / "train.log"
    assert finish(start(command, log, env), log) == 0, log.read_text()[-4000:]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    drop_weights(out)

    records = read_jsonl(out / TOKEN_LOG_NAME)
    assert len(records) == 4 and {r["prompt"] for r in records} == set(REQUESTS[:4])  # both ranks' samples
    assert all(r["feedback"] for r in records) and len({r["feedback"] for r in records}) >= 2
    # Asked again, one by one, the server gives each (request, answer) of the log the very reply trained with.
    again = served_user(server, max_concurrency=1)
    assert again.generate_feedback([r["prompt"] for r in records], [r["completion"] for r in records]) == [
        r["feedback"] for r in records
    ]
    settings = json.loads((out / RUN_SETTINGS_NAME).read_text())
    user = settings["user_simulator"]
    assert (user["class"], user["base_url"].rstrip("/"), user["top_k"]) == ("OpenAIStyleUserSimulator", server.base_url, None)
    everything = log.read_text() + "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert USER_KEY not in everything and not any(secret in everything for secret in SECRETS.values())
