"""The Search-R1 text protocol: its prompt, how a turn is rendered, and a tolerant parser.

Search-R1 (Jin et al., 2025) writes, token by token::

    <think> thought </think>
    <search> subquery </search>

    <information>Doc 1(Title: t) text
    Doc 2(Title: t) text</information>

    ...
    <think> thought </think>
    <answer> answer </answer>

The renderers here produce exactly that layout (the explicit agent and the trainer's explicit SFT
mode share them), and :func:`parse_transcript` reads it back, tolerating what a model may get
wrong: a missing ``</search>`` or ``</answer>``, no answer at all, nested or stray tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..results import RetrievedDoc

SEARCH_R1_INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first "
    "every time you get new information. After reasoning, if you find you lack some knowledge, "
    "you can call a search engine by <search> query </search> and it will return the top "
    "searched results between <information> and </information>. You can search as many times "
    "as your want. If you find no further external knowledge needed, you can directly provide "
    "the answer inside <answer> and </answer>, without detailed illustrations. For example, "
    "<answer> Beijing </answer>."
)
"""Search-R1's instruction, verbatim (including its "as your want")."""

SEARCH_R1_PROMPT = SEARCH_R1_INSTRUCTION + " Question: {question}\n"
"""The full Search-R1 prompt; format with ``question=``."""

THINK, THINK_END = "<think>", "</think>"
SEARCH, SEARCH_END = "<search>", "</search>"
INFORMATION, INFORMATION_END = "<information>", "</information>"
ANSWER, ANSWER_END = "<answer>", "</answer>"
TAGS = (THINK, THINK_END, SEARCH, SEARCH_END, INFORMATION, INFORMATION_END, ANSWER, ANSWER_END)
STOP_STRINGS = (SEARCH_END, ANSWER_END)
"""Generation stops after either of these (or EOS)."""

_TAG = re.compile(r"<(/?)(think|search|information|answer)>")


def defang(text: str) -> str:
    """Untrusted text (documents, questions) with every protocol tag made inert (``<answer>`` ->
    ``‹answer>``), so that it can neither look like the agent's markup to the model nor to
    :func:`parse_blocks`, whatever the tokenizer does with tags."""
    return _TAG.sub(lambda m: "\u2039" + m.group(0)[1:], text)


@dataclass(frozen=True)
class ParsedStep:
    """One retrieval turn read back from a transcript.

    Attributes:
        thought: The ``<think>`` text before the search (None if there was none).
        subquery: The ``<search>`` text.
        information: The ``<information>`` text that followed (None if none did).
    """

    thought: str | None
    subquery: str
    information: str | None = None


@dataclass(frozen=True)
class ParsedTranscript:
    """A whole Search-R1 transcript.

    Attributes:
        steps: The retrieval turns, in order.
        final_thought: The ``<think>`` text before the answer (None if none).
        answer: The ``<answer>`` text (None when the model never answered).
    """

    steps: list[ParsedStep] = field(default_factory=list)
    final_thought: str | None = None
    answer: str | None = None


def prompt_text(question: str) -> str:
    """Search-R1's prompt for one question (the question is stripped)."""
    return SEARCH_R1_PROMPT.format(question=question.strip())


def render_think(thought: str) -> str:
    """``<think> thought </think>\\n``."""
    return f"{THINK} {thought.strip()} {THINK_END}\n"


def render_step(thought: str, subquery: str) -> str:
    """One retrieval turn as the model writes it: the thought, then the search call."""
    return f"{render_think(thought)}{SEARCH} {subquery.strip()} {SEARCH_END}"


def render_doc(i: int, doc: RetrievedDoc) -> str:
    """``Doc i(Title: t) text`` (Search-R1's ``_passages2string`` layout; ``i`` is 1-based),
    with the document's own tags made inert (:func:`defang`)."""
    return defang(f"Doc {i}(Title: {doc.title}) {doc.body}")


def render_information(docs: Sequence[RetrievedDoc]) -> str:
    """The block the environment appends after a search, with its surrounding blank lines."""
    body = "\n".join(render_doc(i, d) for i, d in enumerate(docs, start=1))
    return f"\n\n{INFORMATION}{body}{INFORMATION_END}\n\n"


def render_final(thought: str, answer: str) -> str:
    """The last turn: the thought, then the answer."""
    return f"{render_think(thought)}{ANSWER} {answer.strip()} {ANSWER_END}"


def render_transcript(
    question: str,
    steps: Sequence[tuple[str, str, Sequence[RetrievedDoc]]],
    final_thought: str,
    answer: str,
) -> str:
    """A full transcript (prompt included): ``steps`` are ``(thought, subquery, docs)``."""
    out = prompt_text(question)
    for thought, subquery, docs in steps:
        out += render_step(thought, subquery) + render_information(docs)
    return out + render_final(final_thought, answer)


def strip_prompt(text: str) -> str:
    """Drop Search-R1's instruction and question line when ``text`` starts with them.

    The instruction itself contains ``<search> query </search>`` and ``<answer> Beijing
    </answer>``, which must not be read as the model's own output.
    """
    idx = text.find(SEARCH_R1_INSTRUCTION)
    if idx < 0:
        return text
    rest = text[idx + len(SEARCH_R1_INSTRUCTION) :]
    nl = rest.find("\n")
    return "" if nl < 0 else rest[nl + 1 :]


def parse_blocks(text: str, *, sealed_information: bool = False) -> list[tuple[str, str]]:
    """Split ``text`` into ``(tag, content)`` blocks, tolerating malformed markup.

    Rules: an opening tag while a block of the same kind is open restarts it (the innermost wins:
    ``<search>a <search>b</search>`` reads ``b``); an opening tag of another kind closes the open
    block implicitly (a missing ``</search>``); stray closing tags are ignored; an unclosed block
    runs to the end of the text. With ``sealed_information``, an ``<information>`` block (the
    environment's documents, untrusted text) that is closed ends only at its ``</information>``:
    tags inside it are document text, not the agent's. (An unclosed one follows the rules above.)
    """
    out: list[tuple[str, str]] = []
    cur: str | None = None
    start = 0
    sealed = False  # the open block is an <information> block that a later tag closes
    for m in _TAG.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if sealed and not (closing and tag == cur):
            continue
        if closing:
            if cur == tag:
                out.append((cur, text[start : m.start()].strip()))
                cur, sealed = None, False
            continue
        if cur is not None and cur != tag:
            out.append((cur, text[start : m.start()].strip()))
        cur, start = tag, m.end()
        sealed = sealed_information and tag == "information" and INFORMATION_END in text[start:]
    if cur is not None:
        out.append((cur, text[start:].strip()))
    return out


def parse_transcript(text: str) -> ParsedTranscript:
    """Read a Search-R1 transcript (with or without the prompt) back into steps.

    Each ``<search>`` makes a step whose thought is the latest ``<think>`` since the previous
    step, and whose information is the ``<information>`` that follows it. The answer is the last
    ``<answer>`` block; empty searches are skipped.

    Args:
        text: The transcript text.

    Returns:
        The parsed transcript; ``answer`` is None if the model never answered.
    """
    steps: list[ParsedStep] = []
    thought: str | None = None
    answer: str | None = None
    final_thought: str | None = None
    for tag, content in parse_blocks(strip_prompt(text), sealed_information=True):
        if tag == "think":
            thought = content
        elif tag == "search":
            if content:
                steps.append(ParsedStep(thought=thought, subquery=content))
            thought = None
        elif tag == "information":
            if steps and steps[-1].information is None:
                last = steps[-1]
                steps[-1] = ParsedStep(last.thought, last.subquery, content)
        elif tag == "answer":
            answer, final_thought = content, thought
            thought = None
    if answer is None:
        final_thought = thought
    return ParsedTranscript(steps=steps, final_thought=final_thought, answer=answer)


def extract_search(text: str) -> str | None:
    """The subquery of the last ``<search>`` block in ``text`` (None if there is none).

    Tolerates a missing ``</search>`` (the query runs to the next tag or the end) and nested
    ``<search>`` tags (the innermost wins).
    """
    found = [c for t, c in parse_blocks(strip_prompt(text)) if t == "search" and c]
    return found[-1] if found else None


def extract_answer(text: str) -> str | None:
    """The text of the last ``<answer>`` block in ``text`` (None if there is none)."""
    found = [c for t, c in parse_blocks(strip_prompt(text)) if t == "answer"]
    return found[-1] if found else None


def extract_think(text: str) -> str | None:
    """The text of the last ``<think>`` block in ``text`` (None if there is none)."""
    found = [c for t, c in parse_blocks(strip_prompt(text)) if t == "think"]
    return found[-1] if found else None


__all__ = [
    "ANSWER",
    "ANSWER_END",
    "INFORMATION",
    "INFORMATION_END",
    "SEARCH",
    "SEARCH_END",
    "SEARCH_R1_INSTRUCTION",
    "SEARCH_R1_PROMPT",
    "STOP_STRINGS",
    "TAGS",
    "THINK",
    "THINK_END",
    "ParsedStep",
    "ParsedTranscript",
    "defang",
    "extract_answer",
    "extract_search",
    "extract_think",
    "parse_blocks",
    "parse_transcript",
    "prompt_text",
    "render_doc",
    "render_final",
    "render_information",
    "render_step",
    "render_think",
    "render_transcript",
    "strip_prompt",
]
