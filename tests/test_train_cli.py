"""train.py: flags, data loading and every bad input, which must fail before a model is loaded."""

import json

import pytest
from trl import TrlParser

import sdpo_interactions.cli.train as train
from sdpo_interactions.prompts import load_prompt_dataset, prompt_messages, prompt_token_limit
from sdpo_interactions.run_files import resolve_checkpoint


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def parse(args):
    return TrlParser(train.ARGUMENTS).parse_args_and_config(args=args)


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Post number {i} about my week.\nTL;DR:"} for i in range(6)])


def test_script_flags_and_trainer_flags_parse_together(prompts_file, tmp_path):
    script, config, *_ = parse([
        "--train_jsonl", str(prompts_file), "--train_n", "3", "--eval_n", "2", "--max_prompt_tokens", "300",
        "--system_prompt", "general", "--style", "poetic", "--model_name_or_path", "m",
        "--user_model_name_or_path", "u", "--seed", "11", "--output_dir", str(tmp_path / "out"),
        "--learning_rate", "5e-6", "--bf16", "false", "--chat_template_kwargs", '{"enable_thinking": false}',
    ])
    assert (script.train_n, script.eval_n, script.max_prompt_tokens) == (3, 2, 300)
    assert (script.system_prompt, script.style, script.user_model_name_or_path) == ("general", "poetic", "u")
    assert config.seed == 11 and config.learning_rate == 5e-6 and config.num_generations == 1
    assert config.chat_template_kwargs == {"enable_thinking": False}


def test_yaml_config_sets_defaults_and_flags_override(prompts_file, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 3.0e-6\nmax_completion_length: 64\nbf16: false\nstyle: no_emojis\n")
    script, config, *_ = parse(["--config", str(recipe), "--train_jsonl", str(prompts_file),
                            "--max_completion_length", "32", "--output_dir", str(tmp_path / "o")])
    assert config.learning_rate == 3e-6 and config.max_completion_length == 32 and script.style == "no_emojis"


def test_prompts_become_chat_messages_without_the_tldr_cue():
    assert prompt_messages("My post.\nTL;DR:", "SYS") == [
        {"role": "system", "content": "SYS"}, {"role": "user", "content": "My post."}
    ]
    assert prompt_messages("Explain TL;DR: usage. ", "") == [{"role": "user", "content": "Explain TL;DR: usage."}]
    assert "TL;DR:" in train.SYSTEM_PROMPTS["tldr"] and train.SYSTEM_PROMPTS["general"] == ""


def test_dataset_is_filtered_shuffled_and_subset_with_the_seed(model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"prompt": f"short post {i}\nTL;DR:"} for i in range(8)] + [{"prompt": "long " * 400}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    kwargs = dict(system_prompt="", tokenizer=tokenizer, max_prompt_tokens=100)
    full = load_prompt_dataset(str(path), **kwargs)
    assert len(full) == 8 and all("long" not in r["prompt"][-1]["content"] for r in full)
    first = load_prompt_dataset(str(path), n=3, seed=1, **kwargs)["prompt"]
    assert first == load_prompt_dataset(str(path), n=3, seed=1, **kwargs)["prompt"]
    assert len(first) == 3 and first != load_prompt_dataset(str(path), n=3, seed=2, **kwargs)["prompt"]


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"prompt": "fine"}', '{"prompt": "broken'], r"p\.jsonl:2: malformed JSON"),
        (['{"prompt": "fine"}', '{"text": "x"}'], r'p\.jsonl:2: missing "prompt"'),
        (['{"prompt": "   "}'], r'p\.jsonl:1: "prompt" must be a non-empty string'),
        (['{"prompt": 3}'], r'p\.jsonl:1: "prompt" must be a non-empty string'),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        load_prompt_dataset(str(path), system_prompt="")


def test_empty_after_filtering_is_an_error(model_dir, tmp_path):
    from transformers import AutoTokenizer

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a post that is certainly longer than four tokens"}])
    with pytest.raises(ValueError, match="no prompts left after filtering"):
        load_prompt_dataset(str(path), system_prompt="", tokenizer=AutoTokenizer.from_pretrained(model_dir),
                            max_prompt_tokens=4)


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--train_jsonl", "/nonexistent/train.jsonl"], FileNotFoundError, "no such file: /nonexistent/train.jsonl"),
        ([], ValueError, "--train_jsonl is required"),
        (["--train_jsonl", "{data}", "--style", "grumpy"], ValueError,
         "Unknown style 'grumpy'. Known styles: .*concise_casual_beginner"),
        (["--train_jsonl", "{data}", "--val_jsonl", "/nope.jsonl"], FileNotFoundError, "--val_jsonl: no such file"),
        (["--train_jsonl", "{data}", "--train_n", "0"], ValueError, "--train_n must be >= 1"),
        (["--train_jsonl", "{data}", "--persona_file", "/nope.yaml"], FileNotFoundError, "persona file: no such"),
        (["--train_jsonl", "{data}", "--persona_file", "{bad_personas}"], ValueError, r"personas\.yaml:2: .*poetic"),
        (["--train_jsonl", "{data}", "--user_top_p", "0.9"], ValueError, "apply to a local or served user model"),
        (["--train_jsonl", "{data}", "--user_api_base", "http://h:8000/v1"], ValueError, "needs --user_api_model"),
        (["--train_jsonl", "{data}", "--user_api_base", "h:8000", "--user_api_model", "m"], ValueError, "http"),
        (["--train_jsonl", "{data}", "--user_api_model", "m"], ValueError, "set --user_api_base"),
        (["--train_jsonl", "{data}", "--user_api_base", "http://h/v1", "--user_api_model", "m",
          "--user_model_name_or_path", "u"], ValueError, "not both"),
        (["--train_jsonl", "{data}", "--user_api_max_concurrency", "0"], ValueError, "user_api_max_concurrency"),
        (["--train_jsonl", "{data}", "--user_model_name_or_path", "u", "--user_top_p", "1.5"], ValueError, "top_p"),
    ],
)
def test_bad_flags_fail_before_any_model_loads(prompts_file, tmp_path, extra, error, message):
    args = ["--output_dir", str(tmp_path / "o"), "--bf16", "false", "--model_name_or_path", "/nonexistent/model"]
    bad_personas = tmp_path / "personas.yaml"
    bad_personas.write_text("pirate: Arr.\npoetic:\n")
    with pytest.raises(error, match=message):
        parse(args + [a.replace("{data}", str(prompts_file)).replace("{bad_personas}", str(bad_personas))
                      for a in extra])


def test_persona_file_and_the_authors_user_defaults(prompts_file, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("pirate: You want every answer in pirate speak.\n")
    common = ["--train_jsonl", str(prompts_file), "--output_dir", str(tmp_path / "o"), "--bf16", "false"]
    local, *_ = parse(common + ["--persona_file", str(mine), "--style", "pirate", "--user_model_name_or_path", "u"])
    assert (local.style, local.persona) == ("pirate", "You want every answer in pirate speak.")
    assert (local.user_backend, local.user_max_new_tokens, local.user_temperature) == ("local", 128, 0.7)
    assert (local.user_top_p, local.user_top_k) == (0.95, 20)
    claude, *_ = parse(common + ["--style", "answer_direclty_reduce_formatting"])
    assert claude.style == "answer_directly_reduce_formatting"  # the research code's spelling is accepted
    assert (claude.user_backend, claude.user_max_new_tokens, claude.user_temperature) == ("claude", 256, 0.0)
    served, *_ = parse(common + ["--user_api_base", "http://simhost:8000/v1", "--user_api_model", "Qwen/Qwen3-8B"])
    assert (served.user_backend, served.user_max_new_tokens, served.user_temperature) == ("api", 128, 0.7)
    assert (served.user_top_p, served.user_top_k) == (0.95, 20)  # the local user's, moved to a server
    user = train.build_user_simulator(served, {})
    assert type(user).__name__ == "OpenAIStyleUserSimulator" and user.persona == served.persona
    assert user.settings()["base_url"].rstrip("/") == "http://simhost:8000/v1" and user.model == "Qwen/Qwen3-8B"
    assert user.sampling == {"temperature": 0.7, "top_p": 0.95, "top_k": 20} and user.max_tokens == 128


def test_unknown_system_prompt_lists_the_choices(prompts_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--train_jsonl", str(prompts_file), "--system_prompt", "chatty", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "tldr" in capsys.readouterr().err


def test_prompt_limit_defaults_to_the_generation_limit_and_may_not_exceed_it():
    assert prompt_token_limit(None, 512) == 512
    assert prompt_token_limit(300, 512) == 300
    assert prompt_token_limit(None, None) is None
    with pytest.raises(ValueError, match="--max_prompt_tokens 600 exceeds --max_prompt_length 512"):
        prompt_token_limit(600, 512)


def test_resume_last_takes_the_newest_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint-\\* folder"):
        resolve_checkpoint("last", str(tmp_path))
    for step, complete in ((3, True), (6, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (folder / name).write_text("{}")
        if complete:
            (folder / "sdpo_run_settings.json").write_text("{}")
    assert resolve_checkpoint("last", str(tmp_path)).endswith("checkpoint-6")  # 12 was cut short
    assert resolve_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_checkpoint(str(tmp_path / "checkpoint-99"), str(tmp_path))


def test_claude_user_without_key_fails_before_any_model_loads(prompts_file, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    # The policy is a hub id that is nowhere (and the hub is offline): reaching for any model or tokenizer would
    # fail differently.
    args = parse(["--train_jsonl", str(prompts_file), "--output_dir", str(tmp_path / "o"), "--bf16", "false",
                  "--model_name_or_path", "no-such-org/no-such-policy"])
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY is not set"):
        train.main(*args)


def test_main_runs_one_real_step_with_the_local_user(model_dir, tiny_model_dir, tmp_path):
    """The whole CLI path: the policy is the tiny random model (tests/conftest.py), the local simulated user the
    embedded SmolLM2, whose replies are real text."""
    data = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "I adopted a shy cat. She hides all day.\nTL;DR:"}] * 2)
    out = tmp_path / "run"
    train.main(*parse([
        "--train_jsonl", str(data), "--model_name_or_path", tiny_model_dir, "--user_model_name_or_path", model_dir,
        "--user_max_new_tokens", "8", "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size",
        "2", "--max_completion_length", "8", "--report_to", "none", "--bf16", "false",
        "--gradient_checkpointing", "false", "--save_strategy", "no",
    ]))
    (record, *_) = [json.loads(line) for line in (out / "token_logps.jsonl").read_text().splitlines()]
    assert record["prompt"] == "I adopted a shy cat. She hides all day."
    assert record["feedback"] and record["feedback"] in record["teacher_context"]
    settings = json.loads((out / "sdpo_run_settings.json").read_text())
    assert settings["system_prompt"] == train.SYSTEM_PROMPTS["tldr"]
    assert settings["user_simulator"]["model_name_or_path"] == model_dir
    assert (out / "model.safetensors").is_file()
