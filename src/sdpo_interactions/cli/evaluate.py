"""Persona win rate of a run's checkpoints against a baseline model, judged by a local model, Claude, or any
OpenAI-compatible server.

    python evaluate_run.py --run_dir runs/x --ckpts 3 6 9 --data_path data/tldr_prompts_unique/validation.jsonl \
        --judge local --judge_model Qwen/Qwen3-8B
    python evaluate_run.py --run_dir runs/x --data_path held_out.jsonl \
        --judge openai --judge_api_base http://judgehost:8000/v1 --judge_api_model Qwen/Qwen3-8B

Protocol (the paper's). For each held-out prompt the checkpoint and the baseline each write a response, with the
system prompt, chat-template settings and length the run was trained with (read from the checkpoint's
`sdpo_run_settings.json`; an explicit --max_new_tokens wins over the run's length). A judge playing the run's user
persona sees the request and the two responses, labelled A and B, and answers A, B or C (a tie). Every pair is
judged twice with the positions swapped; two verdicts that disagree make the pair a tie. The win rate is
wins / (wins + losses), ties excluded.

Held-out data is a prompts file or a conversations file (evaluation/held_out.py). An offline run learned from
logged users, not from a persona, so it stores none: the judge then plays the persona --style names. A run trained
with a persona schedule (--style_schedule) is judged, unless --style says otherwise, under every persona of its
schedule: a matrix of checkpoints by personas. The in-context oracle (the baseline with the persona in its system
prompt, evaluation/oracle.py) is judged against the plain baseline under each persona too, unless --oracle false.

Responses are greedy by default: the comparison then measures the models, not sampling noise, and the cached
baseline responses stay valid for every checkpoint and every re-run. `--temperature` or `--use_run_temperature`
samples instead.

Files in the output folder (default `<run_dir>/eval/`):
  judgments.jsonl          every judged pair: prompt, both responses, both verdicts and the judge's raw text
  baseline_responses.jsonl the baseline's responses, keyed by baseline model + generation settings + prompt
  win_rates.md / .csv      one row per checkpoint and persona judged as, and one per persona's oracle
  win_rate.png             win rate against step, with standard-error bars, a line per persona, the oracles and
                           a schedule's switch points
A re-run skips the pairs already in judgments.jsonl, so an interrupted evaluation resumes without paying twice.
Under `accelerate launch` generation (and local judging) is sharded across processes; the main process writes.

This file plans the checkpoints and runs the evaluation; the judges are evaluation/judges.py, verdicts and win
rates judging.py, local generation generation.py, held-out data held_out.py, and the table and plot report.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from sdpo_interactions.cli.common import run_cli
from sdpo_interactions.evaluation.generation import GenerationSettings, sharded_generate, stable_key
from sdpo_interactions.evaluation.held_out import load_held_out
from sdpo_interactions.evaluation.judges import JudgeArguments, build_judge, parse_json_object
from sdpo_interactions.evaluation.oracle import oracle_system_prompt, with_persona_prompt
from sdpo_interactions.evaluation.judging import (
    JUDGE_SYSTEM_TEMPLATE,
    JUDGE_TURN_TEMPLATE,
    WinRate,
    judge_pairs,
    judge_request,
    summarize,
)
from sdpo_interactions.evaluation.report import PLOT_NAME, TABLE_NAME, markdown_table, write_reports
from sdpo_interactions.personas import resolve_persona
from sdpo_interactions.prompts import SYSTEM_PROMPTS
from sdpo_interactions.run_files import (
    RUN_SETTINGS_NAME,
    InputError,
    MissingInputError,
    append_jsonl,
    complete_checkpoints,
    iter_jsonl,
    read_run_settings,
)
from sdpo_interactions.sampling import Sampling

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
# A LoRA run's checkpoint: the adapter, loaded over the base model its config names (transformers does it with peft).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
JUDGMENTS_NAME = "judgments.jsonl"
BASELINE_CACHE_NAME = "baseline_responses.jsonl"

# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalArguments(JudgeArguments):
    """What to evaluate, against what, and how (the judge's flags are JudgeArguments'). Generation settings default
    to the checkpoint's own run settings."""

    run_dir: Optional[str] = field(default=None, metadata={"help": "Training output folder holding checkpoint-<N>/."})
    ckpts: list[int] = field(
        default_factory=list,
        metadata={"help": "Checkpoint steps to evaluate, e.g. `--ckpts 3 6 9` (default: every checkpoint-<N>)."},
    )
    data_path: Optional[str] = field(
        default=None,
        metadata={"help": 'Held-out data: prompts, JSONL of {"prompt": "..."} (as train.py reads), or conversations, '
                          'JSONL of {"messages": [...]} (as train_offline.py reads; one prompt per user turn).'},
    )
    eval_n: int = field(default=256, metadata={"help": "Number of held-out prompts (a seeded random subset)."})
    seed: int = field(default=42, metadata={"help": "Seed of the prompt subset and of sampling, if any."})
    max_prompt_tokens: Optional[int] = field(
        default=None, metadata={"help": "Drop prompts whose chat-formatted length exceeds this many tokens "
                                        "(a conversation loses its earliest exchanges first)."}
    )
    baseline: str = field(default="Qwen/Qwen3-8B", metadata={"help": "Baseline model (hub id or folder)."})
    style: Optional[str] = field(
        default=None,
        metadata={"help": "Persona of the judge (default: the persona text each checkpoint was trained with, as "
                          "stored in its run settings; an offline run stores none, so it needs --style)."},
    )
    persona_file: Optional[str] = field(
        default=None,
        metadata={"help": "YAML or JSON file of style name -> persona description for --style, as in train.py."},
    )
    system_prompt: Optional[str] = field(
        default=None,
        metadata={"help": "Fallback policy system prompt name for settings files that lack one (an offline run's "
                          "default is none: its prompts are the conversations as logged).",
                  "choices": list(SYSTEM_PROMPTS)},
    )
    chat_template_kwargs: Optional[str] = field(
        default=None,
        metadata={"help": "Fallback chat template kwargs (JSON) of the policy for settings files that lack them; "
                  'default {"enable_thinking": false}.'},
    )
    max_new_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Longest response of checkpoint and baseline, in tokens; wins over the run's "
                          "max_completion_length, and is recorded with the results (default: the run's)."},
    )
    max_completion_length: Optional[int] = field(
        default=None, metadata={"help": "Fallback response length in tokens for settings files that lack one."}
    )
    temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of policy and baseline responses; 0 is greedy."}
    )
    use_run_temperature: bool = field(
        default=False, metadata={"help": "Sample at the temperature the run was trained with instead."}
    )
    batch_size: int = field(default=8, metadata={"help": "Generation batch size per process."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype of the local models.", "choices": list(DTYPES)})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where results go (default <run_dir>/eval)."})
    baseline_cache: Optional[str] = field(
        default=None,
        metadata={"help": "Baseline response cache, shareable between runs "
                  f"(default <output_dir>/{BASELINE_CACHE_NAME})."},
    )
    oracle: bool = field(
        default=True,
        metadata={"help": "Also judge the in-context oracle under each persona: the baseline with the persona in its "
                          "system prompt, against the plain baseline (a row of the table, a line of the plot)."},
    )
    judge_persona: Optional[str] = field(default=None, init=False)  # the text of --style, resolved on parsing

    def __post_init__(self):
        self._check_paths()
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        # Resolved here so that a bad persona file or style fails before any model loads.
        self.judge_persona = None
        if self.style is not None:
            self.style, self.judge_persona = resolve_persona(self.style, self.persona_file)
        elif self.persona_file is not None:
            raise ValueError("--persona_file needs --style: without it the judge plays each run's stored persona")
        if self.system_prompt is not None and self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"Unknown --system_prompt {self.system_prompt!r}; "
                             f"choose one of {', '.join(SYSTEM_PROMPTS)}")
        kwargs = parse_json_object(self.chat_template_kwargs, "chat_template_kwargs")
        self.chat_template_kwargs = {"enable_thinking": False} if kwargs is None else kwargs
        self._check_numbers()
        if self.output_dir is None:
            self.output_dir = os.path.join(self.run_dir, "eval")
        if self.baseline_cache is None:
            self.baseline_cache = os.path.join(self.output_dir, BASELINE_CACHE_NAME)

    def _check_paths(self) -> None:
        if self.run_dir is None:
            raise ValueError("--run_dir is required: the training output folder holding checkpoint-<N>/ folders")
        if not os.path.isdir(self.run_dir):
            raise FileNotFoundError(f"--run_dir: no such folder: {self.run_dir}")
        if self.data_path is None:
            raise ValueError('--data_path is required: held-out prompts, JSONL of {"prompt": ...} or {"messages": ...}')
        if not os.path.isfile(self.data_path):
            raise FileNotFoundError(f"--data_path: no such file: {self.data_path}")

    def _check_numbers(self) -> None:
        if any(step < 0 for step in self.ckpts):
            raise ValueError(f"--ckpts must be non-negative steps, got {self.ckpts}")
        for name in ("eval_n", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompt_tokens", "max_new_tokens", "max_completion_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.use_run_temperature and self.temperature > 0:
            raise ValueError("--use_run_temperature and --temperature > 0 contradict each other; pass one")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and their run settings, all checked before any model loads
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CheckpointPlan:
    """One model judged as one persona: a checkpoint, or (`kind` "oracle") the baseline told the persona."""

    step: Optional[int]  # None for the oracle
    path: Optional[Path]  # None for the oracle, whose model is the baseline
    style: str
    persona: str  # the text the judge plays
    generation: GenerationSettings  # how this model answers
    interactions: Optional[int] = None  # answers the user had replied to by this checkpoint, over all processes
    mode: str = "online"  # "offline": the replies came from logged conversations, not from a simulated user
    prompts: list = field(default_factory=list)  # chat messages, one list per held-out prompt
    pair_keys: list = field(default_factory=list)
    kind: str = "checkpoint"
    trained_on: Optional[str] = None  # the persona whose replies the checkpoint's last step learned from
    switches: tuple = ()  # (step, style) where the run's persona schedule switched to `style`
    policy_prompts: list = field(default_factory=list)  # what the judged model answers (the oracle's: persona told)
    baseline_generation: Optional[GenerationSettings] = None  # the plain baseline's, for the oracle

    @property
    def name(self) -> str:
        return "oracle" if self.kind == "oracle" else self.path.name


def checkpoint_problems(path: Path) -> list[str]:
    """What keeps `path` from being evaluated (empty when it is complete)."""
    if not path.is_dir():
        return [f"{path}: no such checkpoint folder"]
    problems = []
    # An adapter checkpoint's config and weights are its base model's, found where adapter_config.json says.
    adapter = all((path / name).is_file() for name in ADAPTER_FILES)
    if not adapter and not (path / "config.json").is_file():
        problems.append(f"{path}: no config.json (nor a LoRA adapter: {' and '.join(ADAPTER_FILES)})")
    elif not adapter and not any((path / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"{path}: no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not (path / RUN_SETTINGS_NAME).is_file():
        problems.append(f"{path}: no {RUN_SETTINGS_NAME} (written by train.py with every checkpoint)")
    return problems


def default_checkpoint_steps(run_dir: str) -> list[int]:
    """Every complete checkpoint of the run: what a default evaluation covers, whatever the run's length."""
    steps = [step for step, _ in complete_checkpoints(run_dir)]
    if not steps:
        raise MissingInputError(f"{run_dir}: no complete checkpoint-<N> folders to evaluate")
    return steps


class SettingsProblems(list):
    """What the run settings lack, gathered over every checkpoint so that one error lists all of it."""

    def need(self, settings: dict, key: str, flag_value, flag: str, where: Path, why: str = ""):
        """The saved value first (it defines the format the policy was trained on), the flag's second; neither is
        a problem."""
        saved = settings.get(key)
        if saved is None:
            if flag_value is None:
                self.append(f"{where / RUN_SETTINGS_NAME}: no {key!r}{why}; pass --{flag}")
            return flag_value
        if flag_value is not None and flag_value != saved:
            logger.warning("%s: using the run's %s=%r, not --%s=%r", where.name, key, saved, flag, flag_value)
        return saved


def is_offline(settings: dict) -> bool:
    return settings.get("mode") == "offline"


def max_new_tokens(settings: dict, args: EvalArguments, where: Path, problems: SettingsProblems) -> Optional[int]:
    """--max_new_tokens if given (it wins over the run's length), else the run's max_completion_length."""
    if args.max_new_tokens is None:
        return problems.need(settings, "max_completion_length", args.max_completion_length, "max_new_tokens", where)
    saved = settings.get("max_completion_length")
    if saved is not None and saved != args.max_new_tokens:
        logger.info("%s: responses up to --max_new_tokens=%d tokens, not the run's max_completion_length=%d",
                    where.name, args.max_new_tokens, saved)
    return args.max_new_tokens


def resolve_generation(settings: dict, args: EvalArguments, where: Path,
                       problems: SettingsProblems) -> Optional[GenerationSettings]:
    """How the checkpoint and the baseline answer: the run's settings, the flags where it has none."""
    flag_prompt = SYSTEM_PROMPTS[args.system_prompt] if args.system_prompt is not None else None
    if flag_prompt is None and is_offline(settings):
        flag_prompt = ""  # offline prompts are the logged conversations, with their own system turn if any
    system_prompt = problems.need(settings, "system_prompt", flag_prompt, "system_prompt", where)
    template_kwargs = settings.get("chat_template_kwargs")
    if template_kwargs is None:
        template_kwargs = args.chat_template_kwargs
    length = max_new_tokens(settings, args, where, problems)
    if args.use_run_temperature:
        saved = settings.get("sampling") or {"temperature": problems.need(settings, "temperature", None, "temperature",
                                                                          where)}
        sampling = Sampling(**{k: saved[k] for k in Sampling.__dataclass_fields__ if saved.get(k) is not None})
    else:
        sampling = Sampling(temperature=args.temperature)
    if system_prompt is None or length is None:
        return None
    return GenerationSettings(system_prompt=system_prompt, chat_template_kwargs=dict(template_kwargs),
                              max_new_tokens=int(length), sampling=sampling, seed=args.seed)


def judge_persona(settings: dict, args: EvalArguments, where: Path,
                  problems: SettingsProblems) -> tuple[Optional[str], Optional[str]]:
    """(style, persona text) the judge plays: --style if given, else the text the checkpoint trained with."""
    if args.style is not None:
        return args.style, args.judge_persona
    why = " (an offline run learned from logged users, not from a persona)" if is_offline(settings) else ""
    style = problems.need(settings, "style", None, "style", where, why)
    persona = settings.get("persona")
    if style is not None and persona is None:  # settings written before the persona text was stored
        try:
            style, persona = resolve_persona(style)
        except ValueError as err:
            problems.append(f"{where / RUN_SETTINGS_NAME}: {err}")
            return None, None
        logger.warning("%s: no stored persona text; judging with today's built-in %r", where.name, style)
    return style, persona


def judged_personas(settings: dict, args: EvalArguments, where: Path,
                    problems: SettingsProblems) -> list[tuple[Optional[str], Optional[str]]]:
    """Every (style, persona text) a checkpoint is judged as: each persona of a run's schedule, unless --style names
    one; else the one judge_persona gives."""
    schedule = settings.get("style_schedule")
    if args.style is None and schedule:
        return list(dict.fromkeys((phase["style"], phase["persona"]) for phase in schedule["phases"]))
    return [judge_persona(settings, args, where, problems)]


def schedule_facts(settings: dict) -> tuple[Optional[str], tuple]:
    """(the persona the checkpoint trained on last, the schedule's switches as (step, style)) from run settings."""
    schedule = settings.get("style_schedule")
    if not schedule:
        return settings.get("style"), ()
    phases = schedule["phases"]
    return schedule["active_style"], tuple((p["start_step"], p["style"]) for p in phases[1:])


def plan_checkpoints(args: EvalArguments) -> list[CheckpointPlan]:
    """Check every requested checkpoint and read its settings; all problems are reported together, early."""
    steps = sorted(set(args.ckpts)) or default_checkpoint_steps(args.run_dir)
    paths = [Path(args.run_dir) / f"checkpoint-{step}" for step in steps]
    missing = [problem for path in paths for problem in checkpoint_problems(path)]
    if missing:
        raise MissingInputError("Cannot evaluate these checkpoints:\n  " + "\n  ".join(missing))
    plans, problems = [], SettingsProblems()
    for step, path in zip(steps, paths):
        try:
            settings = read_run_settings(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        judged = judged_personas(settings, args, path, problems)
        generation = resolve_generation(settings, args, path, problems)
        interactions = (settings.get("interactions") or {}).get("with_feedback")
        mode = "offline" if is_offline(settings) else "online"
        trained_on, switches = schedule_facts(settings)
        warn_of_another_baseline(settings, args, path)
        for style, persona in judged:
            plans.append(CheckpointPlan(step, path, style, persona, generation, interactions, mode,
                                        trained_on=None if mode == "offline" else trained_on, switches=switches))
    if problems:
        raise InputError("Cannot evaluate with these run settings:\n  " + "\n  ".join(problems))
    return plans


def warn_of_another_baseline(settings: dict, args: EvalArguments, where: Path) -> None:
    trained_from = settings.get("model_name_or_path")
    if trained_from and trained_from != args.baseline:
        logger.warning("%s was trained from %s, and is compared with --baseline %s", where.name, trained_from,
                       args.baseline)


def judge_identity(args: EvalArguments) -> list:
    """What makes two judgments comparable: part of every pair's key. The log-probability protocol and its margin
    count only when used, so that judgments made before the protocol was a setting keep their keys."""
    judge = [args.judge, args.judge_model, args.judge_max_new_tokens, args.judge_temperature, JUDGE_SYSTEM_TEMPLATE,
             JUDGE_TURN_TEMPLATE]
    if args.judge_protocol != "letter":
        judge.append({"protocol": args.judge_protocol, "tie_margin": args.judge_tie_margin})
    return judge


def plan_oracles(plans: list[CheckpointPlan], args: EvalArguments) -> list[CheckpointPlan]:
    """The in-context oracle of each persona the checkpoints are judged as: the baseline with the persona appended to
    the run's system prompt, on the same held-out prompts, answering with the run's other generation settings."""
    oracles = {}
    for plan in plans:
        if plan.style in oracles:
            continue
        generation = replace(plan.generation, system_prompt=oracle_system_prompt(plan.generation.system_prompt,
                                                                                 plan.persona))
        oracle = CheckpointPlan(None, None, plan.style, plan.persona, generation, mode=plan.mode, prompts=plan.prompts,
                                kind="oracle", baseline_generation=plan.generation,
                                policy_prompts=[with_persona_prompt(m, plan.persona) for m in plan.prompts])
        oracle.pair_keys = [stable_key("in-context oracle", args.baseline, generation.as_dict(), judge_identity(args),
                                       plan.style, plan.persona, messages) for messages in plan.prompts]
        oracles[plan.style] = oracle
    return list(oracles.values())


def attach_prompts_and_keys(plans: list[CheckpointPlan], args: EvalArguments) -> None:
    """Load the held-out prompts in the run's format (its system prompt and chat template) and key the pairs."""
    from transformers import AutoTokenizer

    loaded: dict[str, list] = {}
    for plan in plans:
        gen = plan.generation
        cache_key = stable_key(gen.system_prompt, gen.chat_template_kwargs)
        if cache_key not in loaded:
            tokenizer = AutoTokenizer.from_pretrained(plan.path) if args.max_prompt_tokens is not None else None
            loaded[cache_key] = load_held_out(
                args.data_path,
                gen.system_prompt,
                tokenizer=tokenizer,
                max_prompt_tokens=args.max_prompt_tokens,
                n=args.eval_n,
                seed=args.seed,
                chat_template_kwargs=gen.chat_template_kwargs,
            )
        plan.prompts = plan.policy_prompts = loaded[cache_key]
        run_name = Path(args.run_dir).resolve().name
        plan.pair_keys = [
            stable_key(run_name, plan.step, args.baseline, gen.as_dict(), judge_identity(args), plan.style,
                       plan.persona, messages)
            for messages in plan.prompts
        ]


def baseline_key(baseline: str, generation: GenerationSettings, messages: list[dict]) -> str:
    return stable_key(baseline, generation.as_dict(), messages)


# ---------------------------------------------------------------------------------------------------------------
# Files: whole-line appends and tolerant reads, so an interrupted run leaves nothing half-written behind
# ---------------------------------------------------------------------------------------------------------------


def read_jsonl_by_key(path: Path) -> dict[str, dict]:
    """Records of a JSONL file by their "key"; a torn last line (a crash mid-append) is ignored with a warning."""
    if not path.is_file():
        return {}
    records: dict[str, dict] = {}
    for where, record in iter_jsonl(path, tolerate_torn_tail=True):
        if not isinstance(record, dict) or "key" not in record:
            raise InputError(f'{where}: expected an object with a "key" field')
        records[record["key"]] = record
    return records


# ---------------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------------


def run_judging(judge, pairs: list[dict], judgments_path: Path) -> int:
    """Judge pending pairs in chunks, appending each chunk to the judgments file. Returns the pairs left unjudged.

    A local judge is sharded across processes like generation; an API judge runs on the main process only (one
    client, so one concurrency bound against the API's rate limits) after the other processes have finished.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState()
    if not judge.sharded and not state.is_main_process:
        return 0
    chunk = judge.chunk_size * (state.num_processes if judge.sharded else 1)
    written = 0
    with tqdm(total=len(pairs), desc="Judging pairs", unit="pair", disable=not state.is_main_process) as bar:
        for start in range(0, len(pairs), chunk):
            if judge.sharded:
                with state.split_between_processes(pairs[start : start + chunk]) as mine:
                    records = gather_object(judge_pairs(judge, mine))
            else:
                records = judge_pairs(judge, pairs[start : start + chunk])
            if state.is_main_process:
                append_jsonl(judgments_path, records)
                written += len(records)
            bar.update(len(pairs[start : start + chunk]))
    judge.close()
    return len(pairs) - written


def evaluate(args: EvalArguments) -> Optional[list[dict]]:
    """Run the whole evaluation; the main process returns the table rows, the others None."""
    from accelerate import PartialState

    state = PartialState()
    plans = plan_checkpoints(args)
    attach_prompts_and_keys(plans, args)
    plans += plan_oracles(plans, args) if args.oracle else []
    # An API judge checks its key and URL here, before any model loads; a local one loads when it first judges.
    judge = build_judge(args, args.dtype)
    out_dir = Path(args.output_dir)
    judgments_path = out_dir / JUDGMENTS_NAME
    judged = read_jsonl_by_key(judgments_path)
    baseline_cache = read_jsonl_by_key(Path(args.baseline_cache))
    state.wait_for_everyone()  # every process has read the files before the main process appends to them

    pending = [[i for i, key in enumerate(plan.pair_keys) if key not in judged] for plan in plans]
    logger.info("Pairs to judge: %s (already judged pairs are skipped)",
                {f"{plan.name} as {plan.style}": len(todo) for plan, todo in zip(plans, pending)})
    write_baseline_responses(args, plans, pending, baseline_cache, state.is_main_process)
    responses = checkpoint_responses(args, plans, pending)
    pairs = [pair for plan, todo in zip(plans, pending)
             for pair in pairs_to_judge(args, plan, todo, responses, baseline_cache)]

    failed = run_judging(judge, pairs, judgments_path) if pairs else 0
    if not state.is_main_process:
        return None
    if failed:
        logger.warning("%d pairs could not be judged (judge requests failed); re-run to judge them", failed)
    judged = read_jsonl_by_key(judgments_path)
    rows = []
    for plan in plans:
        outcomes = [judged[key]["outcome"] for key in plan.pair_keys if key in judged]
        rows.append(table_row(plan, summarize(outcomes), args))
    write_reports(rows, out_dir, switches=next((plan.switches for plan in plans if plan.switches), ()))
    return rows


def write_baseline_responses(args: EvalArguments, plans: list[CheckpointPlan], pending: list[list[int]],
                             cache: dict[str, dict], write: bool) -> None:
    """The baseline's response to every pending prompt not in the cache, added to it (and to its file if `write`):
    the plain baseline's, and the oracle's (the baseline told the persona), with one load of the model."""
    jobs = {}
    for plan, todo in zip(plans, pending):
        plain = plan.baseline_generation or plan.generation
        for i in todo:
            wanted = [(plan.prompts[i], plain)] + ([(plan.policy_prompts[i], plan.generation)]
                                                   if plan.kind == "oracle" else [])
            for messages, generation in wanted:
                key = baseline_key(args.baseline, generation, messages)
                if key not in cache:
                    jobs[key] = (key, messages, generation)
    if not jobs:
        return
    logger.info("Baseline %s: %d responses to write", args.baseline, len(jobs))
    fresh = sharded_generate(args.baseline, list(jobs.values()), dtype=args.dtype, batch_size=args.batch_size,
                             desc="Baseline responses")
    records = [
        {"key": key, "baseline": args.baseline, "generation": jobs[key][2].as_dict(), "prompt": jobs[key][1],
         "response": response}
        for key, response in fresh.items()
    ]
    cache.update({r["key"]: r for r in records})
    if write:
        append_jsonl(Path(args.baseline_cache), records)


def checkpoint_responses(args: EvalArguments, plans: list[CheckpointPlan], pending: list[list[int]]) -> dict:
    """Each checkpoint's response to every prompt still to be judged under any persona, written once per checkpoint
    (its answer does not depend on who judges it): response key -> text."""
    by_checkpoint: dict[Path, dict] = {}
    for plan, todo in zip(plans, pending):
        if plan.kind == "checkpoint":
            jobs = by_checkpoint.setdefault(plan.path, {})
            for i in todo:
                key = response_key(plan, i)
                jobs[key] = (key, plan.policy_prompts[i], plan.generation)
    responses = {}
    for path, jobs in by_checkpoint.items():
        if jobs:
            logger.info("Checkpoint %s: %d responses to write", path, len(jobs))
            responses.update(sharded_generate(str(path), list(jobs.values()), dtype=args.dtype,
                                              batch_size=args.batch_size, desc=f"{path.name} responses"))
    return responses


def response_key(plan: CheckpointPlan, i: int) -> str:
    return stable_key(str(plan.path), plan.generation.as_dict(), plan.policy_prompts[i])


def pairs_to_judge(args: EvalArguments, plan: CheckpointPlan, pending: list[int], responses: dict[str, str],
                   baseline: dict[str, dict]) -> list:
    """The judged model's response to each pending prompt, next to the baseline's: one record per pair to judge."""
    pairs = []
    for i in pending:
        messages = plan.prompts[i]
        if plan.kind == "oracle":
            policy = baseline[baseline_key(args.baseline, plan.generation, plan.policy_prompts[i])]["response"]
        else:
            policy = responses[response_key(plan, i)]
        plain = plan.baseline_generation or plan.generation
        pairs.append({
            "key": plan.pair_keys[i],
            "step": plan.step,
            "checkpoint": plan.name,
            "kind": plan.kind,
            "style": plan.style,
            "persona": plan.persona,
            "trained_on": plan.trained_on,
            "baseline": args.baseline,
            "judge": args.judge,
            "judge_model": args.judge_model,
            "judge_protocol": args.judge_protocol,
            "generation": plan.generation.as_dict(),
            "messages": messages,
            **({"oracle_system_prompt": plan.policy_prompts[i][0]["content"]} if plan.kind == "oracle" else {}),
            "prompt": judge_request(messages),
            "policy_response": policy,
            "baseline_response": baseline[baseline_key(args.baseline, plain, messages)]["response"],
        })
    return pairs


def table_row(plan: CheckpointPlan, result: WinRate, args: EvalArguments) -> dict:
    return {
        "step": plan.step,
        "interactions": plan.interactions,
        "checkpoint": plan.name,
        "kind": plan.kind,
        "style": plan.style,
        "trained_on": plan.trained_on,
        "pairs": result.pairs,
        "wins": result.wins,
        "losses": result.losses,
        "ties": result.ties,
        "invalid": result.invalid,
        "win_rate": result.win_rate,
        "stderr": result.stderr,
        "tie_rate": result.tie_rate,
        "baseline": args.baseline,
        "judge_model": args.judge_model,
        "judge_protocol": args.judge_protocol,
        "max_new_tokens": plan.generation.max_new_tokens,
        "mode": plan.mode,
        "oracle_system_prompt": plan.generation.system_prompt if plan.kind == "oracle" else None,
    }


def main(args: EvalArguments) -> None:
    rows = evaluate(args)
    if rows is not None:
        print(markdown_table(rows))
        print(f"Wrote {TABLE_NAME}.md, {TABLE_NAME}.csv, {PLOT_NAME} and {JUDGMENTS_NAME} in {args.output_dir}")


def cli() -> None:
    run_cli(main, EvalArguments)


if __name__ == "__main__":
    cli()
