"""Where a store searches with torch: ``"auto"``, ``"cpu"`` or a CUDA device, checked for room.

``"auto"`` picks the current CUDA device when torch sees one and the vectors fit in its memory
budget, else the CPU. A named CUDA device that lacks the room falls back to the CPU with a warning
that says how much memory the vectors need and how to make them fit.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from .torch_search import GPU_SCORE_BYTES, TorchSearch, search_dtype

logger = logging.getLogger(__name__)

GPU_MEMORY_FRACTION = 0.5  # default share of a GPU's free memory the vectors may take
UPLOAD_ROWS = 1 << 16  # rows converted on the CPU and copied to the GPU at a time

_GIB = float(1 << 30)


def requested_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch device, or None for ``"auto"`` / None.

    Raises:
        ValueError: an unknown device name, or a CUDA device on a machine without one.
    """
    if device is None or str(device) == "auto":
        return None
    return resolve_device(device)


def check_request(device: str | torch.device | None, dtype: str | torch.dtype | None) -> None:
    """Raise ValueError now for a device or dtype that placing the search would refuse."""
    requested_device(device)
    search_dtype(dtype, torch.device("cuda"))


def gpu_shortfall(nbytes: int, device: torch.device, fraction: float) -> str | None:
    """Why ``nbytes`` of vectors do not fit on ``device`` (None: they fit).

    They fit when they, plus one chunk of scores, take at most ``fraction`` of the memory that
    ``torch.cuda.mem_get_info`` reports free on the device.
    """
    free, _total = torch.cuda.mem_get_info(device)
    need = nbytes + GPU_SCORE_BYTES
    if need <= fraction * free:
        return None
    return (
        f"{need / _GIB:.2f} GiB on {device} (with one chunk of scores), more than {fraction:.0%} "
        f"of the {free / _GIB:.2f} GiB free there"
    )


def place_search(
    matrix: np.ndarray,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    *,
    memory_fraction: float = GPU_MEMORY_FRACTION,
    owner: Any = None,
    name: str = "store",
) -> TorchSearch:
    """A :class:`TorchSearch` over ``matrix`` (N, dim) on the device asked for, or on the CPU.

    Args:
        matrix: float32 vectors; shared, not copied, when the search runs on the CPU in float32.
        device: ``"auto"`` / None, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
        dtype: The vectors' dtype on a GPU (None: float16); the CPU always uses float32.
        memory_fraction: Share of the GPU's free memory the vectors may take.
        owner: The object that owns ``matrix``'s memory, kept alive with the search.
        name: What to call the store in messages.

    Raises:
        ValueError: an unknown device or dtype, or a CUDA device on a machine without one.
    """
    want = requested_device(device)
    if want is None and torch.cuda.is_available():
        want = torch.device("cuda", torch.cuda.current_device())
    if want is None or want.type != "cuda":
        return TorchSearch(matrix, device="cpu", dtype=torch.float32, owner=owner)
    if want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    gpu_dtype = search_dtype(dtype, want)
    nbytes = matrix.shape[0] * matrix.shape[1] * (torch.finfo(gpu_dtype).bits // 8)
    why = gpu_shortfall(nbytes, want, memory_fraction)
    if why is None:
        try:
            return TorchSearch(upload(matrix, want, gpu_dtype), device=want, dtype=gpu_dtype)
        except torch.cuda.OutOfMemoryError:  # (memory taken since the check)
            why = f"{nbytes / _GIB:.2f} GiB, more than {want} could allocate"
    half = " or search_dtype='float16' (half the size)" if gpu_dtype == torch.float32 else ""
    logger.warning(
        "%s: %s vectors of dim %d in %s take %s; searching on the CPU instead. To search on the "
        "GPU, free GPU memory, or pass a larger memory_fraction to store.to(%r, "
        "memory_fraction=...)%s; search_device='cpu' silences this.",
        name,
        f"{matrix.shape[0]:,}",
        matrix.shape[1],
        str(gpu_dtype).removeprefix("torch."),
        why,
        str(want),
        half,
    )
    return TorchSearch(matrix, device="cpu", dtype=torch.float32, owner=owner)


def upload(matrix: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Copy ``matrix`` (N, dim) to ``device`` in ``dtype``, a block of rows at a time, so that
    neither side holds more than one extra block."""
    out = torch.empty(matrix.shape, device=device, dtype=dtype)  # (N, dim)
    for start in range(0, matrix.shape[0], UPLOAD_ROWS):
        block = torch.from_numpy(matrix[start : start + UPLOAD_ROWS]).to(dtype)  # (r, dim)
        out[start : start + block.shape[0]].copy_(block)
    return out
