"""A question's prompt, checked against the model's context budget."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import LatentRAG


def question_prompt(model: LatentRAG, question: str) -> list[int]:
    """The token ids of ``question``'s prompt.

    Raises:
        ValueError: The prompt leaves no room for the latent slots and the answer within the
            model's ``max_context_tokens``.
    """
    cfg = model.config
    ids = model.prompts.question(question)
    need = len(ids) + cfg.n_think + cfg.n_query + cfg.max_answer_tokens + 2
    if need > cfg.max_context_tokens:
        raise ValueError(
            f"question is too long: it needs {need} tokens with the slots, over the "
            f"max_context_tokens budget of {cfg.max_context_tokens}: {question[:60]!r}..."
        )
    return ids
