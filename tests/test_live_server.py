"""The live server as users meet it: a real process on 127.0.0.1 with the embedded model, driven by the real
`openai` SDK. A two-turn chat makes exactly one sample (x, y, o), follow-ups advance the adapter version and the
next answer is served by it, keys and limits hold (and a refused request stores nothing), users see only their own
conversations, an admin deletes a user, /metrics is Prometheus text, the export replays with train_offline.py, and
no key reaches a file. Slow: one server for the module, about a minute of model time."""

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdpo_interactions.conversations import interaction_samples, read_conversations
from sdpo_interactions.testing.live_server import ADMIN_KEY, API_KEY, MODEL, LiveServer
from sdpo_interactions.testing.runs import subprocess_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("--max_completion_tokens", "16", "--monitor_probe_tokens", "8", "--lora_r", "8", "--lora_alpha", "16",
            "--samples_per_update", "2", "--min_seconds_between_updates", "0", "--max_sample_wait_seconds", "600",
            "--max_message_chars", "2000", "--max_messages", "8", "--max_prompt_tokens", "300",
            "--max_request_bytes", "20000")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    with LiveServer(model_dir, folder / "data", folder / "server.log", *SETTINGS) as running:
        yield running


def counts(server) -> dict:
    return {table: server.rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
            for table in ("conversations", "generations", "samples")}


def test_a_two_turn_chat_makes_exactly_one_sample_with_x_y_and_o(server):
    client = server.client()
    x = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a fruit."}]
    first = client.chat.completions.create(model=MODEL, messages=x, user="sample-user")
    y = first.choices[0].message.content
    o = "Not that one, a red one."
    stream = client.chat.completions.create(model=MODEL, messages=x + [{"role": "assistant", "content": y},
                                                                       {"role": "user", "content": o}],
                                            user="sample-user", stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rows = server.rows("SELECT s.feedback, g.id, g.prompt, g.answer FROM samples s JOIN generations g "
                       "ON g.id = s.generation_id WHERE s.user_id = 'sample-user'")
    assert len(rows) == 1
    assert json.loads(rows[0]["prompt"]) == x and rows[0]["answer"] == y and rows[0]["feedback"] == o
    assert rows[0]["id"] == first.model_extra["sdpo"]["generation_id"]
    assert chunks[-1].model_extra["sdpo"]["conversation_id"] == first.model_extra["sdpo"]["conversation_id"]
    assert first.system_fingerprint == "shared-v0" and first.usage.completion_tokens > 0


def test_keys_are_required_and_kept_apart(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong-key-0123456789").models.list()
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key=ADMIN_KEY).models.list()  # the admin key is not a chat key
    assert server.call("GET", "/v1/models", key=None)[0] == 401
    assert server.call("GET", "/admin/status", key=API_KEY)[0] == 401  # nor the chat key an admin key
    assert server.call("GET", "/admin/status", key=None)[0] == 401
    assert [m.id for m in server.client().models.list()] == [MODEL]
    status, body = server.call("GET", "/v1/models", key="nope")
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert server.call("GET", "/health", key=None)[0] == 200 and server.call("GET", "/", key=None)[0] == 200


def test_requests_over_a_limit_are_refused_and_store_nothing(server):
    client = server.client()
    x = [{"role": "user", "content": "Hi there"}]
    answer = client.chat.completions.create(model=MODEL, messages=x, user="limits").choices[0].message.content
    before = counts(server)
    follow = x + [{"role": "assistant", "content": answer}]
    with pytest.raises(openai.APIStatusError) as too_long:
        client.chat.completions.create(model=MODEL, messages=follow + [{"role": "user", "content": "a" * 2001}],
                                       user="limits")
    assert too_long.value.status_code == 413 and "2001 characters" in too_long.value.message
    with pytest.raises(openai.BadRequestError, match="messages are over the limit"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}] * 9, user="limits")
    with pytest.raises(openai.BadRequestError) as context:
        client.chat.completions.create(model=MODEL, messages=follow + [{"role": "user", "content": "word " * 400}],
                                       user="limits")
    assert context.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=x, user="limits", max_tokens=17)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="someone-elses-adapter", messages=x, user="limits")
    status, body = server.call("POST", "/v1/chat/completions", key=API_KEY, body=b"x" * 20001,
                               headers={"Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert counts(server) == before


def test_follow_ups_advance_the_adapter_and_the_next_answer_is_served_by_it(server):
    client = server.client()
    started = server.admin("GET", "/admin/status")["served_versions"]["shared"]
    for k in range(2):  # with the earlier sample, at least one full batch of two
        x = [{"role": "user", "content": f"Tell me about the number {k}."}]
        y = client.chat.completions.create(model=MODEL, messages=x, user="learner").choices[0].message.content
        client.chat.completions.create(model=MODEL, messages=x + [{"role": "assistant", "content": y},
                                                                  {"role": "user", "content": "Shorter, please."}],
                                       user="learner")
    server.wait_for(lambda: server.admin("GET", "/admin/status")["served_versions"]["shared"] > started,
                    timeout=600, what="a published update")
    version = server.admin("GET", "/admin/status")["served_versions"]["shared"]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "And now?"}],
                                           user="learner")
    assert reply.system_fingerprint == f"shared-v{version}" and reply.model_extra["sdpo"]["adapter_version"] == version
    trained = server.rows("SELECT COUNT(*) AS n FROM samples WHERE state = 'trained'")[0]["n"]
    assert trained >= 2
    update = server.rows("SELECT monitors FROM updates WHERE state = 'published' ORDER BY id LIMIT 1")[0]
    assert len(json.loads(update["monitors"])) == 4  # every monitor logged with the update


def test_users_read_only_their_own_conversations_and_an_admin_deletes_one(server):
    client = server.client()
    for user in ("alice", "bob"):
        x = [{"role": "user", "content": f"I am {user}."}]
        y = client.chat.completions.create(model=MODEL, messages=x, user=user).choices[0].message.content
        client.chat.completions.create(model=MODEL, messages=x + [{"role": "assistant", "content": y},
                                                                  {"role": "user", "content": "Thanks."}], user=user)
    alice = json.loads(server.call("GET", "/v1/conversations?user=alice", key=API_KEY)[1])["data"]
    assert [c["title"] for c in alice] == ["I am alice."]
    path = f"/v1/conversations/{alice[0]['id']}"
    assert server.call("GET", f"{path}?user=bob", key=API_KEY)[0] == 404
    mine = json.loads(server.call("GET", f"{path}?user=alice", key=API_KEY)[1])
    assert mine["messages"][1]["adapter"] == "shared" and mine["messages"][1]["sample"]["state"] in (
        "pending", "claimed", "trained")
    assert server.call("DELETE", "/admin/users/alice", key=API_KEY)[0] == 401
    deleted = server.admin("DELETE", "/admin/users/alice")["deleted"]
    assert deleted["conversations"] == 1 and deleted["samples"] == 1
    assert server.rows("SELECT COUNT(*) AS n FROM generations WHERE user_id = 'alice'")[0]["n"] == 0
    assert server.rows("SELECT COUNT(*) AS n FROM generations WHERE user_id = 'bob'")[0]["n"] == 2
    assert json.loads(server.call("GET", "/v1/conversations?user=alice", key=API_KEY)[1])["data"] == []


def test_metrics_are_prometheus_text_counting_requests_samples_and_updates(server):
    client = server.client()
    x = [{"role": "user", "content": "Count me."}]
    y = client.chat.completions.create(model=MODEL, messages=x, user="metrics").choices[0].message.content
    client.chat.completions.create(model=MODEL, messages=x + [{"role": "assistant", "content": y},
                                                              {"role": "user", "content": "Counted?"}], user="metrics")
    server.call("POST", "/v1/chat/completions", key=API_KEY, body=b"x" * 20001)
    server.wait_for(lambda: server.rows("SELECT 1 FROM updates WHERE state = 'published'"), timeout=600,
                    what="a published update")
    status, body = server.call("GET", "/metrics", key=None)
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("sdpo_live_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "200")))] >= 2
    assert samples[("sdpo_live_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "413")))] >= 1
    assert samples[("sdpo_live_samples_created_total", ())] >= 1
    assert samples[("sdpo_live_updates_total", (("outcome", "published"),))] >= 1
    assert ("sdpo_live_monitor_trips_total", (("monitor", "entropy_ratio"),)) in samples
    assert samples[("sdpo_live_chat_completion_duration_seconds_count", ())] >= 2


def test_the_export_replays_with_train_offline(server, tiny_model_dir, tmp_path):
    client = server.client()  # greedy answers to short questions, one of which ends within the token budget
    for question in ("Answer with one word: is the sky blue?", "What is 2 + 2? Reply with the number only.",
                     "Reply with one word: hello."):
        x = [{"role": "user", "content": question}]
        first = client.chat.completions.create(model=MODEL, messages=x, user="export", temperature=0)
        follow = x + [{"role": "assistant", "content": first.choices[0].message.content},
                      {"role": "user", "content": "Thanks!"}]
        client.chat.completions.create(model=MODEL, messages=follow, user="export")
        if first.choices[0].finish_reason == "stop":
            break
    assert first.choices[0].finish_reason == "stop"  # train_offline leaves answers cut at the budget out
    export = tmp_path / "export.jsonl"
    command = [sys.executable, "-m", "sdpo_interactions.cli.serve_live", "--data_dir", str(server.data_dir),
               "--export_to", str(export)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pairs = [(s["completion"], s["feedback"])
             for _, messages in read_conversations(str(export)) for s in interaction_samples(messages)]
    stored = server.rows("SELECT g.answer, s.feedback FROM samples s JOIN generations g ON g.id = s.generation_id")
    assert sorted(pairs) == sorted((r["answer"], r["feedback"]) for r in stored)
    run = [sys.executable, str(REPO / "train_offline.py"), "--train_jsonl", str(export), "--model_name_or_path",
           tiny_model_dir,
           "--output_dir", str(tmp_path / "replay"), "--per_device_train_batch_size", "2", "--max_steps", "1",
           "--save_strategy", "no", "--report_to", "none", "--bf16", "false", "--max_completion_length", "32"]
    done = subprocess.run(run, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_key_is_written_anywhere(server):
    files = [p for p in server.data_dir.rglob("*") if p.is_file()] + [server.log_path]
    for path in files:
        data = path.read_bytes()
        assert API_KEY.encode() not in data and ADMIN_KEY.encode() not in data, path
