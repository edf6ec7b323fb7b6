"""The live server's parts that need no model: which request makes a sample, the request limits, the store's sample
transitions (crash recovery included), the export to the offline format, the monitors' arithmetic, the Prometheus
text and the options. Fast: no model, no server."""

import json
import sqlite3

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdpo_interactions.conversations import interaction_samples, read_conversations
from sdpo_interactions.live import history, monitors
from sdpo_interactions.live.pairing import adapter_name, follow_up, message_key
from sdpo_interactions.live.protocol import ApiError, Limits, checked_messages, checked_options, parse_request
from sdpo_interactions.live.settings import LiveArguments, LiveKeys
from sdpo_interactions.live.store import Generation, Store, new_id
from sdpo_interactions.live.telemetry import Telemetry
from sdpo_interactions.run_files import InputError

LIMITS = Limits(max_request_bytes=2000, max_message_chars=100, max_messages=4, max_prompt_tokens=50,
                max_completion_tokens=32)


# -- pairing -----------------------------------------------------------------------------------------------------

def test_a_reaction_to_an_answer_is_keyed_by_user_history_and_answer():
    history_ = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    key = message_key("alice", history_, "Hello there!")
    request = history_ + [{"role": "assistant", "content": "  Hello there!\n"}, {"role": "user", "content": "Shorter."}]
    found = follow_up("alice", request)
    assert found.key == key and found.feedback == "Shorter."  # surrounding whitespace does not matter
    assert follow_up("bob", request).key != key  # another user never matches alice's answer
    edited = [dict(m) for m in request]
    edited[1]["content"] = "Hi!"
    assert follow_up("alice", edited).key != key  # an edited history is a new conversation


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi"}],  # no answer to react to
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "  "}],
    [{"role": "assistant", "content": "Hey"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
])
def test_no_sample_without_an_answer_directly_followed_by_a_non_empty_user_message(messages):
    assert follow_up("alice", messages) is None


def test_adapter_names_hide_the_user_id():
    assert adapter_name("alice@example.com", per_user=False) == "shared"
    name = adapter_name("alice@example.com", per_user=True)
    assert name.startswith("u_") and "alice" not in name and name != adapter_name("bob", per_user=True)


# -- limits --------------------------------------------------------------------------------------------------------

def body(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def refusal(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_request_limits_refuse_with_the_status_and_code_each_promises():
    assert refusal(lambda: parse_request(b"x" * 2001, LIMITS)).status == 413
    assert refusal(lambda: parse_request(b"{not json", LIMITS)).code == "invalid_json"
    invalid = refusal(lambda: parse_request(body(temperature=5, max_tokens=0), LIMITS))
    assert invalid.status == 400 and "temperature" in invalid.message and "max_tokens" in invalid.message
    many = parse_request(body(messages=[{"role": "user", "content": "a"}] * 5), LIMITS)
    assert refusal(lambda: checked_messages(many, LIMITS)).code == "too_many_messages"
    long = parse_request(body(messages=[{"role": "user", "content": "a" * 101}]), LIMITS)
    assert refusal(lambda: checked_messages(long, LIMITS)).status == 413
    tool = parse_request(body(messages=[{"role": "tool", "content": "a"}]), LIMITS)
    assert refusal(lambda: checked_messages(tool, LIMITS)).code == "unsupported_role"
    ends = parse_request(body(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
                         LIMITS)
    assert refusal(lambda: checked_messages(ends, LIMITS)).code == "last_message_not_user"
    assert refusal(lambda: checked_options(parse_request(body(max_tokens=33), LIMITS), LIMITS)).status == 400
    assert refusal(lambda: checked_options(parse_request(body(n=2), LIMITS), LIMITS)).param == "n"
    assert refusal(lambda: checked_options(parse_request(body(user="a\nb"), LIMITS), LIMITS)).code == "invalid_user"


def test_text_parts_and_unknown_openai_parameters_are_accepted():
    request = parse_request(body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]}],
                                 logprobs=False, presence_penalty=0, max_completion_tokens=7), LIMITS)
    assert checked_messages(request, LIMITS) == [{"role": "user", "content": "ab"}]
    assert checked_options(request, LIMITS) == ("default", 7)
    image = parse_request(body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
                          LIMITS)
    assert refusal(lambda: checked_messages(image, LIMITS)).code == "unsupported_content"


# -- the store -----------------------------------------------------------------------------------------------------

def generation(store: Store, user: str, prompt: list, answer: str, *, parent=None, temperature=1.0) -> Generation:
    g = Generation(new_id(), parent.conversation_id if parent else new_id(), parent.id if parent else None, user,
                   message_key(user, prompt, answer), prompt, answer, "stop", "shared", 0, [5, 6, 2],
                   [-0.1, -0.2, -0.3], temperature)
    store.add_generation(g)
    return g


def sample(store: Store, user="alice", feedback="Shorter.", temperature=1.0) -> int:
    g = generation(store, user, [{"role": "user", "content": f"q{new_id()}"}], "an answer", temperature=temperature)
    return store.add_sample(g.id, user, "shared", feedback)


def test_a_retried_reaction_is_stored_once(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    g = generation(store, "alice", [{"role": "user", "content": "q"}], "a")
    assert store.add_sample(g.id, "alice", "shared", "o") is not None
    assert store.add_sample(g.id, "alice", "shared", "o") is None
    assert store.add_sample(g.id, "alice", "shared", "another reaction") is not None


def test_samples_become_due_by_batch_size_age_and_the_rate_cap(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    sample(store)
    now = store.query("SELECT MAX(created) AS t FROM samples")[0]["t"]
    assert store.due_adapter(2, 60, 0, now)[0] is None  # one of two, fresh
    assert store.due_adapter(2, 60, 0, now + 61) == ("shared", 0.0)  # waited long enough
    sample(store)
    assert store.due_adapter(2, 60, 0, now)[0] == "shared"  # a full batch
    update_id, claimed = store.claim("shared", 2)
    store.publish(update_id, "shared", 1, "/v1", None, monitors=[], metrics={})
    finished = store.query("SELECT finished FROM updates")[0]["finished"]
    sample(store)
    sample(store)
    adapter, wait = store.due_adapter(2, 60, 10, finished + 4)
    assert adapter is None and wait == pytest.approx(6)  # the cap: 10 s after the last update
    assert store.due_adapter(2, 60, 10, finished + 10)[0] == "shared"


def test_publish_trains_and_reject_discards_exactly_the_claimed_samples(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    ids = [sample(store) for _ in range(3)]
    first, claimed = store.claim("shared", 2)
    assert [s.id for s in claimed] == ids[:2] and claimed[0].token_ids == [5, 6, 2]
    assert claimed[0].prompt[0]["role"] == "user" and claimed[0].feedback == "Shorter."
    store.publish(first, "shared", 1, "/a/v1", None, monitors=[{"name": "x"}], metrics={"loss": 1.0})
    second, claimed = store.claim("shared", 2)
    assert [s.id for s in claimed] == ids[2:]
    store.reject(second, "rejected", "monitor tripped: entropy_ratio", monitors=[], metrics={})
    states = {r["id"]: r["state"] for r in store.query("SELECT id, state FROM samples")}
    assert states == {ids[0]: "trained", ids[1]: "trained", ids[2]: "rejected"}
    assert store.published_versions() == {"shared": (1, "/a/v1")}


def test_an_update_claims_samples_of_one_temperature(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    cold, hot, cold2 = sample(store, temperature=0.7), sample(store, temperature=1.0), sample(store, temperature=0.7)
    _, claimed = store.claim("shared", 4)
    assert [s.id for s in claimed] == [cold, cold2] and {s.temperature for s in claimed} == {0.7}
    assert store.sample_counts()["pending"] == 1 and hot


def test_a_crash_during_an_update_puts_its_samples_back_once(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    ids = [sample(store) for _ in range(2)]
    update_id, _ = store.claim("shared", 2)
    store.db.close()  # the process dies here: no publish, no reject
    store = Store(path)
    assert store.recover() == {"interrupted_updates": 1, "samples_back_to_pending": 2}
    assert store.query("SELECT state FROM updates WHERE id = ?", (update_id,))[0]["state"] == "interrupted"
    again, claimed = store.claim("shared", 2)
    assert [s.id for s in claimed] == ids
    store.publish(again, "shared", 1, "/v1", None, monitors=[], metrics={})
    published = store.query("SELECT sample_id, COUNT(*) AS n FROM update_samples us JOIN updates u ON "
                            "u.id = us.update_id WHERE u.state = 'published' GROUP BY sample_id")
    assert {r["sample_id"]: r["n"] for r in published} == {ids[0]: 1, ids[1]: 1}
    assert store.recover() == {"interrupted_updates": 0, "samples_back_to_pending": 0}


def test_the_store_is_in_wal_mode_with_synchronous_commits(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA synchronous")[0][0] == 2  # FULL


def test_deleting_a_user_removes_everything_of_theirs_only(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    sample(store, "alice")
    kept = sample(store, "bob")
    update_id, _ = store.claim("shared", 2)
    counts = store.delete_user("alice")
    assert counts == {"samples": 1, "generations": 1, "conversations": 1, "adapter_versions": 0}
    assert [r["id"] for r in store.query("SELECT id FROM samples")] == [kept]
    assert {r["user_id"] for r in store.query("SELECT user_id FROM generations")} == {"bob"}
    assert [r["sample_id"] for r in store.query("SELECT sample_id FROM update_samples")] == [kept]


# -- what a user sees, and the export --------------------------------------------------------------------------

def chat(store: Store) -> tuple[Generation, Generation]:
    first_prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    first = generation(store, "alice", first_prompt, "Hello!")
    store.add_sample(first.id, "alice", "shared", "Shorter.")
    second_prompt = first_prompt + [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Shorter."}]
    second = generation(store, "alice", second_prompt, "Hi.", parent=first)
    store.add_sample(second.id, "alice", "shared", "Good.")
    return first, second


def test_a_user_reads_their_own_conversation_with_versions_and_learning_state(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    first, _ = chat(store)
    update_id, _ = store.claim("shared", 1)
    store.publish(update_id, "shared", 1, "/v1", None, monitors=[], metrics={})
    assert [c["title"] for c in history.user_conversations(store, "alice")] == ["Hi"]
    assert history.user_conversations(store, "bob") == []
    assert history.user_conversation(store, "bob", first.conversation_id) is None
    seen = history.user_conversation(store, "alice", first.conversation_id)["messages"]
    assert [m["role"] for m in seen] == ["system", "user", "assistant", "user", "assistant"]
    assert seen[2]["sample"]["state"] == "trained" and seen[2]["sample"]["learned_in_version"] == 1
    assert seen[4]["sample"]["state"] == "pending" and seen[4]["adapter_version"] == 0


def test_the_export_is_the_offline_format_with_every_sample(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    chat(store)
    generation(store, "bob", [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "z")
    path = tmp_path / "export.jsonl"
    assert history.export_conversations(store, str(path)) == (1, 1)  # bob's history is not in the format
    (where, messages), = read_conversations(str(path))
    assert [s["feedback"] for s in interaction_samples(messages)] == ["Shorter.", "Good."]
    assert interaction_samples(messages)[1]["prompt"][-1] == {"role": "user", "content": "Shorter."}


# -- monitors, metrics, options --------------------------------------------------------------------------------

def test_repetition_share_by_hand():
    assert monitors.repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0
    assert monitors.repeated_ngram_share([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 - 4 / 5)
    assert monitors.repeated_ngram_share([7] * 10) == pytest.approx(1 - 1 / 7)
    assert monitors.repeated_ngram_share([1, 2]) == 0.0


def test_a_reading_trips_only_outside_its_bounds():
    limits = {"entropy_ratio": (0.5, 2.0), "length_ratio": (None, None), "repetition_increase": (None, 0.25),
              "feedback_specificity": (0.0, None)}
    found = {r.name: r for r in monitors.readings({"entropy_ratio": 0.4, "length_ratio": 9.0,
                                                   "repetition_increase": 0.25, "feedback_specificity": None}, limits)}
    assert found["entropy_ratio"].tripped and not found["length_ratio"].tripped
    assert not found["repetition_increase"].tripped and not found["feedback_specificity"].tripped
    assert monitors.ratio(1.0, 0.0) is None


def test_metrics_are_valid_prometheus_text_with_every_family(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    sample(store)
    telemetry = Telemetry(store, lambda: {"shared": 3})
    telemetry.request("/v1/chat/completions", 200, 0.2)
    telemetry.request("/v1/chat/completions", 413, 0.001)
    telemetry.update_finished("rejected", 1.5, monitors.readings(
        {"entropy_ratio": 0.1}, {name: (0.5, 2.0) for name in monitors.MONITORS}))
    families = {f.name: f for f in text_string_to_metric_families(telemetry.render().decode())}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("sdpo_live_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "413")))] == 1
    assert values[("sdpo_live_updates_total", (("outcome", "rejected"),))] == 1
    assert values[("sdpo_live_updates_total", (("outcome", "published"),))] == 0
    assert values[("sdpo_live_monitor_trips_total", (("monitor", "entropy_ratio"),))] == 1
    assert values[("sdpo_live_samples", (("state", "pending"),))] == 1
    assert values[("sdpo_live_shared_adapter_version", ())] == 3
    assert "sdpo_live_request_duration_seconds" in families and "sdpo_live_chat_completion_duration_seconds" in families


def test_every_option_problem_is_reported_at_once():
    with pytest.raises(ValueError) as caught:
        LiveArguments(model_name_or_path="m", samples_per_update=0, top_p=0, distillation_mode="nope",
                      monitor_min_entropy_ratio=3.0, hindsight_template="no placeholder", teacher_model_kind="ema",
                      per_user_adapters=True)
    text = str(caught.value)
    for expected in ("samples_per_update", "top_p", "distillation_mode", "monitor_min_entropy_ratio",
                     "hindsight_template", "teacher_model_kind=ema"):
        assert expected in text
    with pytest.raises(ValueError, match="model_name_or_path"):
        LiveArguments()
    LiveArguments(export_to="out.jsonl")  # an export needs no model


def test_keys_come_from_the_environment_differ_and_never_print():
    keys = LiveKeys.from_environ({"LIVE_API_KEY": "a" * 20, "LIVE_ADMIN_KEY": "b" * 20})
    assert "a" * 20 not in repr(keys) and "b" * 20 not in str(keys)
    with pytest.raises(InputError) as caught:
        LiveKeys.from_environ({"LIVE_API_KEY": "short"})
    assert "LIVE_ADMIN_KEY is not set" in str(caught.value) and "shorter than 16" in str(caught.value)
    with pytest.raises(InputError, match="must differ"):
        LiveKeys.from_environ({"LIVE_API_KEY": "c" * 20, "LIVE_ADMIN_KEY": "c" * 20})


def test_store_rows_are_plain_sqlite(tmp_path):
    """Another process (an export, a dashboard) reads the store with nothing but sqlite3."""
    store = Store(tmp_path / "s.sqlite3")
    sample(store)
    db = sqlite3.connect(f"file:{tmp_path / 's.sqlite3'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM samples WHERE state = 'pending'").fetchone()[0] == 1
