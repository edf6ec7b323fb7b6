"""The README's library example runs as printed: only the model, the run folder and the lengths are made small.

The model is the tiny random one on the embedded model's tokenizer (tests/conftest.py): the example is plumbing, and
its real run on the embedded 135M model (`make demo` covers that model's behaviour) would cost a minute of the fast
tier.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the test changes in the example, and to what: each pattern must match exactly once, so an edit of the
# README that the test no longer understands fails here instead of running something else.
SUBSTITUTIONS = {
    r'"Qwen/Qwen3-0\.6B"': "MODEL_DIR",
    r'output_dir="runs/brief-user"': "output_dir=OUTPUT_DIR",
    r"max_steps=\d+": "max_steps=1",
    r"max_completion_length=\d+": "max_completion_length=8",
}


def library_example() -> str:
    """The README's python block that imports the package (there is exactly one)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    examples = [block for block in blocks if "from sdpo_interactions import" in block]
    assert len(examples) == 1, f"expected one python block importing sdpo_interactions in README.md, got {len(examples)}"
    return examples[0]


def shortened(code: str) -> str:
    for pattern, replacement in SUBSTITUTIONS.items():
        code, count = re.subn(pattern, replacement, code)
        assert count == 1, f"README example: {pattern!r} matched {count} times, expected once"
    return code


def test_readme_library_example_trains_with_its_user(tiny_model_dir, tmp_path):
    code = shortened(library_example())
    namespace = {"MODEL_DIR": tiny_model_dir, "OUTPUT_DIR": str(tmp_path / "run")}
    exec(compile(code, "README.md (library example)", "exec"), namespace)

    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    # The example's own user wrote the feedback the trainer learned from: the token log holds its replies.
    records = [json.loads(line) for line in (tmp_path / "run" / "token_logps.jsonl").read_text().splitlines()]
    assert records, "the example run wrote no token-log records"
    user = namespace["BriefUser"]()
    for record in records:
        assert record["feedback"] == user.generate_feedback([record["prompt"]], [record["completion"]])[0]
        assert len(record["signal"]) == len(record["completion_ids"])
