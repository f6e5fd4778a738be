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


def auto_dtypes(device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """The dtypes a loaded model runs in by default (``--dtype auto``): bfloat16 on a GPU that
    supports it; on a CPU float32, with passes over many tokens (and the retriever towers) on a
    bfloat16 copy where the CPU multiplies bfloat16 natively (AMX, AVX512-BF16: ``mixed``, the
    fastest there); float32 elsewhere.

    Returns:
        ``(dtype, wide_dtype)``, as ``from_pretrained`` takes them.
    """
    if device.type == "cpu":
        from .speed.precision import MIXED_DTYPES, cpu_has_native_bf16

        if cpu_has_native_bf16():
            return MIXED_DTYPES
    return default_dtype(device), None


def tower_auto_dtype(device: torch.device) -> torch.dtype:
    """The dtype a document tower loaded alone takes by default (as it would beside its model)."""
    dtype, wide = auto_dtypes(device)
    return tower_dtype(device, wide or dtype)


def loaded_dtypes(
    device: torch.device, dtype: torch.dtype | None, wide_dtype: torch.dtype | None
) -> tuple[torch.dtype, torch.dtype | None]:
    """The dtypes of a model loaded with ``dtype`` and ``wide_dtype`` (both None:
    :func:`auto_dtypes`; only ``wide_dtype``: float32 or the device's default beside it)."""
    if dtype is None and wide_dtype is None:
        return auto_dtypes(device)
    return dtype or default_dtype(device), wide_dtype
