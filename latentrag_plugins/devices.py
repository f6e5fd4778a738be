"""Where models run and in which dtype, by default."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, else :func:`default_device`.

    Raises:
        ValueError: ``device`` names no device torch knows (e.g. ``"gpu"``), or one this
            machine lacks (``"cuda"`` without a CUDA build of torch and a GPU).
    """
    if not device:
        return default_device()
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"bad device {str(device)!r}: {e}") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"bad device {str(device)!r}: CUDA is not available here (torch {torch.__version__}); "
            "install a CUDA build of torch first, or use --device cpu"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"bad device {str(device)!r}: MPS is not available here")
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def tower_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The encoder towers' dtype next to an LLM in ``dtype``: float16 stays float32 on CPU."""
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype
