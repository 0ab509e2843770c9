"""Value checks of the baseline methods on one model of each family of adapter, against the model itself.

``tests/test_methods_architectures.py`` runs every method on every architecture and checks only that it runs;
here each method's values are recomputed in the test from the Hugging Face model, with nothing from spantrace:

- ``attention-last`` / ``attention-mean`` / ``rollout``: the eager attention probabilities the model returns with
  ``output_attentions=True`` (a hybrid returns them for its softmax-attention layers only, which is what the
  methods read), head-averaged, summed over the sinks, averaged over layers or rolled out as documented;
- ``grad-input``: autograd of the model's own span log-probability with respect to ``inputs_embeds``;
- ``occlusion`` with one position per group: the drop in the span log-probability measured by running the model
  on the sequence with that position replaced by the pad token;
- a signed method (``grad-input``, ``aggregate="sum"``) through ``trace`` with a hop: hop 1's sinks weighted by the
  positive part of hop 0's autograd scores on the generation, normalised;
- a method that has no exact rule for a family refuses it in one line (AttnLRP here; the gradient methods'
  refusal of Gemma 4, whose per-layer input embeddings are a second token channel, is in
  ``tests/test_methods_architectures.py``).

One model per family: Llama-shaped (``llama``, and a MoE: ``qwen3_moe``), GPT-2, post-norm OLMo 2, Gemma 3,
Llama 4, DeepSeek MLA, a Qwen hybrid (Gated DeltaNet) and a Mamba-2 hybrid (Bamba).
"""

from __future__ import annotations

import copy
import functools
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, random_ids
from torch import nn

import spantrace
from spantrace.methods.attnlrp import SUPPORTED_ARCHITECTURES as ATTNLRP_ARCHITECTURES
from spantrace.methods.registry import get_method

FAMILIES = ("llama", "qwen3_moe", "gpt2", "olmo2", "gemma3_text", "llama4_text", "deepseek_v3", "qwen3_5_text",
            "bamba")
PROMPT_LENGTH = 8
NUM_TOKENS = 16
SPAN = (11, 15)
SINKS = torch.arange(*SPAN)
WEIGHTS = torch.tensor([1.0, 0.5, 2.0, 1.5])  # uneven, as hop k ≥ 1 passes them
RTOL, ATOL = 1e-4, 1e-6


def _layer_tests(name: str):  # noqa: ANN202 - a test module
    """The hybrids' tiny models live with their layer tests (tests/layers), imported as top-level modules."""
    folder = str(Path(__file__).resolve().parents[1] / "layers")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@functools.cache
def hf_model(family: str) -> nn.Module:
    """The family's tiny random model, float32 (the hybrids' from their layer tests, every detail randomised)."""
    if family == "qwen3_5_text":
        return _layer_tests("test_deltanet").tiny(family)
    if family == "bamba":
        return _layer_tests("test_mamba2").tiny(family)
    return make_tiny_model(family, attn_implementation="eager")


def ids() -> torch.Tensor:
    return random_ids(NUM_TOKENS, seed=5)


@functools.cache
def run_of(family: str) -> spantrace.Run:
    return spantrace.load(hf_model(family)).run(input_ids=ids(), prompt_length=PROMPT_LENGTH)


@functools.cache
def eager_attentions(family: str) -> list[torch.Tensor]:
    """The model's own attention probabilities with ``output_attentions=True`` on an eager copy: [H, N, N] float64
    per softmax-attention layer."""
    model = copy.deepcopy(hf_model(family))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(ids()[None], output_attentions=True, use_cache=False).attentions
    return [a[0].double() for a in attentions]


def span_log_prob(model: nn.Module, weights: torch.Tensor, sinks: torch.Tensor, *,
                  input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_i w_i log p(t_i | t_<i)`` of the original tokens at ``sinks``, from the model's full logits (float64)."""
    if input_ids is not None:
        logits = model(input_ids[None], use_cache=False).logits[0]
    else:
        logits = model(inputs_embeds=inputs_embeds, use_cache=False).logits[0]
    log_probs = torch.log_softmax(logits.double(), -1)  # [N, V]
    return (weights.double() * log_probs[sinks - 1, ids()[sinks]]).sum()


def autograd_grad_input(model: nn.Module, sinks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x ⊙ ∂f/∂x`` on the model's own input embeddings, f = the span log-prob: [N, D] float64."""
    embeddings = model.get_input_embeddings()(ids())[None].detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(span_log_prob(model, weights, sinks, inputs_embeds=embeddings), embeddings)
    return (gradient[0] * embeddings[0]).detach().double()


def head_mean_rows(attention: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i · mean_h α[h, i, :]`` over the sinks: [N] float64."""
    return WEIGHTS.double() @ attention.mean(0)[SINKS]


# --- attention baselines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_baselines_equal_the_models_own_attention(family: str) -> None:
    run, attentions = run_of(family), eager_attentions(family)
    head_mean = head_mean_rows(attentions[-1])[: SPAN[0]]
    # the rows differ between sources by far more than the tolerance: a wrong row would not pass for a right one
    assert head_mean.max() - head_mean.min() > 100 * (RTOL * head_mean.max() + ATOL)
    last = get_method("attention-last").score(run, SINKS, WEIGHTS, chunk_size=3).scores.double()
    torch.testing.assert_close(last, head_mean_rows(attentions[-1]), rtol=RTOL, atol=ATOL)
    mean = get_method("attention-mean").score(run, SINKS, WEIGHTS, chunk_size=3).scores.double()
    torch.testing.assert_close(mean, torch.stack([head_mean_rows(a) for a in attentions]).mean(0),
                               rtol=RTOL, atol=ATOL)
    # rollout: the sink vector times Ã_{L−1} ⋯ Ã_0, Ã = normalise_rows(0.5 · mean_h α + 0.5 · I)
    eye = torch.eye(NUM_TOKENS, dtype=torch.float64)
    product = eye
    for attention in attentions:
        mixed = 0.5 * attention.mean(0) + 0.5 * eye
        product = (mixed / mixed.sum(-1, keepdim=True)) @ product
    rolled = get_method("rollout").score(run, SINKS, WEIGHTS, chunk_size=3).scores.double()
    torch.testing.assert_close(rolled, WEIGHTS.double() @ product[SINKS], rtol=RTOL, atol=ATOL)


# --- gradient × input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_input_equals_autograd_on_the_embeddings(family: str) -> None:
    run = run_of(family)
    product = autograd_grad_input(hf_model(family), SINKS, WEIGHTS)  # [N, D]
    for aggregate, expected in (("l2", product.norm(dim=-1)), ("sum", product.sum(-1))):
        scores = get_method("grad-input", aggregate=aggregate).score(run, SINKS, WEIGHTS, chunk_size=4).scores
        torch.testing.assert_close(scores.double(), expected, rtol=RTOL, atol=ATOL, msg=f"{family} {aggregate}")


# --- occlusion ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_occlusion_equals_the_measured_drop(family: str) -> None:
    model = hf_model(family)
    pad = model.config.get_text_config().pad_token_id
    with torch.no_grad():
        original = span_log_prob(model, WEIGHTS, SINKS, input_ids=ids())
        drops = []
        for position in range(PROMPT_LENGTH):
            occluded = ids().clone()
            occluded[position] = pad
            drops.append(float(original - span_log_prob(model, WEIGHTS, SINKS, input_ids=occluded)))
    expected = torch.zeros(NUM_TOKENS, dtype=torch.float64)
    expected[:PROMPT_LENGTH] = torch.tensor(drops, dtype=torch.float64)
    method = get_method("occlusion", groups=PROMPT_LENGTH)  # one prompt position per group
    scores = method.score(run_of(family), SINKS, WEIGHTS, chunk_size=4).scores.double()
    torch.testing.assert_close(scores, expected, rtol=RTOL, atol=1e-5)
    assert len(set(np.round(drops, 6))) == PROMPT_LENGTH  # every position moves the span differently


# --- a signed method's hops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "bamba"])
def test_signed_hop_weights_are_the_positive_part_on_a_real_model(family: str) -> None:
    """grad-input (sum) with one hop over the generation G = [P, b): hop 1 is autograd of G's log-prob with
    weights ``max(0, s⁰_g) / Σ_G max(0, s⁰)``, and ρ_0 the positive share of G in s⁰."""
    model = hf_model(family)
    span_sinks = torch.arange(*SPAN)
    s0 = autograd_grad_input(model, span_sinks, torch.ones(len(span_sinks))).sum(-1)  # [N]
    region = torch.arange(PROMPT_LENGTH, SPAN[1])
    positive = s0.clamp_min(0.0)
    assert (s0[region] < 0).any() and (s0[region] > 0).any()  # the clamp has something to do
    weights = positive[region] / positive[region].sum()
    s1 = autograd_grad_input(model, region, weights).sum(-1)
    rho0 = float(positive[region].sum() / positive.sum())
    result = run_of(family).trace(SPAN, method="grad-input", hops=1, recursive="generation",
                                  method_options={"aggregate": "sum"})
    np.testing.assert_allclose(result.hop_scores[0], s0.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.hop_scores[1], s1.numpy(), rtol=RTOL, atol=ATOL)
    assert result.rho[0] == pytest.approx(rho0, rel=1e-5)
    observed = torch.zeros(NUM_TOKENS, dtype=torch.float64)
    observed[:PROMPT_LENGTH] = 1.0
    np.testing.assert_allclose(result.scores, (observed * (s0 + rho0 * s1)).numpy(), rtol=RTOL, atol=ATOL)


# --- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ATTNLRP_ARCHITECTURES])
def test_attnlrp_refuses_the_families_it_has_no_rules_for_in_one_line(family: str) -> None:
    with pytest.raises(spantrace.UnsupportedArchitectureError, match="attnlrp supports .* Use another method") as error:
        run_of(family).trace(SPAN, method="attnlrp", hops=0)
    assert "\n" not in str(error.value)
