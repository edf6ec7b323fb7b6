"""Per-user adapters over HTTP: two simulated users of opposite personas (a concise, casual beginner and a detailed,
professional expert, from personas.yaml) chat with the live server; each reacts to every answer as that persona
would. Their adapters end up different, each user's samples trained only that user's adapter, each user is served
by their own adapter, a newcomer by the shared one, and deleting a user removes their adapter. A tiny random model
(plumbing). Slow: a server."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdpo_interactions.live.adapters import WEIGHTS_NAME
from sdpo_interactions.live.pairing import adapter_name
from sdpo_interactions.personas import persona_catalogue
from sdpo_interactions.testing.live_server import MODEL, LiveServer

pytestmark = pytest.mark.slow
USERS = {
    "concise_casual_beginner": "Way too long and too stiff. Two short casual sentences, please.",
    "detailed_professional_expert": "Far too thin. I need a thorough, structured and formal analysis.",
}


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    settings = ("--per_user_adapters", "true", "--max_completion_tokens", "8", "--monitor_probe_tokens", "8",
                "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "1e-3", "--samples_per_update", "2",
                "--min_seconds_between_updates", "0", "--max_sample_wait_seconds", "600",
                # A random model's 8-token answers change length by noise (a ratio of 3.2 was seen): this test is
                # about routing, so the length monitor cannot reject an update here (the monitors are tested apart).
                "--monitor_min_length_ratio", "0", "--monitor_max_length_ratio", "1e9")
    with LiveServer(tiny_model_dir, tmp_path / "data", tmp_path / "server.log",
                    *settings) as running:
        yield running


def chat_as(server, persona: str, turns: int) -> None:
    """`turns` conversations of `persona`: a request, then the persona's reaction to the answer."""
    assert persona in persona_catalogue()
    client = server.client()
    for k in range(turns):
        x = [{"role": "user", "content": f"Explain topic number {k} to me."}]
        y = client.chat.completions.create(model=MODEL, messages=x, user=persona).choices[0].message.content
        client.chat.completions.create(model=MODEL, messages=x + [{"role": "assistant", "content": y},
                                                                  {"role": "user", "content": USERS[persona]}],
                                       user=persona)


def test_each_user_trains_and_is_served_by_their_own_adapter(server):
    for persona in USERS:
        chat_as(server, persona, turns=4)
    names = {persona: adapter_name(persona, per_user=True) for persona in USERS}
    server.wait_for(lambda: all(server.admin("GET", "/admin/status")["served_versions"].get(n, 0) >= 2
                                for n in names.values()), timeout=600, what="two updates of each user's adapter")
    served = server.admin("GET", "/admin/status")["served_versions"]
    assert served["shared"] == 0  # nobody's samples trained the shared adapter

    # Each published update trained one adapter on the samples of exactly its owner.
    updates = server.rows("SELECT u.adapter, GROUP_CONCAT(DISTINCT s.user_id) AS users FROM updates u "
                          "JOIN update_samples us ON us.update_id = u.id JOIN samples s ON s.id = us.sample_id "
                          "WHERE u.state = 'published' GROUP BY u.id")
    assert len(updates) >= 4 and all(names[row["users"]] == row["adapter"] for row in updates)
    owners = server.rows("SELECT adapter, user_id FROM adapter_versions WHERE adapter != 'shared'")
    assert all(names[row["user_id"]] == row["adapter"] for row in owners)

    # Their adapters differ from each other and from where both started.
    folders = {p: server.rows("SELECT path FROM adapter_versions WHERE adapter = ? ORDER BY version DESC LIMIT 1",
                              (n,))[0]["path"] for p, n in names.items()}
    first, second = (load_file(f"{folders[p]}/{WEIGHTS_NAME}") for p in USERS)
    start = load_file(f"{server.rows('SELECT path FROM adapter_versions WHERE adapter = ?', ('shared',))[0]['path']}"
                      f"/{WEIGHTS_NAME}")
    assert any(not torch.allclose(first[k], second[k]) for k in first)
    assert all(any(not torch.allclose(w[k], start[k]) for k in w) for w in (first, second))

    # Each user is served by their own adapter, a newcomer by the shared one, and nobody can pick another's.
    client = server.client()
    for persona, name in names.items():
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], user=persona)
        assert reply.model_extra["sdpo"]["adapter"] == name and reply.system_fingerprint == f"{name}-v{served[name]}"
        me = json.loads(server.call("GET", f"/v1/me?user={persona}", key=server.client().api_key)[1])
        assert me["adapter"] == name
    newcomer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], user="new")
    assert newcomer.system_fingerprint == "shared-v0"


def test_deleting_a_user_removes_their_adapter_and_data(server):
    persona = "concise_casual_beginner"
    name = adapter_name(persona, per_user=True)
    chat_as(server, persona, turns=2)
    server.wait_for(lambda: name in server.admin("GET", "/admin/status")["served_versions"], timeout=600,
                    what="the user's first adapter version")
    folder = server.data_dir / "adapters" / name
    assert folder.is_dir()
    deleted = server.admin("DELETE", f"/admin/users/{persona}")["deleted"]
    assert deleted["adapter_versions"] >= 1 and deleted["samples"] == 2
    assert not folder.exists() and name not in server.admin("GET", "/admin/status")["served_versions"]
    reply = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                    user=persona)
    assert reply.system_fingerprint == "shared-v0"
