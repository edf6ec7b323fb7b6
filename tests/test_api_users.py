"""The API users (Claude, and any OpenAI-compatible server) through the real `anthropic` and `openai` SDKs against
a local HTTP server.

Every test talks HTTP to tests/messages_server.py on 127.0.0.1; faults are injected per request tag (ID:<n>).
The guarantees both users share (order, concurrency, retries, failures, cache, secrets) run once per wire format
(`wire`); what only one of them has is tested once. Retry waits are kept short (retry-after of 10 ms, sub-second
timeouts), so the file runs in seconds.
"""

import asyncio
import json
import logging
import multiprocessing
import os
import sys
import time

import pytest

from sdpo_interactions.testing.messages_server import MessagesServer, echo_reply, request_tag, request_text
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.users.api import ClaudeStyleUserSimulator, OpenAIStyleUserSimulator
from sdpo_interactions.chat_clients import ChatRequest, ClaudeMessagesClient, ResponseCache, estimate_cost_usd, unreadable_body_problem
from sdpo_interactions.users.base import user_system_prompt

STYLE = "concise_casual_beginner"
KEY = "sk-ant-test-SECRET-MARKER-7f3a"


@pytest.fixture
def server(monkeypatch):
    """A fresh server; the Claude SDK finds it through ANTHROPIC_BASE_URL (as a user would), the OpenAI user gets
    its URL as --user_api_base would give it. Both keys are set, so a leak would show."""
    with MessagesServer() as srv:
        point_at(srv, monkeypatch)
        yield srv


@pytest.fixture(params=["claude", "openai"])
def wire(request) -> str:
    return request.param


def point_at(srv: MessagesServer, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("USER_API_KEY", KEY)


def make_sim(wire: str = "claude", **kwargs):
    kwargs = {"timeout": 5.0, "max_retries": 2, **kwargs}
    if wire == "claude":
        return ClaudeStyleUserSimulator(STYLE, **kwargs)
    kwargs = {"model": "served-user", **kwargs}
    return OpenAIStyleUserSimulator(STYLE, base_url=os.environ["ANTHROPIC_BASE_URL"] + "/v1", **kwargs)


def prompts(n: int) -> list[str]:
    return [f"Question ID:{i} about the weather" for i in range(n)]


def expected(n: int) -> list[str]:
    return [f"reply to ID:{i}" for i in range(n)]


# -- the request, the order, concurrency ------------------------------------------------------------------------


def test_request_carries_persona_prompt_and_exchange(server):
    sim = make_sim(max_tokens=77)
    assert sim.generate_feedback(["Why is the sky blue? ID:0"], ["Rayleigh scattering."]) == ["reply to ID:0"]
    (logged,) = server.requests
    assert logged.body["system"] == user_system_prompt(STYLE_PERSONAS[STYLE])
    assert logged.body["model"] == "claude-haiku-4-5-20251001"
    assert logged.body["max_tokens"] == 77
    (turn,) = logged.body["messages"]
    assert turn["role"] == "user"
    assert "Why is the sky blue? ID:0" in turn["content"] and "Rayleigh scattering." in turn["content"]
    # The authors' runs: temperature 0, sent under the API version that still accepts sampling parameters.
    assert logged.body["temperature"] == 0.0 and logged.headers["anthropic-version"] == "2023-06-01"
    assert sim.client.base_url.startswith(server.url)  # found through ANTHROPIC_BASE_URL


def test_the_authors_reply_length_is_the_default(server):
    make_sim().generate_feedback(prompts(1), ["a"])
    (logged,) = server.requests
    assert logged.body["max_tokens"] == 256


def test_no_temperature_uses_the_sdks_api_version(server):
    make_sim(temperature=None).generate_feedback(prompts(1), ["a"])
    (logged,) = server.requests
    assert "temperature" not in logged.body and logged.headers["anthropic-version"] != "2023-06-01"


def test_order_preserved_nothing_dropped_or_duplicated_under_concurrency(wire, monkeypatch):
    n = 24

    def reply_late_first(body):
        # Early requests answer last, so replies arrive in roughly reverse order.
        time.sleep(0.01 * (n - int(request_tag(body))))
        return echo_reply(body)

    with MessagesServer(reply=reply_late_first) as srv:
        point_at(srv, monkeypatch)
        sim = make_sim(wire, max_concurrency=8)
        assert sim.max_concurrency == 8
        feedback = sim.generate_feedback(prompts(n), [f"answer {i}" for i in range(n)])
        assert feedback == expected(n)
        assert sorted(r.tag for r in srv.requests) == sorted(str(i) for i in range(n))
        assert 1 < srv.max_in_flight <= 8
    metrics = sim.pop_metrics()
    assert metrics["requests"] == n and metrics["failed_frac"] == 0.0


def test_serial_client_never_overlaps_requests(wire, server):
    server.latency = 0.02
    sim = make_sim(wire, max_concurrency=1)
    assert sim.generate_feedback(prompts(5), ["a"] * 5) == expected(5)
    assert server.max_in_flight == 1


def test_works_when_called_inside_a_running_event_loop(wire, server):
    async def inside_loop():
        return make_sim(wire).generate_feedback(prompts(3), ["a"] * 3)

    assert asyncio.run(inside_loop()) == expected(3)


# -- retries ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rate_limit", "overloaded", "server_error", "slow", "malformed"])
def test_transient_faults_are_retried_by_the_sdk(wire, server, kind):
    server.add_fault("2", kind, times=2, delay=2.0)
    sim = make_sim(wire, timeout=0.5, max_retries=3)
    assert sim.generate_feedback(prompts(4), ["a"] * 4) == expected(4)
    assert server.hits("2") == 3  # two faulty attempts, then the good one
    assert all(server.hits(str(i)) == 1 for i in (0, 1, 3))
    assert sim.pop_metrics()["failed_frac"] == 0.0


def test_rate_limit_waits_for_retry_after(wire, server):
    server.add_fault("0", "rate_limit", retry_after=0.4)
    assert make_sim(wire).generate_feedback(prompts(1), ["a"]) == expected(1)
    first, second = server.requests
    assert (first.outcome, second.outcome) == ("rate_limit", "ok")
    assert second.time - first.time >= 0.4


def test_client_errors_are_not_retried(wire, server):
    server.add_fault("1", "bad_request", times=None)
    sim = make_sim(wire, max_retries=3)
    assert sim.generate_feedback(prompts(2), ["a"] * 2) == ["reply to ID:0", ""]
    assert server.hits("1") == 1


# -- failures: masked, counted, or fatal ---------------------------------------------------------------------


def test_permanent_failure_is_masked_and_counted(wire, server, caplog):
    server.add_fault("3", "server_error", times=None, message="the model is on fire")
    sim = make_sim(wire, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="chat_clients"):
        feedback = sim.generate_feedback(prompts(8), ["a"] * 8)
    assert feedback == [*expected(3), "", *expected(8)[4:]]
    assert server.hits("3") == 3  # first attempt + max_retries
    metrics = sim.pop_metrics()
    assert metrics["failed_frac"] == pytest.approx(1 / 8)
    assert metrics["failed"] == 1 and metrics["requests"] == 8
    assert "the model is on fire" in caplog.text and "1/8" in caplog.text
    assert sim.pop_metrics()["requests"] == 0  # popped metrics reset


def test_empty_reply_is_a_failure_not_feedback(wire, server):
    server.add_fault("1", "empty", times=None)
    sim = make_sim(wire)
    assert sim.generate_feedback(prompts(3), ["a"] * 3) == ["reply to ID:0", "", "reply to ID:2"]
    metrics = sim.pop_metrics()
    assert metrics["failed"] == 1 and metrics["failed_frac"] == pytest.approx(1 / 3)


def test_failure_threshold_raises_with_what_the_api_answered(wire, server):
    for tag in ("0", "1", "2"):
        server.add_fault(tag, "bad_request", times=None, message="prompt is too long: 250000 tokens")
    sim = make_sim(wire, max_failed_frac=0.5)
    with pytest.raises(RuntimeError, match=r"3/4 .*prompt is too long: 250000 tokens.*max_failed_frac=0\.5"):
        sim.generate_feedback(prompts(4), ["a"] * 4)
    assert sim.pop_metrics()["failed"] == 3  # still counted for the logs


def test_failures_at_the_threshold_are_tolerated(wire, server):
    server.add_fault("0", "bad_request", times=None)
    server.add_fault("1", "bad_request", times=None)
    assert make_sim(wire, max_failed_frac=0.5).generate_feedback(prompts(4), ["a"] * 4) == ["", "", *expected(4)[2:]]
    with pytest.raises(RuntimeError, match="2/4"):
        make_sim(wire, max_failed_frac=0.25).generate_feedback(prompts(4), ["a"] * 4)


# -- accounting ------------------------------------------------------------------------------------------------


def test_cost_estimate_by_hand():
    assert estimate_cost_usd("claude-haiku-4-5-20251001", 1_000_000, 200_000) == pytest.approx(1.0 + 1.0)
    assert estimate_cost_usd("claude-sonnet-4-5-20250929", 1000, 1000) == pytest.approx(0.003 + 0.015)
    assert estimate_cost_usd("some-unknown-model", 1000, 1000) is None


def test_token_and_cost_metrics_follow_the_api_usage(server):
    sim = make_sim()
    sim.generate_feedback(prompts(3), ["a"] * 3)
    usage_in = sum(len(request_text(r.body).split()) for r in server.requests)  # what the server reported
    metrics = sim.pop_metrics()
    assert metrics["input_tokens"] == usage_in and metrics["output_tokens"] == 3 * 3  # "reply to ID:n"
    assert metrics["cost_usd"] == pytest.approx((usage_in * 1.0 + 9 * 5.0) / 1e6)


def test_unknown_model_omits_cost(server):
    sim = make_sim(model="claude-future-model")
    sim.generate_feedback(prompts(1), ["a"])
    metrics = sim.pop_metrics()
    assert "cost_usd" not in metrics and metrics["output_tokens"] == 3


# -- temperature ------------------------------------------------------------------------------------------------


def test_temperature_is_sent_under_the_api_version_that_accepts_it(server):
    sim = make_sim(temperature=0.3)
    assert sim.generate_feedback(prompts(1), ["a"]) == expected(1)
    (logged,) = server.requests
    assert logged.body["temperature"] == 0.3
    assert logged.headers["anthropic-version"] == "2023-06-01"
    assert sim.settings()["temperature"] == 0.3


# -- cache --------------------------------------------------------------------------------------------------------


def test_cache_avoids_repeated_requests_across_instances(server, tmp_path):
    sim = make_sim(cache_dir=tmp_path / "cache")
    assert sim.generate_feedback(prompts(4), ["a"] * 4) == expected(4)
    assert server.hits() == 4
    first = sim.pop_metrics()
    assert first["cache_hits"] == 0 and first["input_tokens"] > 0

    assert sim.generate_feedback(prompts(4), ["a"] * 4) == expected(4)
    assert server.hits() == 4
    again = sim.pop_metrics()
    assert again["cache_hits"] == 4 and again["input_tokens"] == 0 and again["cost_usd"] == 0.0

    resumed = make_sim(cache_dir=tmp_path / "cache")
    assert resumed.generate_feedback(prompts(4), ["a"] * 4) == expected(4)
    assert server.hits() == 4

    # Anything that changes the reply is part of the key: another answer, style, model or temperature.
    make_sim(cache_dir=tmp_path / "cache").generate_feedback(prompts(1), ["another answer"])
    ClaudeStyleUserSimulator("humorous", cache_dir=tmp_path / "cache").generate_feedback(prompts(1), ["a"])
    make_sim(cache_dir=tmp_path / "cache", model="claude-other").generate_feedback(prompts(1), ["a"])
    make_sim(cache_dir=tmp_path / "cache", temperature=0.5).generate_feedback(prompts(1), ["a"])
    assert server.hits() == 8


def test_failures_and_empty_replies_are_not_cached(wire, server, tmp_path):
    server.add_fault("0", "empty")
    server.add_fault("1", "bad_request")
    sim = make_sim(wire, cache_dir=tmp_path, max_failed_frac=1.0)
    assert sim.generate_feedback(prompts(2), ["a"] * 2) == ["", ""]
    assert sim.generate_feedback(prompts(2), ["a"] * 2) == expected(2)  # asked again, now answered
    assert server.hits() == 4


def test_cache_survives_a_crash_mid_write(wire, server, tmp_path):
    sim = make_sim(wire, cache_dir=tmp_path)
    sim.generate_feedback(prompts(2), ["a"] * 2)
    entries = sorted(tmp_path.rglob("*.json"))
    assert len(entries) == 2
    # A writer killed mid-write leaves a partial temporary file; an outside tool may even truncate an entry.
    (entries[0].parent / ".tmp-crashed.json").write_text('{"text": "half a rep')
    entries[1].write_text('{"text": "trunc')
    resumed = make_sim(wire, cache_dir=tmp_path)
    assert resumed.generate_feedback(prompts(2), ["a"] * 2) == expected(2)
    assert server.hits() == 3  # only the truncated entry was asked again, and rewritten whole
    assert sorted(json.loads(e.read_text())["text"] for e in entries) == expected(2)


def test_failed_cache_write_keeps_the_reply_and_leaves_no_entry(wire, server, tmp_path, monkeypatch, caplog):
    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sdpo_interactions.run_files.os.replace", disk_full)
    with caplog.at_level(logging.WARNING, logger="chat_clients"):
        assert make_sim(wire, cache_dir=tmp_path).generate_feedback(prompts(1), ["a"]) == expected(1)
    monkeypatch.undo()
    assert "No space left" in caplog.text
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # temp file removed, no half entry


def test_concurrent_writers_of_the_same_entries_are_safe(server, tmp_path):
    # 16 threads write the same entry at once...
    client = ClaudeMessagesClient(max_concurrency=16, timeout=5.0, cache_dir=tmp_path)
    same = ChatRequest(model="m", messages=({"role": "user", "content": "ID:7 hi"},), max_tokens=8)
    assert [r.text for r in client.create_many([same] * 16)] == ["reply to ID:7"] * 16

    # ...and two processes fill one cache with the same 20 requests (forked: no second import of torch).
    procs = [multiprocessing.get_context("fork").Process(target=_fill_cache, args=(tmp_path,)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]

    hits = server.hits()
    sim = make_sim(cache_dir=tmp_path)
    assert sim.generate_feedback([f"Q ID:{i}" for i in range(20)], ["a"] * 20) == expected(20)
    assert server.hits() == hits and sim.pop_metrics()["cache_hits"] == 20
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 21 and not [p for p in files if p.name.startswith(".")]
    assert all(json.loads(p.read_text())["text"] for p in files)


def _fill_cache(cache_dir):
    sim = ClaudeStyleUserSimulator(STYLE, max_concurrency=8, timeout=5.0, cache_dir=cache_dir)
    if sim.generate_feedback([f"Q ID:{i}" for i in range(20)], ["a"] * 20) != expected(20):
        sys.exit(1)


def test_response_cache_round_trip(tmp_path):
    cache = ResponseCache(tmp_path)
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, {"text": "hello"})
    assert cache.get("ab" * 32) == {"text": "hello"}


# -- configuration and secrets ---------------------------------------------------------------------------------


def test_missing_key_fails_at_construction(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        ClaudeStyleUserSimulator(STYLE)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "  ")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        ClaudeStyleUserSimulator(STYLE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style": "grumpy"}, "Known styles"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"temperature": 1.5}, "temperature"),
        ({"max_failed_frac": 1.5}, "max_failed_frac"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_settings_fail_early(monkeypatch, kwargs, message):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    kwargs = {"style": STYLE, **kwargs}
    with pytest.raises(ValueError, match=message):
        ClaudeStyleUserSimulator(**kwargs)


def test_key_never_leaks(wire, server, tmp_path, caplog):
    server.add_fault("1", "server_error", times=None)
    server.add_fault("2", "rate_limit")
    sim = make_sim(wire, cache_dir=tmp_path, max_retries=1, max_failed_frac=0.5)
    with caplog.at_level(logging.DEBUG):
        sim.generate_feedback(prompts(4), ["a"] * 4)
        server.add_fault("0", "bad_request", times=None)
        server.add_fault("3", "bad_request", times=None)
        with pytest.raises(RuntimeError) as raised:
            make_sim(wire, max_retries=0).generate_feedback(prompts(4), ["a"] * 4)
    assert any(KEY in str(r.headers) for r in server.requests)  # the SDK did send it, so the checks below matter
    places = {
        "logs": caplog.text,
        "repr": repr(sim) + repr(sim.client) + str(sim.__dict__),
        "settings": json.dumps(sim.settings()),
        "metrics": json.dumps(sim.pop_metrics()),
        "error": str(raised.value),
        "cache": "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file()),
    }
    assert {name: KEY in text for name, text in places.items()} == {name: False for name in places}
    assert "DEBUG" in caplog.text  # the SDK's debug logging was captured too


# -- the OpenAI-compatible user ----------------------------------------------------------------------------------


def test_openai_request_carries_persona_sampling_and_asks_for_usage(server):
    sim = make_sim("openai", max_tokens=77)
    assert sim.generate_feedback(["Why is the sky blue? ID:0"], ["Rayleigh scattering."]) == ["reply to ID:0"]
    (logged,) = server.requests
    system, turn = logged.body["messages"]
    assert system == {"role": "system", "content": user_system_prompt(STYLE_PERSONAS[STYLE])}
    assert turn["role"] == "user" and "Rayleigh scattering." in turn["content"]
    # The authors' local user, moved to a server: temperature 0.7, top_p 0.95, top_k 20 (in the body, for vLLM).
    assert {k: logged.body[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k")} == {
        "model": "served-user", "max_tokens": 77, "temperature": 0.7, "top_p": 0.95, "top_k": 20}
    assert logged.body["stream"] is True and logged.body["stream_options"] == {"include_usage": True}
    assert logged.headers["authorization"] == f"Bearer {KEY}"


def test_openai_defaults_are_the_authors_local_user(server):
    sim = make_sim("openai")
    assert (sim.max_tokens, sim.sampling) == (128, {"temperature": 0.7, "top_p": 0.95, "top_k": 20})


def test_openai_top_k_zero_sends_none(server):
    make_sim("openai", top_k=0).generate_feedback(prompts(1), ["a"])
    (logged,) = server.requests
    assert "top_k" not in logged.body and logged.body["top_p"] == 0.95


def test_openai_token_metrics_follow_the_served_usage_and_cost_nothing(server):
    sim = make_sim("openai")
    sim.generate_feedback(prompts(3), ["a"] * 3)
    usage_in = sum(len(request_text(r.body).split()) for r in server.requests)
    metrics = sim.pop_metrics()
    assert metrics["input_tokens"] == usage_in and metrics["output_tokens"] == 3 * 3
    assert "cost_usd" not in metrics  # a self-hosted server has no price; the key set stays fixed


def test_openai_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.delenv("USER_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    make_sim("openai").generate_feedback(prompts(1), ["a"])
    monkeypatch.delenv("OPENAI_API_KEY")
    make_sim("openai").generate_feedback(prompts(1), ["a"])  # a local vLLM takes no key
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer sk-openai-fallback", "Bearer EMPTY"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_url": "simhost:8000/v1"}, "http"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_openai_bad_settings_fail_early(kwargs, message):
    kwargs = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=message):
        OpenAIStyleUserSimulator(STYLE, **kwargs)


def test_unreadable_bodies_by_hand():
    sse = "text/event-stream"
    assert unreadable_body_problem(b'{"choices": []}', "application/json") is None
    assert unreadable_body_problem(b'data: {"a": 1}\n\ndata: [DONE]\n\n', sse) is None
    assert unreadable_body_problem(b": keep-alive comment\n\ndata: {}\n\n", sse) is None
    assert "JSONDecodeError" in unreadable_body_problem(b'data: {"choices": [\n\n', sse)
    assert "not a JSON object" in unreadable_body_problem(b"data: [1, 2]\n\n", sse)
    assert "not a JSON object" in unreadable_body_problem(b'"just a string"', "application/json")
    assert "UnicodeDecodeError" in unreadable_body_problem(b"\xff\xfe", "application/json")
