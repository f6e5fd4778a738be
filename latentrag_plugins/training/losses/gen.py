"""L_gen: cross-entropy on the action tokens and on the answer (paper §4.1, last paragraph).

At every step the LM's prediction at ``<think_m>`` is the action: ``<query_1>`` (retrieve) or
``<answer>``. After ``<answer>`` it must produce the answer tokens and ``</answer>``. Only these
positions carry labels (see :mod:`latentrag_plugins.training.sequences`).

Choice of the action loss. ``mode="full"`` (default) is the paper's "standard cross-entropy" over
the whole vocabulary: it also pushes every other token down at ``<think_m>``, so the action
token wins the unrestricted argmax too. ``mode="restricted"`` is a 2-way cross-entropy over
``{<query_1>, <answer>}`` only, exactly the decision inference makes (it compares these two
logits). Both rank the two actions the same way; "restricted" starts near log 2 instead of
log V and leaves the rest of the LM head alone. Answer tokens always use the full vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    is_action: torch.Tensor | None = None,
    action_ids: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions.

    Args:
        logits: LM-head logits at the labelled positions ``(K, V)``.
        labels: Next-token labels ``(K,)``: ``<query_1>``/``<answer>`` at action positions,
            answer tokens and ``</answer>`` elsewhere.
        is_action: ``(K,)`` bool, True at action positions (only needed with ``action_ids``).
        action_ids: ``(query_1, answer)`` ids: restrict the action CE to these two tokens
            ("restricted" mode); None for full-vocabulary CE everywhere.

    Returns:
        Scalar loss, the mean over all K positions (0 when K == 0).
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    if action_ids is None or is_action is None or not bool(is_action.any()):
        return F.cross_entropy(logits, labels)
    tok = ~is_action
    total = logits.new_zeros(())
    if bool(tok.any()):
        total = total + F.cross_entropy(logits[tok], labels[tok], reduction="sum")
    pair = torch.tensor(action_ids, device=logits.device)  # (2,)
    two = logits[is_action][:, pair]  # (A, 2)
    target = (labels[is_action] == pair[1]).long()  # (A,): 0 = retrieve, 1 = answer
    total = total + F.cross_entropy(two, target, reduction="sum")
    return total / labels.shape[0]
