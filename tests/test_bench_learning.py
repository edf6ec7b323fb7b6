"""The learning benchmark's plumbing on a couple of steps: its users, its control and its table. Whether anything is
learned is what the benchmark measures, not what a test asserts."""

import importlib.util
import sys
from pathlib import Path

import pytest


def load_bench(name: str):
    """A benchmark script imported as a module, from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_learning = load_bench("bench_learning")
RULES, DerangedUser, RuleUser = bench_learning.RULES, bench_learning.DerangedUser, bench_learning.RuleUser


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        ("length", "Rent can rise 30% only with notice.", "word " * 16),
        ("no_lists", "Plain prose only.", "Options:\n- one\n- two"),
        ("tldr_prefix", "TL;DR: the cat wins.", "The cat wins."),
        ("no_emojis", "All clean.", "All clean ✅"),
    ],
)
def test_each_rule_and_its_reply(rule, good, bad):
    assert RULES[rule].follows(good) and not RULES[rule].follows(bad)
    assert RuleUser(rule).generate_feedback(["p", "q"], [good, bad]) == [RULES[rule].thanks, RULES[rule].complaint]


def test_the_control_gives_each_answer_another_answers_reply():
    answers = ["short", "word " * 20, "also short"]
    real = RuleUser("length").generate_feedback(["a", "b", "c"], answers)
    control = DerangedUser("length").generate_feedback(["a", "b", "c"], answers)
    assert control == [real[1], real[2], real[0]]


def test_all_three_arms_run_and_share_the_same_starting_point(tiny_model_dir, tmp_path):
    rows = bench_learning.main(["--model", tiny_model_dir, "--steps", "1", "--completion", "8", "--eval_n", "2",
                                "--out", str(tmp_path / "rows.json")])
    assert [r["arm"] for r in rows] == ["sdpo", "deranged", "grpo"]
    # The same base model answers the held-out prompts greedily before any training: the same score for every arm.
    assert len({(r["before"]["follows"], r["before"]["words"]) for r in rows}) == 1
    assert (tmp_path / "rows.json").is_file()
