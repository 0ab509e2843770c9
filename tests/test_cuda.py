"""The same numbers on a GPU: every method and both curves on CUDA against the CPU, per architecture.

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
TF32 is switched off so both devices do true float32 matrix products; what is left is summation order.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

import spantrace
from spantrace.errors import UnsupportedArchitectureError
from spantrace.eval.curves import deletion_curve, insertion_curve
from spantrace.methods.registry import list_methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPT_LENGTH = 9
NUM_TOKENS = 24
SPAN = (17, 22)


@pytest.fixture(autouse=True)
def _true_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@functools.cache
def _runs(arch: str) -> tuple[spantrace.Run, spantrace.Run]:
    ids = random_ids(NUM_TOKENS, seed=3)
    cpu = spantrace.load(make_tiny_model(arch)).run(input_ids=ids, prompt_length=PROMPT_LENGTH)
    gpu = spantrace.load(make_tiny_model(arch).to("cuda")).run(input_ids=ids, prompt_length=PROMPT_LENGTH)
    assert gpu.model.device.type == "cuda"
    return cpu, gpu


def _close(gpu: np.ndarray, cpu: np.ndarray, what: str) -> None:
    # Relative to the largest score, plus an absolute floor: occlusion's scores are differences of summed
    # log-probs, where float32 rounding of the sums (≈ 1e-6) shows however small the difference is.
    scale = float(np.abs(cpu).max())
    error = float(np.abs(gpu - cpu).max())
    assert np.all(np.isfinite(gpu)), what
    assert error <= 2e-4 * scale + 2e-5, f"{what}: max |Δ| {error:.3g} of {scale:.3g}"


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_method_gives_the_cpu_scores_on_cuda(arch, method):
    cpu, gpu = _runs(arch)
    options = {"steps": 16} if method == "integrated-gradients" else None
    try:
        expected = cpu.trace(SPAN, method=method, hops=1, method_options=options)
    except UnsupportedArchitectureError:  # e.g. attnlrp outside the Llama family: the same refusal on a GPU
        with pytest.raises(UnsupportedArchitectureError):
            gpu.trace(SPAN, method=method, hops=1, method_options=options)
        return
    got = gpu.trace(SPAN, method=method, hops=1, method_options=options)
    _close(got.scores, expected.scores, f"{arch}/{method} scores")
    for hop, (g, c) in enumerate(zip(got.hop_scores, expected.hop_scores, strict=True)):
        _close(g, c, f"{arch}/{method} hop {hop}")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_deletion_and_insertion_curves_on_cuda(arch):
    cpu, gpu = _runs(arch)
    scores = np.linspace(1.0, 0.0, PROMPT_LENGTH)
    positions = np.arange(1, PROMPT_LENGTH)
    for curve in (deletion_curve, insertion_curve):
        expected = curve(cpu, scores, positions=positions, steps=4)
        got = curve(gpu, scores, positions=positions, steps=4)
        np.testing.assert_allclose(got.values, expected.values, rtol=1e-4, atol=1e-3)
