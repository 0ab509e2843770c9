"""The load-time self-check: does the adapter reproduce what each layer's attention actually added?

Attribution rests on one identity per layer and sink i:
``x_mid_i − x_in_i = Σ_{h, j} α[h, i, j] · s_i · v[h, j] + (output bias)``, with the attention rows α, the
per-source value vectors v and the post-attention norm scale s_i all recomputed by the adapter from the
captured ``x_in`` (for a hybrid's other layer kinds, gated attention, Gated DeltaNet or Mamba-2, the same
identity with their own per-source parts, ``MixingLayer.token_parts``). If an adapter misses a detail of
the architecture (a sink logit, a skipped rotary, a norm on the attention output, a residual multiplier),
the identity fails. So every model is checked once
when it is loaded: a short slice of tokens through every layer, and the worst relative error of the
reconstruction against the layer's own output. A miss beyond the tolerance of the model's dtype refuses
the model with the layer named, rather than returning scores that are not the model's. Before that, every
weight is checked to be finite (a NaN in one token's embedding row is invisible to a 16-token forward), and a
forward that goes non-finite is refused as such (``NonFiniteError``), not blamed on the adapter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .capture import Capture, capture_residuals
from .contract import ArchitectureAdapter, MixingLayer
from .errors import NonFiniteError, UnsupportedArchitectureError
from .layers.dispatch import iter_layers

SELF_CHECK_TOKENS = 16
# Worst tolerated error, relative to the largest entry of the layer's attention update x_mid − x_in.
# float32 recomputation of a float32 forward agrees to ~1e-6; half precisions round the model's own
# attention output to 8 (bf16) or 11 (fp16) bits, which the check must not mistake for a wrong adapter.
TOLERANCE_BY_DTYPE = {
    torch.float64: 1e-6,
    torch.float32: 1e-3,
    torch.float16: 1e-2,
    torch.bfloat16: 3e-2,
}


@dataclass(frozen=True)
class SelfCheck:
    """What the load-time check measured: the worst relative reconstruction error and where."""

    max_relative_error: float
    worst_layer: int
    tolerance: float
    tokens: int
    seconds: float

    def as_info(self) -> dict[str, float | int]:
        return asdict(self)


def check_tokens(vocab_size: int, length: int = SELF_CHECK_TOKENS) -> torch.Tensor:
    """A fixed pseudo-random slice of token ids ``[length]`` (the same for every load)."""
    generator = torch.Generator().manual_seed(20260202)
    return torch.randint(0, vocab_size, (length,), generator=generator)


@torch.inference_mode()
def layer_errors(adapter: ArchitectureAdapter, input_ids: torch.Tensor) -> list[float]:
    """Per layer: max |reconstructed x_mid − x_mid| / max |x_mid − x_in| over the tokens ``input_ids [N]``."""
    return capture_errors(adapter, capture_residuals(adapter, input_ids))


@torch.inference_mode()
def capture_errors(adapter: ArchitectureAdapter, capture: Capture) -> list[float]:
    """``layer_errors`` on a capture already made."""
    return [layer_error(layer) for layer in iter_layers(adapter, capture)]


@torch.inference_mode()
def layer_error(layer: MixingLayer) -> float:
    """One layer's max |Σ_{h, j} token_parts + residual − x_mid| / max |x_mid − x_in| over all its sinks."""
    length = layer.x_in.shape[0]
    positions = torch.arange(length, device=layer.x_in.device)
    rebuilt = layer.token_parts(positions, length).sum((0, 2)) + layer.residual(positions)  # [N, D]
    update = (layer.x_mid - layer.x_in).abs().max().clamp_min(1e-30)
    return float((rebuilt - layer.x_mid).abs().max() / update)


@torch.inference_mode()
def check_weights(model: torch.nn.Module) -> None:
    """Raise NonFiniteError naming the parameters that hold a NaN or an infinity (one pass over the weights).

    Weights that accelerate offloaded (on ``meta`` until their layer runs) are not read here: reading them all
    would load the whole model at once; the capture's per-layer check sees a non-finite one when its layer runs.
    """
    # A sum is non-finite when any term is (NaN or infinity), and costs no tensor of the weight's size, as
    # isfinite would (a bool per weight); a sum that merely overflowed is told apart element by element.
    flags = [
        (name, parameter, torch.isfinite(parameter.sum(dtype=torch.float32)))
        for name, parameter in model.named_parameters()
        if parameter.device.type != "meta" and parameter.is_floating_point()
    ]
    bad = [name for name, parameter, finite in flags if not bool(finite) and not bool(torch.isfinite(parameter).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"the model's weights are not finite: {len(bad)} of {len(flags)} parameter tensors hold NaN or "
            f"infinity ({shown}); the checkpoint is corrupt or was cast to a dtype too narrow: re-download it"
        )


def _checked_errors(
    adapter: ArchitectureAdapter, input_ids: torch.Tensor, model_inputs: dict | None, what: str
) -> list[float]:
    """``capture_errors`` of one forward pass, with any failure as a one-line UnsupportedArchitectureError
    (a non-finite forward keeps its own NonFiniteError: the model, not the adapter)."""
    try:
        capture = capture_residuals(adapter, input_ids, model_inputs=model_inputs)
    except NonFiniteError:  # the model's forward, not the adapter: its own line says where and what to do
        raise
    except Exception as error:
        raise UnsupportedArchitectureError(
            f"{adapter.name}: the model's own forward pass failed on the {what} "
            f"({type(error).__name__}: {error}); check that it runs in this dtype and on this device "
            "(e.g. mixture-of-experts kernels have no float64 path)."
        ) from error
    try:
        return capture_errors(adapter, capture)
    except UnsupportedArchitectureError:
        raise
    except Exception as error:
        raise UnsupportedArchitectureError(
            f"{adapter.name}: the self-check could not recompute the attention from the adapter "
            f"({type(error).__name__}: {error}); the adapter does not fit this model. "
            "Pass check=False to load it anyway (its scores would not be checked)."
        ) from error


def self_check(
    adapter: ArchitectureAdapter,
    vocab_size: int,
    dtype: torch.dtype,
    *,
    tokens: int = SELF_CHECK_TOKENS,
    model: torch.nn.Module | None = None,
) -> SelfCheck:
    """Check every weight of ``model`` (default: the adapter's base model) and every layer of ``adapter``'s model
    (a vision-language model's image path too, with a small synthetic image); raise NonFiniteError for
    non-finite weights or forward, UnsupportedArchitectureError naming the worst layer."""
    started = time.perf_counter()
    check_weights(model if model is not None else adapter.base_model())
    ids = check_tokens(vocab_size, tokens)
    errors = _checked_errors(adapter, ids, None, f"{tokens}-token load check")
    image = getattr(adapter, "synthetic_image_inputs", None)
    if image is not None:  # a vision-language model: the image path too, with a small synthetic image
        image_ids, model_inputs = image(ids)
        with_image = _checked_errors(adapter, image_ids, model_inputs, "load check with a synthetic image")
        errors = [max(a, b) if a == a and b == b else float("nan") for a, b in zip(errors, with_image, strict=True)]
    worst = max(range(len(errors)), key=lambda i: errors[i] if errors[i] == errors[i] else float("inf"))
    tolerance = TOLERANCE_BY_DTYPE.get(dtype, 3e-2)
    check = SelfCheck(
        max_relative_error=errors[worst],
        worst_layer=worst,
        tolerance=tolerance,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )
    if not errors[worst] <= tolerance:  # also refuses NaN
        raise UnsupportedArchitectureError(
            f"{adapter.name}: the adapter does not reproduce layer {worst}'s attention output "
            f"(relative error {errors[worst]:.2e}, tolerance {tolerance:.0e} for {str(dtype).removeprefix('torch.')}), "
            "so its scores would not be the model's. The model differs from what its adapter expects "
            "(a patched or unusual attention module?). Pass check=False to load it anyway, at your own risk."
        )
    return check
