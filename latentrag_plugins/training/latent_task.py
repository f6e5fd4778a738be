"""The LatentRAG training task: teacher-forced trajectories, the three losses, model export."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import collate
from .checkpoint import export_model
from .config import TrainConfig
from .forward import LatentLossModule
from .prepared import PreparedData, PreparedDataError
from .sequences import SequenceSkipped, TrainExample, build_example
from .task import Task, skip_report
from .trainable import setup_trainable

if TYPE_CHECKING:
    from ..model import LatentRAG

log = logging.getLogger(__name__)

LOSS_NAMES = [
    "loss", "loss_gen", "loss_ret", "loss_first", "loss_dec", "loss_dec_thought",
    "loss_dec_subquery",
]  # fmt: skip


def load_model(
    model: LatentRAG | str | os.PathLike[str],
    device: torch.device,
    llm_dtype: torch.dtype = torch.float32,
) -> LatentRAG:
    """Load a checkpoint or move a given model to ``device`` for training: the LLM in
    ``llm_dtype``, the parts that train (projectors, query tower) in float32.

    With a half-precision ``llm_dtype`` the projectors and towers pass through it on the way
    (rounded once, as GPU inference runs them); the frozen document tower stays there.
    """
    from ..model import LatentRAG

    if isinstance(model, LatentRAG):
        model.to_device(device, llm_dtype)
    else:
        model = LatentRAG.from_pretrained(model, device=device, dtype=llm_dtype)
    for part in (model.proj_ret, model.proj_think, model.proj_query, model.query_tower):
        if part is not None:
            part.to(torch.float32)
    return model


def load_data(data: PreparedData | str | os.PathLike[str], encoder_id: str) -> PreparedData:
    """Load prepared data (checked against the model's document tower)."""
    if isinstance(data, PreparedData):
        if data.encoder_id != encoder_id:
            raise PreparedDataError(
                f"prepared with encoder {data.encoder_id!r}, but the model's document tower is "
                f"{encoder_id!r}"
            )
        return data
    return PreparedData.load(data, encoder_id=encoder_id)


def build_examples(
    model: LatentRAG, data: PreparedData, max_length: int, show_progress: bool = False
) -> tuple[list[TrainExample], Counter]:
    """Lay out every trajectory; returns the examples and why others were skipped."""
    offsets = data.query_offsets.tolist()
    examples, skipped = [], Counter()
    for i, traj in enumerate(
        tqdm(data.trajectories, desc="tokenizing", unit="traj", disable=not show_progress)
    ):
        try:
            examples.append(
                build_example(model, traj, index=i, first_row=offsets[i], max_length=max_length)
            )
        except SequenceSkipped as exc:
            skipped[exc.reason] += 1
    return examples, skipped


def latent_task(
    model_src: LatentRAG | str | os.PathLike[str],
    data_src: PreparedData | str | os.PathLike[str],
    cfg: TrainConfig,
    device: torch.device,
    show_progress: bool = True,
    *,
    llm_dtype: torch.dtype = torch.float32,
) -> Task:
    """Build the LatentRAG training task (model set up for training, examples tokenized; the
    LLM's weights in ``llm_dtype``, see :func:`.trainable.llm_weight_dtype`)."""
    model = load_model(model_src, device, llm_dtype)
    data = load_data(data_src, model.encoder_id)
    beta = cfg.beta or data.beta
    counts = setup_trainable(model, cfg)
    examples, skipped = build_examples(model, data, cfg.max_length, show_progress)
    if skipped:
        log.warning("trajectories: %s", skip_report(skipped))
    if not examples:
        raise PreparedDataError(
            f"no trajectory fits the model ({skip_report(skipped)}); raise max_steps or "
            "max_context_tokens of the model, or max_length"
        )
    module = LatentLossModule(
        model,
        beta=beta,
        ret_loss=cfg.ret_loss,
        lambda_ret=cfg.lambda_ret,
        lambda_first=cfg.lambda_first,
        decoding_loss=cfg.decoding_loss,
        action_loss=cfg.action_loss,
    )
    pad = model.ids.pad

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        return collate([examples[i] for i in idx], data, pad, n_positives=cfg.infonce_positives)

    def export(mod: nn.Module, dest: Path) -> str:
        return export_model(mod.model, dest, merged=cfg.save_merged)

    def finish() -> None:
        model.llm.config.use_cache = True
        model.eval()

    return Task(
        module=module,
        lengths=[e.length for e in examples],
        make_batch=make_batch,
        export=export,
        loss_names=LOSS_NAMES,
        info={
            "examples": len(examples),
            "skipped": dict(skipped),
            "subqueries": sum(len(e.query_rows) for e in examples),
            "beta": beta,
            "trainable_parameters": counts,
            "encoder_id": model.encoder_id,
        },
        finish=finish,
    )
