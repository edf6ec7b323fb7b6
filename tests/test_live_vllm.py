"""The live server's vLLM backend against a stand-in for `vllm serve --enable-lora` (testing/vllm_standin.py: the
endpoints and fields the backend uses, answered by transformers and PEFT), since vLLM cannot be installed here:
version 0 is loaded at start, answers come from the loaded version with their token ids and log-probs, a published
update is loaded as the next version and the old one unloaded, and the next answer comes from it. What vLLM itself
does is checked on a GPU machine only (docs/live.md). Slow: two servers."""

import json
import threading
import time

import pytest
import uvicorn

from sdpo_interactions.testing.live_server import MODEL, LiveServer, two_turn_conversation
from sdpo_interactions.testing.openai_server import free_port
from sdpo_interactions.testing.vllm_standin import create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def standin(tiny_model_dir):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_model_dir), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def calls(url: str) -> list[list[str]]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/standin/calls") as reply:
        return json.load(reply)


def test_answers_come_from_vllm_and_published_versions_are_hot_swapped(standin, tiny_model_dir, tmp_path):
    settings = ("--generation_backend", "vllm", "--vllm_url", f"{standin}/v1", "--max_completion_tokens", "8",
                "--monitor_probe_tokens", "8", "--lora_r", "4", "--lora_alpha", "8", "--samples_per_update", "2",
                "--min_seconds_between_updates", "0", "--monitor_min_specificity", "-1",
                "--monitor_min_length_ratio", "0", "--monitor_max_length_ratio", "1e9")  # random lengths: noise
    with LiveServer(tiny_model_dir, tmp_path / "data", tmp_path / "server.log", *settings) as server:
        assert calls(standin) == [["load", "shared-v0"]]
        client = server.client()
        _, served = two_turn_conversation(client, "v", "First question?", "Shorter.")
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Streamed?"}],
                                                user="v", stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        two_turn_conversation(client, "v", "Second question?", "Even shorter.")
        assert {s["adapter_version"] for s in served} == {0}
        server.wait_for(lambda: server.admin("GET", "/admin/status")["served_versions"]["shared"] >= 1,
                        timeout=300, what="a published version")
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Now?"}], user="v")
        assert reply.system_fingerprint == "shared-v1"
        record = calls(standin)
        assert ["load", "shared-v1"] in record and ["unload", "shared-v0"] in record
        assert record.index(["load", "shared-v1"]) < record.index(["unload", "shared-v0"])
        assert record[-1] == ["generate", "shared-v1"]
        metrics = json.loads(server.rows("SELECT metrics FROM updates WHERE state = 'published'")[0]["metrics"])
        # The logged log-probs are the behaviour policy: the version that sampled them gives a ratio of 1.
        assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-3) and metrics["ratio_max"] == pytest.approx(1.0,
                                                                                                             abs=1e-3)
        generation = server.rows("SELECT token_ids, logps FROM generations LIMIT 1")[0]
        assert len(json.loads(generation["token_ids"])) == len(json.loads(generation["logps"])) > 0
