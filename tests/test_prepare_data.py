"""prepare_data.py: the row transforms and filters on hand-written rows in the real source schemas, the output
format and its stability, the atomic write, the offline --source path end to end, and a user's own file checked line
by line (every bad line named, or skipped on request) with a held-out split that is never silently empty."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import sdpo_interactions.cli.prepare_data as pdata
from sdpo_interactions.conversations import held_out_rank
from sdpo_interactions.run_files import BadLinesError, InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_SAMPLE = REPO_ROOT / "data" / "sample"


def tldr_row(post, *, article=None, row_id="t3_x", split="train"):
    """One row of openai/summarize_from_feedback (comparisons), with invented content."""
    return {
        "info": {"id": row_id, "post": post, "title": "A title", "subreddit": "relationships",
                 "site": None if post is not None else "cnn", "article": article},
        "summaries": [{"text": " first summary", "policy": "sup2", "note": None},
                      {"text": " second summary", "policy": "ref", "note": None}],
        "choice": 0,
        "worker": "w1",
        "batch": "batch1",
        "split": split,
        "extra": {"confidence": 5},
    }


def helpsteer_row(prompt, response="A helpful answer.", score=3):
    """One row of nvidia/HelpSteer2, with invented content."""
    return {"prompt": prompt, "response": response, "helpfulness": score, "correctness": score,
            "coherence": 4, "complexity": 1, "verbosity": 2}


def post_of_prompt_length(n):
    """A post whose TL;DR prompt (suffix included) is exactly n characters long."""
    return "x" * (n - len(pdata.TLDR_SUFFIX))


# ------------------------------------------------------------------------------------------------------ TL;DR
def test_tldr_prompt_strips_post_and_puts_suffix_on_its_own_line():
    assert pdata.tldr_prompt(tldr_row("  My cat ignores me.\n\n")) == "My cat ignores me.\nTL;DR:"


def test_tldr_prompt_falls_back_to_article_and_is_empty_without_text():
    assert pdata.tldr_prompt(tldr_row(None, article=" News story. ")) == "News story.\nTL;DR:"
    assert pdata.tldr_prompt(tldr_row("   \n ")) == ""
    assert pdata.tldr_prompt(tldr_row(None, article=None)) == ""


def test_normalize_key_collapses_whitespace_and_case():
    assert pdata.normalize_key("  Hello\t\nWORLD  again ") == "hello world again"


def test_tldr_length_limit_is_strictly_below_1024_characters():
    rows = [tldr_row(post_of_prompt_length(1023)), tldr_row(post_of_prompt_length(1024) + "y"),
            tldr_row("z" * 5000)]
    kept, counts = pdata.filter_tldr_split(rows)
    assert [len(p) for p in kept] == [1023]
    assert counts == {"rows": 3, "empty": 0, "too_long": 2, "duplicate": 0, "kept": 1}


def test_tldr_within_split_dedup_keeps_first_occurrence_in_order():
    rows = [tldr_row("First post here."), tldr_row("Second  post."), tldr_row("first POST\n here."),
            tldr_row(""), tldr_row("Third post.")]
    kept, counts = pdata.filter_tldr_split(rows)
    assert kept == ["First post here.\nTL;DR:", "Second  post.\nTL;DR:", "Third post.\nTL;DR:"]
    assert counts == {"rows": 5, "empty": 1, "too_long": 0, "duplicate": 1, "kept": 3}


def test_tldr_validation_drops_prompts_already_in_train():
    splits = {
        "train": [tldr_row("Shared post about a dog."), tldr_row("Only in train.")],
        "validation": [tldr_row("shared post   about a DOG."), tldr_row("Only in validation."),
                       tldr_row("Only in validation.")],
    }
    prompts, counts = pdata.build_tldr(splits)
    assert prompts["train"] == ["Shared post about a dog.\nTL;DR:", "Only in train.\nTL;DR:"]
    assert prompts["validation"] == ["Only in validation.\nTL;DR:"]
    assert counts["validation"] == {"rows": 3, "empty": 0, "too_long": 0, "duplicate": 1, "in_train": 1, "kept": 1}
    assert "in_train" not in counts["train"]


# ------------------------------------------------------------------------------------------------------ HelpSteer2
def test_helpsteer_multi_turn_marker_detection():
    assert pdata.is_multi_turn("Hi<extra_id_1>Assistant\nHello<extra_id_1>User\nMore")
    assert pdata.is_multi_turn("text <extra_id_12> text")
    assert not pdata.is_multi_turn("What is <extra_id> used for?")
    assert not pdata.is_multi_turn("Plain single-turn question?")


def test_helpsteer_filters_and_counts():
    rows = [
        helpsteer_row("Explain photosynthesis simply."),
        helpsteer_row("Explain photosynthesis simply.", response="Another answer."),  # second response, same prompt
        helpsteer_row("Earlier turn<extra_id_1>Assistant\nSure<extra_id_1>User\nAnd now?"),
        helpsteer_row("   ", response="Answer to nothing."),
        helpsteer_row("Answer me.", response="  "),
        helpsteer_row("p" * 2048),                                   # exactly at the limit: kept
        helpsteer_row("q" * 2049),                                   # prompt too long
        helpsteer_row("Short prompt, long answer.", response="r" * 2049),
        helpsteer_row("Short prompt, long answer.", response="fine"),  # its other response passes
    ]
    kept, counts = pdata.filter_helpsteer_split(rows)
    assert kept == ["Explain photosynthesis simply.", "p" * 2048, "Short prompt, long answer."]
    assert counts == {"rows": 9, "multi_turn": 1, "empty": 2, "too_long": 2, "duplicate": 1, "kept": 3}


def test_helpsteer_splits_are_filtered_independently():
    splits = {"train": [helpsteer_row("Same question?")], "validation": [helpsteer_row("Same question?")]}
    prompts, counts = pdata.build_helpsteer(splits)
    assert prompts == {"train": ["Same question?"], "validation": ["Same question?"]}
    assert counts["validation"]["kept"] == 1


# ------------------------------------------------------------------------------------------------------ writing
def test_written_files_are_utf8_unescaped_jsonl(tmp_path):
    prompts = {"train": ["Café au lait \"quoted\"\nTL;DR:", "二つ目"], "validation": []}
    pdata.write_splits_atomically(tmp_path, prompts)
    raw = (tmp_path / "train.jsonl").read_bytes()
    assert raw == ('{"prompt": "Café au lait \\"quoted\\"\\nTL;DR:"}\n{"prompt": "二つ目"}\n').encode("utf-8")
    assert (tmp_path / "validation.jsonl").read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl", "validation.jsonl"]


def test_interrupted_write_leaves_previous_files_and_no_temporaries(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"prompt": "old"}\n', encoding="utf-8")

    def failing():
        yield "new one"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pdata.write_splits_atomically(tmp_path, {"validation": ["fine"], "train": failing()})
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == '{"prompt": "old"}\n'
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl"]  # validation was not renamed into place either


# ------------------------------------------------------------------------------------------------------ --source, end to end
@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def tldr_fixture_splits():
    train = [tldr_row("I lent my brother money and he bought a boat.", row_id="a"),
             tldr_row("I lent my brother money and he bought a boat.", row_id="a"),  # same post, second comparison
             tldr_row(None, article="A storm closed the harbour for two days.", row_id="b"),
             tldr_row("Naïve question: should I repaint my kitchen?", row_id="c"),
             tldr_row(post_of_prompt_length(1500), row_id="d")]
    validation = [tldr_row("i lent my brother money and he  bought a boat.", row_id="e", split="valid1"),
                  tldr_row("Our neighbour's rooster crows at 3am.", row_id="f", split="valid1")]
    return {"train": train, "validation": validation}


EXPECTED_TLDR_TRAIN = (
    '{"prompt": "I lent my brother money and he bought a boat.\\nTL;DR:"}\n'
    '{"prompt": "A storm closed the harbour for two days.\\nTL;DR:"}\n'
    '{"prompt": "Naïve question: should I repaint my kitchen?\\nTL;DR:"}\n'
)
EXPECTED_TLDR_VALIDATION = '{"prompt": "Our neighbour\'s rooster crows at 3am.\\nTL;DR:"}\n'


def test_tldr_from_save_to_disk_folder_is_byte_identical_across_runs(tmp_path, isolated_hf_cache, capsys):
    source = tmp_path / "sff_copy"
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in tldr_fixture_splits().items()}) \
        .save_to_disk(str(source))
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for out in outs:
        assert pdata.main(["tldr", "--source", str(source), "--output_dir", str(out)]) == 0
    for split, expected in (("train", EXPECTED_TLDR_TRAIN), ("validation", EXPECTED_TLDR_VALIDATION)):
        assert (outs[0] / f"{split}.jsonl").read_bytes() == expected.encode("utf-8")
        assert (outs[1] / f"{split}.jsonl").read_bytes() == (outs[0] / f"{split}.jsonl").read_bytes()
    report = capsys.readouterr().out
    assert "train: rows=5, empty=0, too_long=1, duplicate=1, kept=3" in report
    assert "validation: rows=2, empty=0, too_long=0, duplicate=0, in_train=1, kept=1" in report
    assert 'train[0]: "I lent my brother money and he bought a boat.\\nTL;DR:"' in report


def test_tldr_from_parquet_files(tmp_path, isolated_hf_cache):
    source = tmp_path / "comparisons"
    source.mkdir()
    for split, rows in tldr_fixture_splits().items():
        datasets.Dataset.from_list(rows).to_parquet(str(source / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "out"
    pdata.main(["tldr", "--source", str(source), "--output_dir", str(out), "--show", "0"])
    assert (out / "train.jsonl").read_text(encoding="utf-8") == EXPECTED_TLDR_TRAIN
    assert (out / "validation.jsonl").read_text(encoding="utf-8") == EXPECTED_TLDR_VALIDATION


def test_helpsteer_from_jsonl_files(tmp_path, isolated_hf_cache, capsys):
    """JSON Lines files named by split; scripts/prepare_data_helpsteer.sh runs this same path in a subprocess."""
    source = tmp_path / "hs2 copy"
    source.mkdir()
    splits = {"train": [helpsteer_row("How do magnets work?"), helpsteer_row("How do magnets work?", "Other."),
                        helpsteer_row("Hi<extra_id_1>Assistant\nHello<extra_id_1>User\nBye")],
              "validation": [helpsteer_row("Write a haiku about rain.")]}
    for split, rows in splits.items():
        with open(source / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "out dir"
    assert pdata.main(["helpsteer", "--source", str(source), "--output_dir", str(out)]) == 0
    assert "train: rows=3, multi_turn=1, empty=0, too_long=0, duplicate=1, kept=1" in capsys.readouterr().out
    assert (out / "train.jsonl").read_text(encoding="utf-8") == '{"prompt": "How do magnets work?"}\n'
    assert (out / "validation.jsonl").read_text(encoding="utf-8") == '{"prompt": "Write a haiku about rain."}\n'


def test_source_errors_are_clear(tmp_path, isolated_hf_cache):
    with pytest.raises(InputError, match="not a folder"):
        pdata.main(["helpsteer", "--source", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")])
    only_train = tmp_path / "only_train"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([helpsteer_row("Q?")])}).save_to_disk(str(only_train))
    with pytest.raises(InputError, match="missing split\\(s\\) validation; found train"):
        pdata.main(["helpsteer", "--source", str(only_train), "--output_dir", str(tmp_path / "o")])
    wrong_schema = tmp_path / "wrong_schema"
    datasets.DatasetDict({s: datasets.Dataset.from_list([helpsteer_row("Q?")]) for s in pdata.SPLITS}) \
        .save_to_disk(str(wrong_schema))
    with pytest.raises(InputError, match="lacks column\\(s\\) info"):
        pdata.main(["tldr", "--source", str(wrong_schema), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- logged conversations (offline)
def turn(role, content, **flags):
    return {"role": role, "content": content, **flags}


def test_conversation_filters_are_counted_and_the_split_is_by_conversation():
    ok = [turn("user", "fix my code"), turn("assistant", "here"), turn("user", "it does not compile")]
    rows = [
        {"conversation_id": "a", "language": "English", "conversation": ok},
        {"conversation_id": "a-copy", "language": "English", "conversation": ok},  # the same turns again
        {"conversation_id": "b", "language": "French", "conversation": ok},
        {"conversation_id": "c", "language": "English", "toxic": True, "conversation": ok},
        {"conversation_id": "d", "language": "English", "conversation": ok[:1] + [turn("assistant", "x", redacted=True)]
         + ok[2:]},
        {"conversation_id": "e", "language": "English", "conversation": [turn("user", "q"), turn("assistant", " ")]
         + ok[2:]},
        {"conversation_id": "f", "language": "English", "conversation": ok[:2]},  # no reply to the answer
        {"conversation_id": "g", "language": "English", "conversation": [ok[0], ok[0], ok[1]]},
        {"conversation_id": "h", "language": "English", "conversation": [{"speaker": "bot"}]},
        {"conversation_id": "i", "language": "English", "conversation": [turn("user", "q"), turn("assistant", "x" * 5000),
                                                                          turn("user", "long")]},
    ]
    splits, counts = pdata.split_conversations(rows, language="english", held_out_percent=0.0)
    assert splits == {"train": [ok], "validation": []}
    assert {k: v for k, v in counts.items() if v} == {
        "rows": 10, "duplicate": 1, "language": 1, "toxic": 1, "redacted": 1, "empty_turn": 1, "no_reply": 1,
        "roles_out_of_order": 1, "unreadable": 1, "turn_too_long": 1, "kept_train": 1,
    }


def test_held_out_conversations_are_chosen_by_their_id_alone():
    rows = [{"conversation_id": f"c{i}", "messages": [turn("user", f"q{i}"), turn("assistant", "a"), turn("user", "o")]}
            for i in range(400)]
    splits, _ = pdata.split_conversations(rows, held_out_percent=10.0)
    again, _ = pdata.split_conversations(list(reversed(rows)), held_out_percent=10.0)
    held_out = {m[0]["content"] for m in splits["validation"]}
    assert held_out == {m[0]["content"] for m in again["validation"]}
    assert 20 <= len(held_out) <= 60 and not held_out & {m[0]["content"] for m in splits["train"]}


def test_sharegpt_turns_of_wildfeedback_are_read():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                             {"from": "human", "value": "that is wrong"}]}
    splits, counts = pdata.split_conversations([row], held_out_percent=0.0)
    assert splits["train"] == [[turn("user", "q"), turn("assistant", "a"), turn("user", "that is wrong")]]


def test_own_logs_are_prepared_deterministically(tmp_path, capsys):
    logs = tmp_path / "logs.jsonl"
    logs.write_text((REPO_SAMPLE / "conversations.jsonl").read_text())
    for out in ("one", "two"):
        assert pdata.main(["conversations", "--source", str(logs), "--output_dir", str(tmp_path / out),
                           "--held_out_percent", "30"]) == 0
    for split in ("train", "validation"):
        assert (tmp_path / "one" / f"{split}.jsonl").read_bytes() == (tmp_path / "two" / f"{split}.jsonl").read_bytes()
    lines = [json.loads(line) for s in ("train", "validation") for line in (tmp_path / "one" / f"{s}.jsonl").open()]
    assert len(lines) == 6 and all(set(record) == {"messages"} for record in lines)
    with pytest.raises(SystemExit):
        pdata.main(["conversations", "--output_dir", str(tmp_path / "x")])  # --source is required for own logs


def test_truncation_marks_drop_the_conversation_and_reaction_marks_are_kept():
    ok = [turn("user", "q"), turn("assistant", "a"), turn("user", "o")]
    cut = [turn("user", "q"), {**turn("assistant", "a"), "finish_reason": "length"}, turn("user", "o")]
    marked = [turn("user", "q"), turn("assistant", "a"), {**turn("user", "new topic"), "reaction": False}]
    splits, counts = pdata.split_conversations([{"messages": m} for m in (ok, cut, marked)], held_out_percent=0.0)
    assert counts["truncated"] == 1
    assert splits["train"] == [ok, marked]  # the reaction mark travels to train_offline.py, which skips that sample


# ------------------------------------------------------------------------- a user's own file: checked line by line
def own_conversation(i):
    return {"messages": [turn("user", f"question {i}"), turn("assistant", f"answer {i}"), turn("user", f"reply {i}")]}


def write_own_logs(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


BAD_OWN_LINES = [
    "{not json",
    json.dumps({"messages": [turn("user", "a"), turn("user", "b")]}),
    json.dumps({"messages": [turn("user", "q"), {"role": "assistant", "content": "a", "truncated": "yes"}]}),
    json.dumps({"turns": []}),
]


def run_prepare(*args, cwd):
    return subprocess.run([sys.executable, str(REPO_ROOT / "prepare_data.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_every_bad_line_of_an_own_file_is_named_and_the_command_fails(tmp_path):
    lines = [own_conversation(0), *BAD_OWN_LINES, own_conversation(1)] + ["[]"] * 20
    logs = write_own_logs(tmp_path / "logs.jsonl", lines)
    proc = run_prepare("conversations", "--source", logs, "--output_dir", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and not (tmp_path / "out").exists()
    assert proc.stderr.splitlines() == [
        f"error: {logs}: 24 bad lines (--skip_bad_lines leaves bad lines out)",
        f"  {logs}:2: malformed JSON (Expecting property name enclosed in double quotes, column 2)",
        f"  {logs}:3: message 2 of 2 is 'user' where 'assistant' was due: after an optional system turn, user and "
        "assistant turns alternate, starting with the user",
        f"  {logs}:4: message 2 of 2 (assistant): 'truncated' must be true or false",
        f'  {logs}:5: expected an object with a "messages" list',
        *[f'  {logs}:{n}: expected an object with a "messages" list' for n in range(7, 23)],
        "  ... and 4 more",
    ]


def test_skip_bad_lines_leaves_them_out_and_says_how_many_and_why(tmp_path, capsys):
    logs = write_own_logs(tmp_path / "logs.jsonl", [own_conversation(0), *BAD_OWN_LINES, own_conversation(1)])
    assert pdata.main(["conversations", "--source", str(logs), "--output_dir", str(tmp_path / "out"),
                       "--skip_bad_lines", "--held_out_percent", "0"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[:2] == [f"warning: {logs}: 4 bad lines (left out: --skip_bad_lines)",
                                    f"  {logs}:2: malformed JSON (Expecting property name enclosed in double quotes, "
                                    "column 2)"]
    assert "all: bad_lines=4, rows=2," in out
    kept = [json.loads(line)["messages"] for line in (tmp_path / "out" / "train.jsonl").open()]
    assert kept == [own_conversation(0)["messages"], own_conversation(1)["messages"]]


def test_rows_of_an_own_parquet_file_are_named_by_number(tmp_path):
    source = tmp_path / "logs.parquet"
    datasets.Dataset.from_list([own_conversation(0), {"messages": [turn("assistant", "hi"), turn("user", "yo")]}]) \
        .to_parquet(str(source))
    with pytest.raises(BadLinesError, match=rf"^{re.escape(str(source))}: row 2: message 1 of 2 is 'assistant'"):
        pdata.main(["conversations", "--source", str(source), "--output_dir", str(tmp_path / "out")])


def test_a_public_dataset_keeps_its_counted_filters(tmp_path, capsys, isolated_hf_cache):
    source = write_own_logs(tmp_path / "wildchat.jsonl", [
        {"conversation_id": "a", "language": "English", "conversation": own_conversation(0)["messages"]},
        {"conversation_id": "b", "language": "English", "conversation": [turn("assistant", "x"), turn("user", "y")]},
    ])
    assert pdata.main(["wildchat", "--source", str(source), "--output_dir", str(tmp_path / "out"),
                       "--held_out_percent", "0"]) == 0
    assert "rows=2, unreadable=0, language=0, toxic=0, redacted=0, empty_turn=0, truncated=0, roles_out_of_order=1" \
        in capsys.readouterr().out


def test_a_small_file_still_gets_a_held_out_conversation(tmp_path, capsys):
    """2% of twelve conversations is none: one is held out anyway (the nearest by its hash), and said so."""
    logs = write_own_logs(tmp_path / "logs.jsonl", [own_conversation(i) for i in range(12)])
    assert pdata.main(["conversations", "--source", str(logs), "--output_dir", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "held_out_to_fill_validation=1, kept_train=11, kept_validation=1" in out
    assert "one is held out so that validation.jsonl is not empty" in err
    held_out = (tmp_path / "out" / "validation.jsonl").read_text()
    keys = [json.dumps(own_conversation(i)["messages"], ensure_ascii=False) for i in range(12)]
    assert held_out == json.dumps({"messages": own_conversation(min(range(12), key=lambda i: held_out_rank(keys[i])))
                                   ["messages"]}) + "\n"


def test_an_empty_held_out_split_is_not_silent(tmp_path, capsys):
    logs = write_own_logs(tmp_path / "logs.jsonl", [own_conversation(0)])
    assert pdata.main(["conversations", "--source", str(logs), "--output_dir", str(tmp_path / "out")]) == 0
    assert (f"warning: {tmp_path / 'out' / 'validation.jsonl'} is empty: 1 conversation(s) kept, too few to hold "
            "one out") in capsys.readouterr().err
    assert (tmp_path / "out" / "validation.jsonl").read_text() == ""


def test_out_dir_is_a_deprecated_alias_of_output_dir(tmp_path, capsys):
    logs = write_own_logs(tmp_path / "logs.jsonl", [own_conversation(i) for i in range(3)])
    assert pdata.main(["conversations", "--source", str(logs), "--out_dir", str(tmp_path / "old")]) == 0
    assert "warning: --out_dir is deprecated; use --output_dir" in capsys.readouterr().err
    assert (tmp_path / "old" / "train.jsonl").is_file()
    with pytest.raises(InputError, match="pass --output_dir only"):
        pdata.main(["conversations", "--source", str(logs), "--out_dir", "a", "--output_dir", "b"])
