"""Explicit SFT: train a plain causal LM as a Search-R1-protocol agent on the same trajectories.

Each trajectory is rendered as the :class:`~latentrag_plugins.baselines.explicit.ExplicitAgent`
sees it at inference (``baselines.search_r1`` layout, the agent's own token pieces)::

    prompt(question)                                                  no loss
    <think> thought </think>\\n<search> subquery </search>            loss (model-generated)
    \\n\\n<information>Doc 1(Title: t) text ...</information>\\n\\n   no loss (the environment's)
    ...
    <think> final thought </think>\\n<answer> answer </answer>        loss

The loss is the mean next-token cross-entropy over the generated spans only. Documents are cut
with the agent's own budget rule. The result is an explicit agent checkpoint
(``ExplicitAgent.from_pretrained(OUT)``); LoRA weights are merged before saving.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..baselines.explicit import EXPLICIT_ENTRIES
from ..errors import LatentRAGError
from ..extras import require
from .config import TrainConfig
from .forward import llm_parts
from .prepared import MANIFEST, PreparedData
from .task import Task, skip_report
from .trainable import enable_checkpointing, set_llm_dropout, trainable_to_float32
from .trajectories import Trajectory, read_trajectories

log = logging.getLogger(__name__)


@dataclass
class ExplicitExample:
    """A rendered trajectory: token ids and the positions whose next token is supervised."""

    input_ids: list[int]
    label_pos: list[int]

    @property
    def length(self) -> int:
        """Sequence length in tokens."""
        return len(self.input_ids)


def render_example(agent: Any, traj: Trajectory, max_length: int) -> ExplicitExample:
    """Token ids of ``traj`` as the explicit agent would read and write it.

    Raises:
        ValueError: ``"too many steps"`` (more searches than ``max_turns``) or ``"too long"``.
    """
    from ..baselines import search_r1 as sr1

    cfg = agent.config
    if len(traj.steps) > cfg.max_turns:
        raise ValueError("too many steps")
    t, u = agent.trusted, agent.untrusted
    reserve = cfg.max_answer_tokens + 8
    ids = list(agent.prompt_ids(traj.question))
    labels: list[int] = []

    def generated(pieces: list[list[int]]) -> None:
        for piece in pieces:
            labels.extend(range(len(ids) - 1, len(ids) - 1 + len(piece)))
            ids.extend(piece)

    for step in traj.steps:
        generated([
            list(t(sr1.THINK)), u(" " + step.thought.strip()),
            list(t(f" {sr1.THINK_END}\n{sr1.SEARCH}")), u(" " + step.subquery.strip()),
            list(t(f" {sr1.SEARCH_END}")),
        ])  # fmt: skip
        budget = cfg.max_context_tokens - len(ids) - cfg.max_turn_tokens - reserve
        docs = [d.as_retrieved() for d in step.documents]
        ids.extend(agent.information_ids(docs, budget))
    generated([
        list(t(sr1.THINK)), u(" " + traj.final_thought.strip()),
        list(t(f" {sr1.THINK_END}\n")), list(t(sr1.ANSWER)), u(" " + traj.answer.strip()),
        list(t(f" {sr1.ANSWER_END}")),
    ])  # fmt: skip
    if len(ids) > min(max_length, cfg.max_context_tokens):
        raise ValueError("too long")
    return ExplicitExample(ids, labels)


class ExplicitLossModule(nn.Module):
    """Causal-LM cross-entropy on the generated spans of rendered transcripts."""

    def __init__(self, agent: Any) -> None:
        super().__init__()
        self.llm = agent.llm
        self.agent = agent

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss": mean CE}`` for ``input_ids (B, L)`` and flat ``label_index (K,)``."""
        _, decoder, head = llm_parts(self.llm)
        ids = batch["input_ids"]  # (B, L), right-padded: padding is never attended
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # (B, L, d)
        logits = head(hidden.flatten(0, 1)[batch["label_index"]]).float()  # (K, V)
        return {"loss": F.cross_entropy(logits, batch["labels"])}


def _trajectories(data: Any) -> list[Trajectory]:
    if isinstance(data, PreparedData):
        return data.trajectories
    p = Path(data)
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise LatentRAGError(f"{p}: not a prepared-data directory")
        return read_trajectories(p / "trajectories.jsonl")
    return read_trajectories(p)


def _load_agent(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from ..baselines.explicit import ExplicitAgent, is_explicit_checkpoint

    if isinstance(model, ExplicitAgent):
        return model.to_device(device, dtype)
    if not is_explicit_checkpoint(model):
        raise LatentRAGError(
            f"{model}: not an explicit agent checkpoint (no explicit_config.json); --mode "
            "explicit trains an ExplicitAgent"
        )
    return ExplicitAgent.from_pretrained(model, device=device, dtype=dtype)


def export_agent(agent: Any, dest: Path) -> str:
    """Save ``agent`` into directory ``dest`` (LoRA merged), ``explicit_config.json`` last."""
    dest.mkdir(parents=True, exist_ok=True)
    llm = agent.llm
    if hasattr(llm, "merge_and_unload"):
        agent.llm = copy.deepcopy(llm).merge_and_unload()
    agent.llm.config.use_cache = True
    tmp = dest / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        agent.save_pretrained(tmp)
    finally:
        agent.llm = llm
    for name in EXPLICIT_ENTRIES:
        p = dest / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "explicit_config.json"):
        entry.rename(dest / entry.name)
    tmp.rmdir()
    return "explicit"


def explicit_task(
    model_src: Any,
    data_src: Any | str | os.PathLike[str],
    cfg: TrainConfig,
    device: torch.device,
    show_progress: bool = True,
    *,
    llm_dtype: torch.dtype = torch.float32,
) -> Task:
    """Build the explicit SFT task (agent set up for training in ``llm_dtype``, transcripts
    rendered)."""
    agent = _load_agent(model_src, device, llm_dtype)
    trajs = _trajectories(data_src)
    agent.llm.requires_grad_(False)
    if cfg.full_finetune:
        agent.llm.requires_grad_(True)
    else:
        peft = require("peft", "train", "LoRA training")
        agent.llm = peft.get_peft_model(
            agent.llm,
            peft.LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.llm_dropout,
                target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
            ),
        )  # fmt: skip
    trainable_to_float32(agent.llm)
    set_llm_dropout(agent.llm, cfg.llm_dropout)
    if cfg.gradient_checkpointing:
        enable_checkpointing(agent.llm)
    agent.llm.config.use_cache = False
    examples, skipped = [], Counter()
    for traj in trajs:
        try:
            examples.append(render_example(agent, traj, cfg.max_length))
        except ValueError as exc:
            skipped[str(exc)] += 1
    if skipped:
        log.warning("trajectories: %s", skip_report(skipped))
    if not examples:
        raise LatentRAGError(f"no trajectory fits the agent ({skip_report(skipped)})")
    pad = agent.pad_id

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        chunk = [examples[i] for i in idx]
        width = max(e.length for e in chunk)
        ids = torch.tensor([e.input_ids + [pad] * (width - e.length) for e in chunk])
        flat = [b * width + p for b, e in enumerate(chunk) for p in e.label_pos]
        labels = [e.input_ids[p + 1] for e in chunk for p in e.label_pos]
        return {"input_ids": ids, "label_index": torch.tensor(flat), "labels": torch.tensor(labels)}

    def finish() -> None:
        agent.llm.config.use_cache = True
        agent.llm.eval()

    trainable = sum(p.numel() for p in agent.llm.parameters() if p.requires_grad)
    return Task(
        module=ExplicitLossModule(agent),
        lengths=[e.length for e in examples],
        make_batch=make_batch,
        export=lambda mod, dest: export_agent(mod.agent, dest),
        loss_names=["loss"],
        info={
            "examples": len(examples),
            "skipped": dict(skipped),
            "trainable_parameters": trainable,
        },
        finish=finish,
    )
