"""Weights of a model dispatched by accelerate, materialised for as long as spantrace reads them.

A model loaded with ``device_map`` (or dispatched with ``accelerate.dispatch_model`` / ``cpu_offload``) keeps
the weights of its offloaded layers on the ``meta`` device: each module carries an accelerate hook
(``module._hf_hook``, an ``AlignDevicesHook`` with ``offload=True``) that loads them from the CPU copy or the
offload folder just before the module's own forward and drops them right after. spantrace also reads weights
outside those forwards (an output projection split per head, a norm's gain, an embedding row), so

- ``materialized(module)`` loads the weights of ``module`` and of every submodule, through accelerate's own hook
  (``pre_forward``), on each one's execution device, for the duration of a ``with`` block, and drops them again
  at its end (``post_forward``). While inside, the hooks' own loading is paused, so calling a submodule (``q_proj``)
  neither reloads its weights nor drops them halfway through the block. On a module without offloaded weights it
  does nothing: no hook, no copy.
- ``execution_device(module)`` is where a module's work runs: its hook's execution device, else where its
  weights are.
- ``check_weights(model)`` refuses, at load, a weight on ``meta`` that no hook will ever load, and a weight kept
  quantised in its module (bitsandbytes, FP8, packed MXFP4): both would be read as meaningless numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .errors import OffloadedWeightError, QuantizedWeightError

# Module classes that keep a weight quantised (bitsandbytes 4/8-bit, FP8 linears, packed MXFP4 experts): their
# ``weight`` is packed integers or scaled 8-bit floats, not the numbers the layer multiplies by.
QUANTISED_MODULE_WORDS = ("Linear4bit", "Linear8bitLt", "FP8Linear", "Fp8Linear", "Mxfp4", "MXFP4", "QuantLinear")
QUANTISED_DTYPES = {torch.uint8, torch.int8} | {
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
}


def _hooks(module: nn.Module) -> list[object]:
    """The accelerate hooks on ``module`` (a ``SequentialHook``'s parts, one by one)."""
    hook = module.__dict__.get("_hf_hook")  # accelerate sets it as a plain attribute; no nn.Module lookup miss
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def _offloading(module: nn.Module) -> list[object]:
    """The hooks on ``module`` that load its weights before its forward and drop them after."""
    return [hook for hook in _hooks(module) if getattr(hook, "offload", False) and hasattr(hook, "pre_forward")]


@contextlib.contextmanager
def materialized(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with every offloaded weight in it (its own and its submodules') loaded on its execution
    device while inside the block; a no-op for a module that has none."""
    hooked = [(part, hook) for part in module.modules() for hook in _offloading(part)]
    if not hooked:
        yield module
        return
    loaded: list[tuple[nn.Module, object]] = []
    try:
        for part, hook in hooked:
            hook.pre_forward(part)  # type: ignore[attr-defined]  # accelerate loads the weights here
            hook.offload = False  # type: ignore[attr-defined]  # a nested forward must not drop them
            loaded.append((part, hook))
        yield module
    finally:
        for part, hook in reversed(loaded):
            hook.offload = True  # type: ignore[attr-defined]
            hook.post_forward(part, None)  # type: ignore[attr-defined]  # back to the meta device


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module``'s work runs: its (or its first hooked submodule's) accelerate execution device, else the
    device of its first weight that is not on ``meta``; None for a module without either."""
    for part in module.modules():
        for hook in _hooks(part):
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return None


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate dispatched ``model`` (a ``device_map`` or hooks on its modules): it must not be moved."""
    if getattr(model, "hf_device_map", None):
        return True
    return any(_hooks(part) for part in model.modules())


def check_weights(model: nn.Module) -> None:
    """Refuse a model with a weight left quantised in its module, or a weight on ``meta`` that no accelerate
    hook loads; one line naming the first such weight and what to do."""
    covered: set[int] = set()
    for part in model.modules():
        for hook in _offloading(part):
            reach = part.modules() if getattr(hook, "place_submodules", False) else [part]
            covered.update(id(inner) for inner in reach)
    for name, part in model.named_modules():
        kind = type(part).__name__
        if any(word in kind for word in QUANTISED_MODULE_WORDS):
            raise QuantizedWeightError(
                f"{name or 'the model'} is a {kind}, which keeps its weight quantised; spantrace reads weights as "
                "numbers and cannot read packed ones: load the model without quantization (or dequantised) in "
                "bfloat16 or float32, and offload what does not fit with device_map= and offload_folder="
            )
        for leaf, parameter in part.named_parameters(recurse=False):
            where = f"{name}.{leaf}" if name else leaf
            if parameter.dtype in QUANTISED_DTYPES:
                raise QuantizedWeightError(
                    f"{where} is stored quantised ({str(parameter.dtype).removeprefix('torch.')}); spantrace "
                    "cannot read packed weights: load the model dequantised in bfloat16 or float32, and offload "
                    "what does not fit with device_map= and offload_folder="
                )
            if parameter.device.type == "meta" and id(part) not in covered:
                raise OffloadedWeightError(
                    f"{where} is on the meta device and no accelerate offload hook loads it (a model built "
                    "with init_empty_weights, or hooks removed?); load its weights, e.g. "
                    "spantrace.load(folder, device_map='auto', offload_folder=...), or dispatch it with "
                    "accelerate.dispatch_model / cpu_offload"
                )
