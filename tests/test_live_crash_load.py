"""Reliability of the live server as real processes (a tiny random model: the figures are about the server, not the
model). kill -9 during an update, then restart: every answer a client received is still there, the interrupted
update's samples go back to pending and are trained exactly once, and the restarted server serves the last
published version. A bounded load test: concurrent OpenAI clients on 127.0.0.1 with no error and no lost
conversation. bench/bench_live_server.py prints the same figures at full size (32 clients x 10 conversations).
Slow: servers."""

import pytest

from sdpo_interactions.testing.live_server import LiveServer, crash_test, load_test, sample_audit

pytestmark = pytest.mark.slow
SETTINGS = ("--max_completion_tokens", "8", "--monitor_probe_tokens", "8", "--lora_r", "4", "--lora_alpha", "8",
            "--min_seconds_between_updates", "0")


def test_a_crash_during_an_update_loses_nothing_and_trains_each_sample_once(tiny_model_dir, tmp_path):
    figures = crash_test(tiny_model_dir, tmp_path / "data", tmp_path / "server.log", *SETTINGS,
                         "--samples_per_update", "3", "--max_sample_wait_seconds", "1")
    print(figures)
    assert figures["interrupted_update_state"] == "interrupted"  # the kill did land inside an update
    assert figures["last_published_before_crash"] >= 1  # and after one had been published
    assert figures["acknowledged_answers"] > 0 and figures["lost_answers"] == 0
    assert figures["samples_of_interrupted_update"] == figures["back_to_pending"] > 0
    assert figures["served_after_restart"] == figures["last_published_before_crash"]
    assert figures["answer_after_restart_by"] == f"shared-v{figures['last_published_before_crash']}"
    assert figures["skipped"] == 0 and figures["trained_twice"] == 0 and figures["trained_without_update"] == 0
    assert figures["sample_states"].get("trained", 0) >= figures["samples_of_interrupted_update"]


def test_concurrent_clients_get_every_answer_and_lose_no_conversation(tiny_model_dir, tmp_path):
    with LiveServer(tiny_model_dir, tmp_path / "data", tmp_path / "server.log", *SETTINGS,
                    "--samples_per_update", "4") as server:
        figures = load_test(server, clients=8, conversations=3)
        print(figures.summary())
        assert figures.errors == 0 and figures.lost_conversations == 0 and figures.lost_answers == 0
        assert figures.requests == 8 * 3 * 2 and figures.samples == 8 * 3
        audit = sample_audit(server)
    assert audit["trained_twice"] == 0 and audit["trained_without_update"] == 0
