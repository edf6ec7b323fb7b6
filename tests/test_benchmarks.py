"""The benchmark evaluation through the real harnesses, offline: lm-eval's own IFEval task on a local file of
IFEval prompts with the embedded model, and alpaca-eval's real annotator against a loopback judge that injects
faults; the planner, the table and the script's dry run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_interactions.evaluation.benchmark_report import markdown_table, table_rows
from sdpo_interactions.evaluation.benchmarks import (
    AnnotatorSettings, HarnessSettings, check_annotator_key, lm_eval_model_args, plan_cells, plan_models, punkt_data,
)
from sdpo_interactions.testing.judge_server import JudgeServer

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "smollm2-135m-instruct"
DATA = REPO / "tests" / "data"
SECRET = "sk-test-DO-NOT-LEAK-31415"
SETTINGS = {"model_name_or_path": str(MODEL), "chat_template_kwargs": {"enable_thinking": False}}


def make_run(folder: Path, adapter: bool) -> Path:
    """A run of the embedded model with one checkpoint: a LoRA adapter (peft) or the full weights (links)."""
    checkpoint = folder / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    if adapter:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(MODEL)
        get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(checkpoint)
    else:
        for path in MODEL.iterdir():
            (checkpoint / path.name).symlink_to(path)
    for place in (folder, checkpoint):
        (place / "sdpo_run_settings.json").write_text(json.dumps(SETTINGS))
    (checkpoint / "trainer_state.json").write_text("{}")
    return folder


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", **(env or {}))
    return subprocess.run([sys.executable, "-m", "sdpo_interactions.cli.eval_benchmarks", *args], env=environ,
                          capture_output=True, text=True, timeout=900)


def test_plan_covers_base_and_every_complete_checkpoint_with_the_run_template(tmp_path):
    run = make_run(tmp_path / "run", adapter=False)
    (run / "checkpoint-5").mkdir()  # cut short: no settings, no trainer state
    models = plan_models(str(run), ckpts=[], base_model=None)
    assert [(m.label, m.step, m.weights) for m in models] == [("base", None, str(MODEL)),
                                                              ("checkpoint-2", 2, str(run / "checkpoint-2"))]
    assert all(m.chat_template_kwargs == {"enable_thinking": False} for m in models)
    with pytest.raises(ValueError, match=r"no complete checkpoint for step\(s\) \[5, 7\]; complete: \[2\]"):
        plan_models(str(run), ckpts=[5, 7], base_model=None)
    # From the command line, the same as one line and exit 2, before any harness or model loads.
    proc = run_cli("--run_dir", str(run), "--ckpts", "5", "7", "--dry_run", "true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no complete checkpoint for step(s) [5, 7]" in proc.stderr.strip().splitlines()[-1]


def test_lora_checkpoints_load_over_their_base_in_both_harnesses(tmp_path):
    run = make_run(tmp_path / "run", adapter=False)
    (run / "checkpoint-2" / "config.json").unlink()  # what the planner reads of an adapter: its config
    (run / "checkpoint-2" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(MODEL), "r": 4}))
    adapter = plan_models(str(run), ckpts=[], base_model=None)[1]
    assert adapter.base_model == str(MODEL) and adapter.path == str(run / "checkpoint-2")
    harness, annotator = HarnessSettings(backend="hf"), AnnotatorSettings()
    cells = {c.benchmark.name: c for c in plan_cells([adapter], ["ifeval", "alpaca_eval"], tmp_path, harness, annotator)}
    model_args = json.loads(cells["ifeval"].command[cells["ifeval"].command.index("--model_args") + 1])
    assert model_args == {"pretrained": str(MODEL), "peft": adapter.path, "dtype": "auto",
                          "chat_template_args": {"enable_thinking": False}}
    generator = next(iter(__import__("yaml").safe_load(
        cells["alpaca_eval"].files[cells["alpaca_eval"].folder / "model_config.yaml"]()).values()))
    assert generator["completions_kwargs"]["model_name"] == str(MODEL)
    assert generator["completions_kwargs"]["adapters_name"] == adapter.path
    vllm = lm_eval_model_args(adapter, HarnessSettings(backend="vllm", tensor_parallel_size=2))
    assert (vllm["pretrained"], vllm["lora_local_path"], vllm["max_lora_rank"], vllm["tensor_parallel_size"]) == (
        str(MODEL), adapter.path, 16, 2)  # rank 4 fits vLLM's smallest allowance


def test_the_table_gives_deltas_to_the_base_model_by_hand():
    def result(label, step, bench, value):
        return {"label": label, "step": step, "benchmark": bench, "value": value, "versions": {"lm-eval": "x"},
                "settings": {"limit": None}}
    rows = table_rows([result("base", None, "ifeval", 83.9), result("checkpoint-9", 9, "ifeval", 85.0),
                       result("base", None, "mmlu_pro", 62.5)], ["base", "checkpoint-9"])
    table = markdown_table(rows, ["ifeval", "mmlu_pro"])
    assert "| base |  | 83.9 | 62.5 |" in table
    assert "| checkpoint-9 | 9 | 85.0 (+1.1) | – |" in table


def test_openai_needs_a_key_before_anything_runs(tmp_path):
    run = make_run(tmp_path / "run", adapter=False)
    cells = plan_cells(plan_models(str(run), ckpts=[], base_model=None), ["alpaca_eval"], tmp_path,
                       HarnessSettings(backend="hf"), AnnotatorSettings())
    with pytest.raises(ValueError, match="needs a key: export ANNOTATOR_API_KEY"):
        check_annotator_key(cells, AnnotatorSettings(), {})
    check_annotator_key(cells, AnnotatorSettings(annotator_api_base="http://127.0.0.1:1/v1"), {})  # open judge


def test_punkt_data_is_written_offline_in_nltks_format(tmp_path):
    folder = punkt_data(tmp_path)
    if folder is None:
        pytest.skip("NLTK already has punkt_tab on this machine")
    code = ("import nltk; nltk.data.path.insert(0, %r); from nltk.tokenize import PunktTokenizer; "
            "print(PunktTokenizer('english').tokenize('Dr. Smith went home. He was tired. So was Mr. Jones.'))")
    out = subprocess.run([sys.executable, "-c", code % folder], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['Dr. Smith went home.', 'He was tired.', 'So was Mr. Jones.']", out.stderr


@pytest.mark.slow
def test_ifeval_runs_lm_evals_own_task_on_local_prompts(tmp_path):
    """Hand-written IFEval prompts whose outcome is certain with 32 answer tokens: a forbidden nonsense word and
    "fewer than 100 sentences" (NLTK's punkt counts them) pass; "at least 5000 words" fails; a prompt with one
    instruction of each kind fails at prompt level and scores 1 of 2 at instruction level."""
    run = make_run(tmp_path / "run", adapter=True)
    out = tmp_path / "bench"
    args = ["--run_dir", str(run), "--benchmarks", "ifeval", "--ifeval_data", str(DATA / "ifeval_sample.jsonl"),
            "--max_gen_toks", "32", "--dtype", "float32", "--backend", "hf", "--output_dir", str(out)]
    done = run_cli(*args, env={"NLTK_DATA": str(tmp_path / "no-nltk-data")})
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("base", "checkpoint-2"):
        samples = {s["doc"]["key"]: s for s in map(json.loads, next((out / label / "ifeval" / "raw").rglob(
            "samples_*.jsonl")).read_text().splitlines())}
        assert {k: s["prompt_level_loose_acc"] for k, s in samples.items()} == {9001: True, 9002: False,
                                                                                9003: True, 9004: False}
        assert samples[9004]["inst_level_loose_acc"] == [True, False]
        result = json.loads((out / label / "ifeval" / "result.json").read_text())
        assert result["value"] == pytest.approx(50.0) and result["n"] == 4
        assert result["settings"]["chat_template_kwargs"] == {"enable_thinking": False}
        assert result["versions"]["lm-eval"] == "0.4.13"
    assert "| checkpoint-2 | 2 | 50.0 (+0.0) |" in (out / "benchmarks.md").read_text()
    assert "benchmarks: 100%" in done.stderr and "2/2" in done.stderr  # the progress bar over the cells
    again = run_cli(*args)
    assert again.returncode == 0 and "already computed" in again.stderr
    assert "lm_eval run" not in again.stderr  # nothing ran twice


@pytest.mark.slow
def test_alpaca_eval_scores_the_judges_choices_through_faults_and_keeps_the_key_secret(tmp_path):
    """The loopback judge prefers the model's answer on 3 of 4 instructions and the reference on the other, at
    probability 0.9 each; AlpacaEval's weighted win rate is then (3 x 0.9 + 1 x 0.1) / 4 = 70 %. The first
    requests fail with 429 and 5xx, which the OpenAI SDK retries. The checkpoint holds the base weights, so its
    greedy answers are the base model's and AlpacaEval's annotation cache answers for them."""
    references = {r["instruction"]: r["output"] for r in json.loads((DATA / "alpaca_eval_sample.json").read_text())}
    lost = "Say hello in Spanish."

    def prefer(instruction, outputs):
        reference = [k for k, text in outputs.items() if text == references[instruction]]
        model = [k for k in outputs if k not in reference]
        return reference[0] if instruction == lost else model[0]

    run = make_run(tmp_path / "run", adapter=False)
    out = tmp_path / "bench"
    with JudgeServer(prefer, faults={1: 429, 2: 500, 3: 503}) as judge:
        args = ["--run_dir", str(run), "--benchmarks", "alpaca_eval", "--alpaca_eval_data",
                str(DATA / "alpaca_eval_sample.json"), "--alpaca_max_new_tokens", "8", "--alpaca_metric", "win_rate", "--dtype", "float32",
                "--backend", "hf", "--annotator_model", "loopback-judge", "--annotator_api_base", judge.base_url,
                "--output_dir", str(out)]
        done = run_cli(*args, env={"ANNOTATOR_API_KEY": SECRET})
        assert done.returncode == 0, done.stderr[-3000:]
        assert judge.requests == 4 + 3  # each pair judged once (the cache serves the same pairs), three faults
        assert {h.get("authorization") for h in judge.headers} == {f"Bearer {SECRET}"}
        again = run_cli(*args, env={"ANNOTATOR_API_KEY": SECRET})
        assert again.returncode == 0 and judge.requests == 7  # the re-run asked nothing
    for label in ("base", "checkpoint-2"):
        result = json.loads((out / label / "alpaca_eval" / "result.json").read_text())
        assert result["value"] == result["win_rate"] == pytest.approx(70.0) and result["n"] == 4
        assert result["settings"]["annotator"] == f"loopback-judge (self-served at {judge.base_url})"
    table = (out / "benchmarks.md").read_text()
    assert "AlpacaEval 2 LC" in table and "comparable only between results judged by the same annotator" in table
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in done.stdout + done.stderr + again.stdout + again.stderr


def test_the_scripts_dry_run_prints_each_harness_command(tmp_path):
    run = make_run(tmp_path / "run", adapter=False)
    env = dict(os.environ, RUN_DIR=str(run), BENCHMARKS="ifeval mmlu_pro alpaca_eval", LIMIT="3",
               PYTHON=sys.executable, ANNOTATOR_API_KEY=SECRET)
    done = subprocess.run(["bash", str(REPO / "scripts" / "eval_benchmarks.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for label in ("base", "checkpoint-2"):
        for bench in ("ifeval", "mmlu_pro", "alpaca_eval"):
            command = lines[lines.index(f"# {label} / {bench}") + 1]
            assert str(run / "benchmarks" / label / bench / "raw") in command
            assert ("--limit 3" in command) or ("--max_instances 3" in command)
    assert "-m lm_eval run --model hf" in done.stdout and "--tasks mmlu_pro" in done.stdout
    assert "--num_fewshot 5" in done.stdout and "-m alpaca_eval.main evaluate_from_model" in done.stdout
    assert "ANNOTATOR_API_KEY: set" in done.stdout and SECRET not in done.stdout + done.stderr
    assert not (run / "benchmarks").exists()  # nothing written
