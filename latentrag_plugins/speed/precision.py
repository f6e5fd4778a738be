"""Mixed precision for inference: an optional twin of the LLM in another dtype for wide passes.

``--dtype mixed`` keeps the LLM in float32 and adds a bfloat16 twin; the encoder towers run in
bfloat16. :class:`BatchedContext` runs passes that feed many tokens (retrieved documents, latent
slots) on the twin and token-by-token passes on the float32 LLM: on CPUs with native bfloat16
(AMX, AVX512-BF16) the first are several times faster in bfloat16 and the second slower.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import PreTrainedModel

from . import packed_linear

MIXED = "mixed"  # the --dtype choice
MIXED_DTYPES = (torch.float32, torch.bfloat16)  # (LLM, wide twin) under --dtype mixed


class WideTwin:
    """Mixin for holders of an ``llm``: ``wide_llm``, its twin for wide passes (or None)."""

    llm: PreTrainedModel
    _wide: tuple[PreTrainedModel, ...] = ()

    @property
    def wide_llm(self) -> PreTrainedModel | None:
        """The LLM's copy in the wide-pass dtype, or None when every pass runs on ``llm``."""
        return self._wide[0] if self._wide else None

    def _set_wide_twin(self, dtype: torch.dtype, wide_dtype: torch.dtype | None) -> None:
        """Copy ``llm`` into ``wide_dtype`` (no twin when it is None or equals ``dtype``). The
        twin is a snapshot: call ``to_device`` again after changing the LLM's weights (which
        also drops the packed bfloat16 weights, for writes through ``.data``)."""
        packed_linear.clear()
        if wide_dtype is None or wide_dtype == dtype:
            self._wide = ()
            return
        twin = copy.deepcopy(self.llm).to(dtype=wide_dtype)
        twin.eval()
        self._wide = (twin,)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively: AMX tiles (Intel Sapphire Rapids and
    later) or AVX512-BF16 (e.g. AMD Zen 4), where bfloat16 products of many tokens run much
    faster than float32 ones. (Without either, oneDNN emulates bfloat16, which is slower.)"""
    try:  # torch's own probe (private); it also asks the kernel for AMX state, as matmuls do
        if torch._C._cpu._init_amx():
            return True
    except (AttributeError, RuntimeError):  # a torch without the probe, or a failed init
        pass
    return "avx512_bf16" in _cpu_flags()


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def precision_name(holder: Any) -> str:
    """The LLM's dtype, e.g. ``"float32"``, or ``"float32+bfloat16"`` with a wide twin."""
    name = str(next(holder.llm.parameters()).dtype).removeprefix("torch.")
    wide = getattr(holder, "wide_llm", None)
    if wide is not None:
        name += "+" + str(next(wide.parameters()).dtype).removeprefix("torch.")
    return name
