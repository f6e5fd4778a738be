"""Prompt templates (paper Appendix D) as token-id builders shared by inference and training.

Trusted template text and untrusted text (questions, documents) are tokenized separately and
concatenated as ids; control tokens are inserted by id only. So no user or document text can
ever become a control token (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from .results import RetrievedDoc
from .tokens import ControlIds, encode_untrusted, special_ids

QUESTION_PROMPT = (
    "Answer the following question by reasoning step by step and retrieving necessary "
    "information at each step:"
)
THOUGHT_DECODE_PROMPT = "Decode the thought based on the latent representation:"
SUBQUERY_DECODE_PROMPT = "Decode the subquery based on the latent representation:"


class PromptBuilder:
    """Builds the token ids of every LatentRAG prompt piece for one tokenizer.

    Args:
        tokenizer: The LLM tokenizer (with LatentRAG's control tokens).
        ids: The control token ids.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ids: ControlIds) -> None:
        self.tok = tokenizer
        self.ids = ids
        self.specials = special_ids(tokenizer) | ids.all
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    @lru_cache(maxsize=64)  # noqa: B019 - a builder lives as long as its model
    def trusted(self, text: str) -> tuple[int, ...]:
        """Token ids of template text (never user input)."""
        return tuple(self.tok(text, add_special_tokens=False)["input_ids"])

    def untrusted(self, text: str) -> list[int]:
        """Token ids of user/document text; special-token strings in it stay plain text."""
        return encode_untrusted(self.tok, text, self.specials)

    def question(self, question: str) -> list[int]:
        """Prompt D.1 up to the first thought slots: instruction + question."""
        return [*self.bos, *self.trusted(QUESTION_PROMPT), *self.untrusted(" " + question.strip())]

    def think_slots(self) -> list[int]:
        """``<think_1..m>``."""
        return list(self.ids.think)

    def query_slots(self) -> list[int]:
        """``<query_1..n>``."""
        return list(self.ids.query)

    def information(
        self, docs: Sequence[RetrievedDoc], budget: int, max_doc_tokens: int
    ) -> list[int]:
        """``<information> Doc 1 (Title: t) text ... </information>`` within ``budget`` tokens.

        Each document keeps at most ``max_doc_tokens`` tokens; when the budget is tighter, every
        document is cut to an equal share, and documents that would get no room are dropped.
        """
        parts: list[tuple[list[int], list[int]]] = []
        for i, d in enumerate(docs, start=1):
            head, text = doc_entry(i, d)
            parts.append((list(self.trusted(head)), self.untrusted(text)))
        fixed = 2 + sum(len(h) for h, _ in parts)
        if not parts or budget <= fixed:
            return []
        share = min(max_doc_tokens, (budget - fixed) // len(parts))
        if share < 4:
            return []
        out = [self.ids.info]
        for head, body in parts:
            out += head + body[:share]
        out.append(self.ids.info_end)
        return out

    def decode_prompt(self, kind: str) -> list[int]:
        """Prompt D.2 (``kind="thought"``) or D.3 (``kind="subquery"``), before the latents."""
        text = THOUGHT_DECODE_PROMPT if kind == "thought" else SUBQUERY_DECODE_PROMPT
        return [*self.bos, *self.trusted(text)]


def doc_entry(i: int, doc: RetrievedDoc) -> tuple[str, str]:
    """Document ``i``'s entry in an information block, ``" Doc i (Title: t) body"``, split
    into its fixed head and the document's own text."""
    return f" Doc {i} (Title:", f" {doc.title}) {doc.body}".rstrip()
