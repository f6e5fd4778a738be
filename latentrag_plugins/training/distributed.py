"""The processes a run trains on: HF Accelerate on a CPU, one GPU or several, optionally with
DeepSpeed ZeRO-1, and the checks that keep several processes from writing the same files.

Launch several processes with ``accelerate launch --multi_gpu --num_processes N -m
latentrag_plugins.cli.main train ...`` or ``torchrun --nproc_per_node N -m ...``; on CPUs set
``ACCELERATE_USE_CPU=true`` (gloo), without which Accelerate runs each process alone.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import LatentRAGError
from ..extras import require
from .config import TrainConfig


def zero1_config_path() -> Path:
    """Path of the shipped DeepSpeed ZeRO-1 config (``latentrag_plugins/training/zero1.json``)."""
    return Path(str(resources.files(__package__) / "zero1.json"))


def resolve_mixed_precision(cfg: TrainConfig) -> str:
    """``cfg.mixed_precision`` with ``"auto"`` resolved: bf16 on GPUs that support it, else no."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config of a run: the shipped ZeRO-1 file (``cfg.deepspeed == "zero1"``) or
    the user's, with the micro batch, accumulation and clipping taken from ``cfg``.

    Raises:
        LatentRAGError: The file is missing or not a JSON object.
    """
    path = zero1_config_path() if cfg.deepspeed == "zero1" else Path(str(cfg.deepspeed))
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LatentRAGError(f"{path}: not a readable DeepSpeed JSON config ({exc})") from None
    if not isinstance(ds, dict):
        raise LatentRAGError(f"{path}: a DeepSpeed config is a JSON object")
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = 1
    ds.pop("train_batch_size", None)  # DeepSpeed derives it: micro batch x processes
    ds["gradient_clipping"] = cfg.max_grad_norm or 0.0
    return ds


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``cfg`` (mixed precision, DeepSpeed), checked to see
    every launched process.

    Raises:
        ImportError: ``cfg.deepspeed`` is set and DeepSpeed is not installed.
        LatentRAGError: The launched processes do not form one group, or DeepSpeed was asked
            for and Accelerate did not turn it on.
    """
    accelerate = require("accelerate", "train", "training")
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    kwargs: dict[str, Any] = {"mixed_precision": resolve_mixed_precision(cfg)}
    if cfg.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "--deepspeed needs the `deepspeed` package: pip install deepspeed"
            ) from exc
        kwargs["deepspeed_plugin"] = accelerate.DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg))
        if not torch.cuda.is_available() and os.environ.get("LOCAL_RANK") is not None:
            # DeepSpeed's CPU accelerator: Accelerate picks no backend for it (gloo joins them)
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    acc = accelerate.Accelerator(kwargs_handlers=handlers, **kwargs)
    check_processes(acc, cfg)
    return acc


def check_processes(acc: Any, cfg: TrainConfig) -> None:
    """Refuse a run whose processes would each train alone (and write the same files), or that
    asked for DeepSpeed and runs without it."""
    from accelerate.utils import DistributedType

    launched = int(os.environ.get("WORLD_SIZE") or acc.num_processes)  # set by the launchers
    if launched != acc.num_processes:
        hint = "" if torch.cuda.is_available() else " (on CPUs, set ACCELERATE_USE_CPU=true)"
        raise LatentRAGError(
            f"{launched} processes were launched but Accelerate sees {acc.num_processes}: each "
            f"would train alone and write the same files{hint}"
        )
    if cfg.deepspeed and acc.distributed_type != DistributedType.DEEPSPEED:
        raise LatentRAGError(
            "--deepspeed was given but Accelerate runs without DeepSpeed "
            f"({acc.distributed_type}); it turns DeepSpeed off when ACCELERATE_USE_CPU is set"
        )


def is_deepspeed(acc: Any) -> bool:
    """Whether ``acc`` trains through a DeepSpeed engine."""
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def trainable_names(acc: Any, module: torch.nn.Module) -> set[str]:
    """Names of the trainable tensors of a prepared module, as in its unwrapped state dict."""
    return {n for n, p in acc.unwrap_model(module).named_parameters() if p.requires_grad}


def keep_trainable(weights: dict[str, torch.Tensor], trainable: set[str]) -> None:
    """Drop the frozen tensors from a state dict about to be checkpointed (in place); keys may
    carry DDP's ``module.`` prefix."""
    for k in [k for k in weights if k.removeprefix("module.") not in trainable]:
        del weights[k]


def save_state(acc: Any, path: Path) -> None:
    """Write the resume state (trainable weights, optimizer, RNG states) into ``path``; every
    process calls it. Frozen weights are left out (a pre-hook applies :func:`keep_trainable`
    without DeepSpeed): they come from ``--model`` again."""
    if is_deepspeed(acc):
        acc.save_state(str(path), exclude_frozen_parameters=True)
    else:
        acc.save_state(str(path))


def load_state(acc: Any, module: torch.nn.Module, path: Path, trainable: set[str]) -> None:
    """Read what :func:`save_state` wrote into the prepared ``module`` (frozen weights stay as
    loaded).

    Raises:
        LatentRAGError: The saved weights do not match the trainable tensors (another model).
    """
    if is_deepspeed(acc):
        acc.load_state(str(path), load_module_strict=False)
        return
    from safetensors.torch import load_file

    acc.load_state(str(path), strict=False)  # optimizer, RNG states
    # The weights again, by their unwrapped names: a strict=False load by the wrapper's names
    # (DDP's "module." prefix) can match nothing and say nothing.
    saved = {k.removeprefix("module."): v for k, v in load_file(path / "model.safetensors").items()}
    missing = sorted(trainable - saved.keys())
    result = acc.unwrap_model(module).load_state_dict(saved, strict=False)
    if missing or result.unexpected_keys:
        odd = missing or result.unexpected_keys
        raise LatentRAGError(
            f"{path}: the saved weights do not fit the model being trained ({len(odd)} "
            f"tensors differ, e.g. {odd[0]})"
        )
