"""``F.linear`` on weights pre-packed for oneDNN, for bfloat16 inference on CPU.

A plain bfloat16 ``F.linear`` on CPU reorders its weight into oneDNN's blocked layout on every
call. :func:`linear` keeps each weight's packed copy and reuses it, about twice as fast for the
small products of agent inference (on a 2-core CPU with AMX: a MiniLM projection over 18 tokens
70 -> 34 µs). The result equals ``F.linear``'s up to the order of the sums: bit for bit with one
thread (tested); with several, oneDNN may split a sum differently, so the last bits can differ.
It applies only to bfloat16 on CPU without autograd, where torch was built with oneDNN;
everything else is a plain ``F.linear``. Packed copies take memory beside the weights, so they
stop at :data:`PACKED_BUDGET_BYTES` in all, first come first served across models (a warning
says so once); later weights take the plain ``F.linear``.

A copy is rebuilt when its weight is replaced or updated in place, but a write through
``weight.data`` does not show: call :func:`clear` after one (``to_device`` does).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref

import torch
import torch.nn.functional as F

PACKED_BUDGET_BYTES = 512 * 2**20  # packed copies kept in all (weight bytes), across models
_BATCH_HINT = 64  # rows oneDNN tunes the packed layout for

# id(weight) -> (weak reference to it, its data pointer and version, packed copy, bytes); an
# entry leaves with its weight. (A WeakKeyDictionary would compare tensors with ``==``.)
_PACKED: dict[int, tuple[weakref.ref, tuple[int, int], torch.Tensor, int]] = {}
_LOCK = threading.RLock()  # RLock: a weakref callback may run inside a locked section (GC)
_held = [0]  # bytes of the weights with a packed copy
log = logging.getLogger(__name__)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, immutable: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on a cached packed copy of ``weight`` where that applies.

    Args:
        x: Input ``(..., d_in)``.
        weight: Weight ``(d_out, d_in)``.
        bias: Bias ``(d_out,)`` or None.
        immutable: ``weight`` is never changed in place (a private derived tensor). Only then is
            an inference tensor packed: it has no version counter to show a change.
    """
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    if bias is not None and bias.dtype != weight.dtype:
        return F.linear(x, weight, bias)  # its own error message
    packed = _packed(weight, immutable)
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def clear() -> None:
    """Drop every packed copy (they are rebuilt on next use)."""
    with _LOCK:
        _PACKED.clear()
        _held[0] = 0


def plain_module(mod: torch.nn.Module) -> bool:
    """No forward hooks of either kind (the module's or global ones), no accelerate hook, no
    patched ``forward``, and no weights left on the meta device (offloaded)."""
    if mod._forward_hooks or mod._forward_pre_hooks:
        return False
    if torch.nn.modules.module._global_forward_hooks:
        return False
    if torch.nn.modules.module._global_forward_pre_hooks:
        return False
    if "forward" in mod.__dict__ or "_hf_hook" in mod.__dict__:
        return False
    return all(p is None or p.device.type != "meta" for p in mod._parameters.values())


def apply_linear(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mod(x)``; through :func:`linear` when ``mod`` is an exact ``nn.Linear`` (not an adapter
    such as LoRA) that :func:`plain_module` accepts."""
    if type(mod) is torch.nn.Linear and plain_module(mod):
        return linear(x, mod.weight, mod.bias)
    return mod(x)


def _packed(weight: torch.Tensor, immutable: bool) -> torch.Tensor | None:
    """The packed copy of a bfloat16 CPU ``weight`` (made on first use), or None."""
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.device.type != "cpu":
        return None
    inference = weight.is_inference()
    if (inference and not immutable) or not _available():
        return None  # an inference tensor (e.g. a model loaded in inference mode): updates unseen
    key = (weight.data_ptr(), -1 if inference else weight._version)
    wid = id(weight)
    hit = _PACKED.get(wid)
    if hit is not None and hit[0]() is weight and hit[1] == key:
        return hit[2]
    size = weight.numel() * weight.element_size()
    with _LOCK:
        hit = _PACKED.get(wid)
        if hit is not None and hit[0]() is not weight:
            hit = None  # a dead weight's id, reused before its callback ran
        if hit is None and _held[0] + size > PACKED_BUDGET_BYTES:
            _warn_budget_once()
            return None
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _BATCH_HINT)
        ref = hit[0] if hit is not None else weakref.ref(weight, functools.partial(_drop, wid))
        if hit is None:
            _held[0] += size
        _PACKED[wid] = (ref, key, packed, size)
    return packed


@functools.cache
def _warn_budget_once() -> None:
    log.warning(
        "packed bfloat16 weights reached their budget of %d MiB: the weights beyond it run on "
        "plain F.linear, which repacks them on every call (slower)",
        PACKED_BUDGET_BYTES >> 20,
    )


def _drop(wid: int, ref: weakref.ref) -> None:
    """Weakref callback: forget a collected weight's packed copy."""
    with _LOCK:
        hit = _PACKED.get(wid)
        if hit is not None and hit[0] is ref:
            del _PACKED[wid]
            _held[0] -= hit[3]


@functools.cache
def _available() -> bool:
    """Whether this torch build packs bfloat16 linear weights and gets ``F.linear``'s result
    (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(3, 40, generator=gen).to(torch.bfloat16)
            w = torch.randn(24, 40, generator=gen).to(torch.bfloat16)
            b = torch.randn(24, generator=gen).to(torch.bfloat16)
            packed = ops._reorder_linear_weight(w, _BATCH_HINT)
            got = ops._linear_pointwise(x, packed, b, "none", [], "")
            return bool(torch.equal(got, F.linear(x, w, b)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
