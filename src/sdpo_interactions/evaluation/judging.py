"""Judging: the judge's prompt, how its verdicts are read, swap-and-tie resolution and win rates.

A judge plays the run's user persona and compares two responses, labelled A and B; every pair is judged in both
orders. Its verdict is read by one of two protocols (`--judge_protocol`): `letter`, the text it writes (every judge,
Claude included), or `logprobs`, the log-probabilities of the labels A, B and C as the first token of its answer,
a tie within a margin (the authors' StyleJudge; a local or an OpenAI-compatible judge). Everything here but
`judge_pairs` is pure and checked by hand in tests/test_evaluate.py and tests/test_judge_protocols.py; the judges
themselves (a local model, Claude, an OpenAI-compatible server) are in judges.py.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional

logger = logging.getLogger(__name__)

JUDGE_SYSTEM_TEMPLATE = (
    "You are a user who asked an AI assistant for something and got two candidate responses, A and B.\n"
    "Your persona: {persona}\n\n"
    "Judge the responses only by how well each one suits you, the user described above. Answer with a single "
    "letter: A if you prefer response A, B if you prefer response B, or C if you like them equally."
)
JUDGE_TURN_TEMPLATE = (
    'My request:\n"""\n{request}\n"""\n\n'
    "[Response A]\n{response_a}\n[End of response A]\n\n"
    "[Response B]\n{response_b}\n[End of response B]\n\n"
    "Which response do I prefer, A or B? (C means a tie.) Reply with the letter only."
)


def judge_messages(persona: str, request: str, response_a: str, response_b: str) -> list[dict[str, str]]:
    """The judge's conversation: the persona as system prompt, the request and both labelled responses as user turn."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM_TEMPLATE.format(persona=persona)},
        {
            "role": "user",
            "content": JUDGE_TURN_TEMPLATE.format(request=request, response_a=response_a, response_b=response_b),
        },
    ]


def judge_request(messages: list[dict[str, str]]) -> str:
    """The request the judge reads: the last user turn, after the earlier turns of a multi-turn prompt (a held-out
    conversation), so that a follow-up such as "shorter, please" is judged in its context."""
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError(f"a prompt ends with the user's request: {messages!r}")
    if len(turns) == 1:
        return turns[0]["content"]
    earlier = "\n\n".join(f"{'Me' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns[:-1])
    return f"(Earlier in our conversation)\n{earlier}\n\n(My request now)\n{turns[-1]['content']}"


_THINK_BLOCK = re.compile(r"<think>.*?(</think>|\Z)", re.S)
# "A, B, or C", "A or B", "A/B": the choices listed back (often echoing the question), never a verdict.
_ENUMERATION = re.compile(r"\b[ABC](?:\s*(?:,|/|\bor\b|\band\b)\s*(?:or\s+|and\s+)?[ABC])+\b")
_OPEN = r"[\s*_\"'`(\[{<]*"
_CLOSE = r"[\s*_\"'`)\]}>.!:]*"
# Tier 1: the reply is the letter, or starts with it ("B", "**B**", "[[A]]", "B. It is shorter", "A is better").
_BARE = re.compile(_OPEN + r"([ABCabc])" + _CLOSE)
_LEADING = re.compile(r"\A" + _OPEN + r"([ABC])(?=" + _CLOSE + r"(?:\n|\Z)|[.:,)!]|\s+(?:is|wins)\b|\s*\()")
# Tier 2: a decisive phrase names the letter ("The better response is B", "I prefer A", "Verdict: C").
_DECISIVE = re.compile(
    r"(?i:\b(?:verdict|answer|choice|winner|pick|prefer|preference|better|best)(?:\s+(?:response|answer|one|option))?)"
    r"\s*(?:(?i:is|would be|:|-|=)\s*)*(?:(?i:response|answer|option)\s+)?" + r"[*_\"'`(\[]*([ABC])\b"
)
_DECISIVE_TIE = re.compile(r"(?i)\bit'?s a tie\b|\b(?:verdict|answer)\s*(?:is|:)\s*(?:a\s+)?tie\b")
# Tier 3: a single response named anywhere ("Response B suits me"), or the word "tie".
_MENTION = re.compile(r"(?i:\b(?:response|answer|option))\s+[*_\"'`(\[]*([ABC])\b")
_TIE = re.compile(r"(?i)\btie\b|\bequally good\b")


def parse_verdict(text: Optional[str]) -> Optional[str]:
    """The judge's verdict, "A", "B" or "C" (tie), or None when the text names none or names several.

    Rules from the strictest to the loosest; the first rule that finds something decides, and a rule that finds
    two different letters makes the verdict unparseable rather than guessing.
    """
    if not text:
        return None
    text = _THINK_BLOCK.sub("", text).strip()
    if not text:
        return None
    lines = text.splitlines()
    for candidate in (text, lines[0]):
        match = _BARE.fullmatch(candidate)
        if match:
            return match.group(1).upper()
    text = _ENUMERATION.sub(" ", text)
    tiers = (
        {m.group(1) for m in _LEADING.finditer(text)},
        {m.group(1) for m in _DECISIVE.finditer(text)} | ({"C"} if _DECISIVE_TIE.search(text) else set()),
        {m.group(1) for m in _MENTION.finditer(text)} | ({"C"} if _TIE.search(text) else set()),
    )
    for letters in tiers:
        if letters:
            return letters.pop() if len(letters) == 1 else None
    return None


LABELS = ("A", "B", "C")
# The authors' tie margin in nats, as their evaluation script builds the judge (--tie_margin 0.1; StyleJudge's own
# default is 0.05).
DEFAULT_TIE_MARGIN = 0.1


def label_logprobs(candidates: Iterable[tuple[str, float]]) -> dict[str, Optional[float]]:
    """Each label's log-probability among a first token's candidates: the best of the tokens that read as the label
    once whitespace is stripped ("A", " A", "\nA", the authors' spellings), None for a label not among them."""
    scores: dict[str, Optional[float]] = dict.fromkeys(LABELS)
    for token, logprob in candidates:
        label = token.strip()
        if label in scores and (scores[label] is None or logprob > scores[label]):
            scores[label] = logprob
    return scores


def verdict_from_label_logprobs(scores: dict[str, Optional[float]], margin: float) -> Optional[str]:
    """The authors' rule: the most likely label is the verdict when it is A or B and leads the runner-up by at least
    `margin` (nats); otherwise a tie, "C". None when no label is among the candidates (the judge answered something
    else: an invalid verdict, as an unreadable letter is)."""
    known = sorted(((lp, label) for label, lp in scores.items() if lp is not None), reverse=True)
    if not known:
        return None
    best, label = known[0]
    runner_up = known[1][0] if len(known) > 1 else -math.inf
    return label if label != "C" and best - runner_up >= margin else "C"


def judge_verdicts(judge, conversations: list[list[dict]]) -> list[Optional[tuple[object, Optional[str]]]]:
    """(what the judge answered, its verdict) per conversation, by the judge's protocol; None where its request
    failed. The answer is the text (`letter`) or the labels' log-probabilities (`logprobs`)."""
    if judge.protocol == "logprobs":
        return [None if scores is None else (scores, verdict_from_label_logprobs(scores, judge.tie_margin))
                for scores in judge.label_logprobs(conversations)]
    return [None if text is None else (text, parse_verdict(text)) for text in judge.complete(conversations)]


def outcome_for_policy(verdict: Optional[str], policy_label: str) -> Optional[str]:
    """"win", "loss" or "tie" for the policy whose response was labelled `policy_label`; None for no verdict."""
    if verdict is None:
        return None
    if verdict == "C":
        return "tie"
    return "win" if verdict == policy_label else "loss"


def resolve_pair(first: Optional[str], second: Optional[str]) -> str:
    """Combine the outcomes of the two position-swapped judgments of one pair.

    Agreement stands; disagreement (position bias, or a genuinely close call) is a tie; a missing verdict on
    either side makes the pair "invalid", which is reported and never folded into the ties.
    """
    if first is None or second is None:
        return "invalid"
    return first if first == second else "tie"


@dataclass(frozen=True)
class WinRate:
    """Counts over a checkpoint's pairs. `win_rate` and `stderr` are NaN when no pair was decisive."""

    pairs: int
    wins: int
    losses: int
    ties: int
    invalid: int

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def win_rate(self) -> float:
        return self.wins / self.decisive if self.decisive else math.nan

    @property
    def stderr(self) -> float:
        """Binomial standard error sqrt(p(1-p)/n) over the n decisive pairs."""
        p = self.win_rate
        return math.sqrt(p * (1 - p) / self.decisive) if self.decisive else math.nan

    @property
    def tie_rate(self) -> float:
        """Ties among the pairs with a valid verdict (invalid pairs are counted apart)."""
        valid = self.pairs - self.invalid
        return self.ties / valid if valid else math.nan


def summarize(outcomes: Iterable[str]) -> WinRate:
    outcomes = list(outcomes)
    unknown = set(outcomes) - {"win", "loss", "tie", "invalid"}
    if unknown:
        raise ValueError(f"Unknown pair outcomes {sorted(unknown)}")
    return WinRate(
        pairs=len(outcomes),
        wins=outcomes.count("win"),
        losses=outcomes.count("loss"),
        ties=outcomes.count("tie"),
        invalid=outcomes.count("invalid"),
    )


def judge_pairs(judge, pairs: list[dict]) -> list[dict]:
    """Judge each pair twice (policy first, then baseline first) and build its judgment record.

    Pairs whose judge call failed (None) are left out, to be retried by the next run.
    """
    conversations = []
    for pair in pairs:
        request, policy, baseline = pair["prompt"], pair["policy_response"], pair["baseline_response"]
        conversations.append(judge_messages(pair["persona"], request, policy, baseline))
        conversations.append(judge_messages(pair["persona"], request, baseline, policy))
    answers = judge_verdicts(judge, conversations)
    records = []
    for i, pair in enumerate(pairs):
        both = answers[2 * i: 2 * i + 2]
        if None in both:
            continue
        verdicts = [verdict for _, verdict in both]
        outcomes = [outcome_for_policy(verdicts[0], "A"), outcome_for_policy(verdicts[1], "B")]
        records.append({**pair, "verdicts": verdicts, "outcomes": outcomes, "outcome": resolve_pair(*outcomes),
                        "raw_judgments": [raw for raw, _ in both]})
    return records
