"""The user-backend and judge registries: lookups, errors that list the choices, one arguments dataclass each that
parses on its own, and imports that load neither torch nor the API SDKs until a builder runs. No model loads here."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from trl import TrlParser

import sdpo_interactions.cli.train as train
from sdpo_interactions.evaluation.judges import JUDGES, ApiJudge, JudgeArguments, LocalJudge, build_judge
from sdpo_interactions.users.registry import USER_BACKENDS, UserArguments, build_user_simulator, user_backend_builder

REPO = Path(__file__).resolve().parents[1]


def test_registries_hold_the_three_backends_each():
    assert list(USER_BACKENDS) == ["local", "api", "claude"]
    assert list(JUDGES) == ["local", "claude", "openai"]


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="Unknown user backend 'gpt'; choose one of local, api, claude"):
        user_backend_builder("gpt")
    with pytest.raises(ValueError, match="Unknown --judge 'gpt'; choose one of local, claude, openai"):
        JudgeArguments(judge="gpt")


def test_the_backend_follows_the_flags_and_an_explicit_one_must_match_them():
    assert UserArguments().user_backend == "claude"
    assert UserArguments(user_model_name_or_path="u").user_backend == "local"
    served = UserArguments(user_api_base="http://h:8000/v1", user_api_model="m", user_backend="api")
    assert served.user_backend == "api" and (served.user_temperature, served.user_top_k) == (0.7, 20)
    with pytest.raises(ValueError, match="--user_backend api needs --user_api_base and --user_api_model"):
        UserArguments(user_backend="api", user_model_name_or_path="u")
    with pytest.raises(ValueError, match="--user_backend local needs --user_model_name_or_path"):
        UserArguments(user_backend="local")
    with pytest.raises(ValueError, match="Unknown user backend 'vllm'"):
        UserArguments(user_backend="vllm")


def test_user_arguments_parse_alone_and_build_the_served_user(monkeypatch):
    monkeypatch.setenv("USER_API_KEY", "sk-user-MARKER")
    (args,) = TrlParser((UserArguments,)).parse_args_and_config(
        ["--style", "poetic", "--user_api_base", "http://simhost:8000/v1", "--user_api_model", "Qwen/Qwen3-8B",
         "--user_api_timeout", "5", "--user_max_new_tokens", "64"])
    user = build_user_simulator(args, {})
    assert type(user).__name__ == "OpenAIStyleUserSimulator" and user.style == "poetic"
    assert user.client.timeout == 5 and user.max_tokens == 64
    assert "MARKER" not in repr(user) + str(user.settings())


def test_training_keeps_every_user_flag_under_its_name():
    script_fields = {f.name for f in dataclasses.fields(train.ScriptArguments)}
    assert {f.name for f in dataclasses.fields(UserArguments)} <= script_fields
    assert issubclass(train.ScriptArguments, UserArguments)


def judge_args(**overrides):
    return JudgeArguments(**overrides)


def test_openai_judge_flags_resolve_the_model_and_refuse_what_does_not_fit():
    served = judge_args(judge="openai", judge_api_base="http://judge:8000/v1", judge_api_model="Qwen/Qwen3-8B")
    assert served.judge_model == "Qwen/Qwen3-8B"
    assert served.judge_chat_template_kwargs == {"enable_thinking": False}
    assert judge_args(judge="openai", judge_api_base="http://j/v1", judge_model="q").judge_api_model == "q"
    assert judge_args().judge_model == "Qwen/Qwen3-8B"
    assert judge_args(judge="claude").judge_model == "claude-haiku-4-5-20251001"
    for overrides, message in [
        ({"judge": "openai"}, "--judge openai needs --judge_api_base"),
        ({"judge": "openai", "judge_api_base": "http://j/v1"}, "needs --judge_api_model"),
        ({"judge": "openai", "judge_api_base": "j:8000", "judge_api_model": "m"}, "http"),
        ({"judge": "openai", "judge_api_base": "http://j/v1", "judge_api_model": "m", "judge_model": "n"},
         "name different models"),
        ({"judge": "local", "judge_api_base": "http://j/v1"}, "are for --judge openai"),
        ({"judge": "claude", "judge_temperature": 1.5}, r"\[0, 1\] for --judge claude"),
        ({"judge_api_timeout": 0}, "--judge_api_timeout must be > 0"),
        ({"judge_api_max_concurrency": 0}, "--judge_api_max_concurrency must be >= 1"),
        ({"judge_chat_template_kwargs": "[1]"}, "must be a JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            judge_args(**overrides)


def test_old_claude_flags_still_parse_and_map_to_the_new_ones(caplog):
    (args,) = TrlParser((JudgeArguments,)).parse_args_and_config(
        ["--judge", "claude", "--claude_max_concurrency", "4", "--claude_timeout", "9.5", "--claude_max_retries", "0"])
    assert (args.judge_api_max_concurrency, args.judge_api_timeout, args.judge_api_max_retries) == (4, 9.5, 0)
    assert "--claude_timeout is deprecated; use --judge_api_timeout" in caplog.text
    (same,) = TrlParser((JudgeArguments,)).parse_args_and_config(
        ["--claude_max_retries", "2", "--judge_api_max_retries", "2"])
    assert same.judge_api_max_retries == 2
    with pytest.raises(ValueError, match="--claude_max_retries .* and --judge_api_max_retries contradict"):
        judge_args(claude_max_retries=2, judge_api_max_retries=3)


def test_builders_make_the_judge_each_name_stands_for(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-MARKER")
    local = build_judge(judge_args(judge_model="/no/such/model", judge_batch_size=3), dtype="float32")
    assert isinstance(local, LocalJudge) and local.sharded and local.chunk_size == 3  # nothing loaded yet
    claude = build_judge(judge_args(judge="claude", judge_api_max_concurrency=5))
    assert isinstance(claude, ApiJudge) and not claude.sharded and claude.chunk_size == 20
    assert claude.client.wire == "claude" and claude.chat_template_kwargs is None
    served = build_judge(judge_args(judge="openai", judge_api_base="http://judge:8000/v1", judge_api_model="m",
                                    judge_chat_template_kwargs="{}"))
    assert served.client.wire == "openai" and served.chat_template_kwargs is None  # '{}' sends none
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ValueError, match=r"ANTHROPIC_API_KEY is not set.*--judge local or --judge openai"):
        build_judge(judge_args(judge="claude"))


def test_the_registries_and_their_flags_load_neither_torch_nor_the_sdks():
    code = ("import sys, sdpo_interactions.users, sdpo_interactions.users.registry as u, "
            "sdpo_interactions.evaluation.judges as j\n"
            "u.UserArguments(style='poetic')\n"
            "j.JudgeArguments(judge='openai', judge_api_base='http://h/v1', judge_api_model='m')\n"
            "print(sorted({'torch', 'transformers', 'anthropic', 'openai', 'sdpo_interactions.chat_clients'} "
            "& set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True, timeout=300)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr


@pytest.mark.parametrize("flag, sent", [(None, {"enable_thinking": False}), ("{}", None),
                                        ('{"enable_thinking": true}', {"enable_thinking": True})])
def test_the_served_user_gets_the_policys_chat_template_kwargs_unless_told_otherwise(flag, sent, monkeypatch):
    """A served Qwen3 user must not think, as the local user's template is rendered: by default each request carries
    the policy's chat_template_kwargs (vLLM and SGLang read them); '{}' sends none, for servers that refuse them."""
    from sdpo_interactions.testing.messages_server import MessagesServer

    monkeypatch.setenv("USER_API_KEY", "sk-user-MARKER")
    with MessagesServer() as server:
        argv = ["--user_api_base", server.url + "/v1", "--user_api_model", "m", "--user_api_max_retries", "0"]
        (args,) = TrlParser((UserArguments,)).parse_args_and_config(
            argv + ([] if flag is None else ["--user_api_chat_template_kwargs", flag]))
        user = build_user_simulator(args, {"enable_thinking": False})
        assert user.generate_feedback(["Why is the sky blue?"], ["Rayleigh scattering."]) != [""]
        (request,) = server.requests
    assert request.body.get("chat_template_kwargs") == sent
    assert user.settings().get("chat_template_kwargs") == sent  # recorded with the run


def test_the_served_users_chat_template_kwargs_must_be_a_json_object():
    with pytest.raises(ValueError, match="must be a JSON object"):
        UserArguments(user_api_base="http://h:8000/v1", user_api_model="m", user_api_chat_template_kwargs="[1]")
    with pytest.raises(ValueError, match="is not JSON"):
        UserArguments(user_api_base="http://h:8000/v1", user_api_model="m", user_api_chat_template_kwargs="{nope")
