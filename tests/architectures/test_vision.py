"""Vision-language models traced exactly with images given as raw model inputs (no processor, no hub).

Each tiny image-text model (text and vision configs tiny, random weights) reads random tokens, one random image
(its markers and image tokens) and a generated answer. The library's FlashTrace (hops 0–2) and token-wise IFR
must match the float64 reference (``tests/reference.py``), which reads the model's own attention probabilities
and so knows nothing of M-RoPE positions or bidirectional image blocks; image positions are scored like any
other. Every registered method runs finite or refuses in one line; the methods that re-run the model do so as it
read the image (its own log-probability with the pixels in).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from reference import assert_trace_matches, decomposition_error, reference_terms
from tiny_models import IMAGE_TOKEN, VISION_ARCHITECTURES, make_tiny_vlm, vision_inputs

import spantrace as st
from spantrace.architectures.vision import image_blocks
from spantrace.errors import SpanTraceError
from spantrace.methods.registry import get_method

RTOL, ATOL = 1e-4, 1e-6


@functools.cache
def case(arch: str):
    model = make_tiny_vlm(arch)
    ids, prompt_length, model_inputs = vision_inputs(arch, model)
    terms = reference_terms(model, ids, model_inputs)
    run = st.Model(model, None).run(input_ids=ids, prompt_length=prompt_length, model_inputs=model_inputs)
    return model, ids, prompt_length, model_inputs, terms, run


@pytest.mark.parametrize("arch", VISION_ARCHITECTURES)
def test_reference_decomposes_the_image_run(arch: str) -> None:
    _, _, _, _, terms, _ = case(arch)
    assert decomposition_error(terms) < 1e-9


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
@pytest.mark.parametrize("arch", VISION_ARCHITECTURES)
def test_trace_with_an_image_matches_the_float64_reference(arch: str, method: str) -> None:
    _, ids, prompt_length, _, terms, run = case(arch)
    span = (prompt_length + 1, ids.shape[0] - 1)
    scores = assert_trace_matches(run, terms, span, prompt_length, method=method, rtol=RTOL, atol=ATOL, what=arch)
    (start, end), = image_blocks(ids, run.model.hf_model.config)
    assert scores[start:end].sum() > 0  # the image's tokens are sources like any other


@pytest.mark.parametrize("arch", [a for a in VISION_ARCHITECTURES if a.startswith("qwen")])
def test_qwen_positions_are_the_models_m_rope_ones(arch: str) -> None:
    """The capture keeps the 3-D positions the model used: an image token's rows (h, w) differ from its text
    position, and a run whose positions are replaced by 0…N−1 no longer reproduces the model."""
    _, ids, _, _, _, run = case(arch)
    positions = run.capture.position_ids
    assert positions is not None and positions.shape[0] == 3
    (start, end), = image_blocks(ids, run.model.hf_model.config)
    assert not torch.equal(positions[1, 0, start:end], positions[2, 0, start:end])
    from spantrace.selfcheck import capture_errors

    assert max(capture_errors(run.adapter, run.capture)) < 1e-4
    plain = type(run.capture)(**{**run.capture.__dict__, "position_ids": None})
    assert max(capture_errors(run.adapter, plain)) > 1e-2


def test_gemma3_image_block_is_bidirectional() -> None:
    """Gemma 3's image tokens see the later tokens of their own image: the blocks come from token_type_ids, and
    without them the rows of the image tokens no longer rebuild the layer."""
    _, ids, _, _, terms, run = case("gemma3")
    (start, end), = image_blocks(ids, run.model.hf_model.config)
    assert run.capture.bidirectional_blocks == ((start, end),)
    assert np.abs(terms[0].contrib[:, start, start + 1 : end]).max() > 0  # the model's own rows look ahead
    from spantrace.selfcheck import capture_errors

    assert max(capture_errors(run.adapter, run.capture)) < 1e-4
    causal = type(run.capture)(**{**run.capture.__dict__, "bidirectional_blocks": ()})
    assert max(capture_errors(run.adapter, causal)) > 1e-2


@pytest.mark.parametrize("arch", VISION_ARCHITECTURES)
def test_every_method_runs_finite_or_refuses(arch: str) -> None:
    _, ids, prompt_length, _, _, run = case(arch)
    span = (prompt_length, ids.shape[0])
    refused = []
    for method in st.list_methods():
        name = method if isinstance(method, str) else method["name"]
        options = {"steps": 4} if name == "integrated-gradients" else None
        try:
            result = run.trace(span, method=name, method_options=options)
        except SpanTraceError as error:
            assert "\n" not in str(error), name
            refused.append(name)
            continue
        assert np.isfinite(result.scores).all(), name
    # AttnLRP has rules for a few text architectures only; the methods that re-run the model run on every VLM here
    # (Qwen3-VL's deepstack features added again: the tests below)
    assert set(refused) == {"attnlrp"}


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "gemma3", "llava"])
def test_methods_rerun_the_model_as_it_read_the_image(arch: str) -> None:
    """Integrated gradients' f(x) and occlusion's unoccluded row, computed from the merged input embeddings with
    the captured positions / token types, are the model's own log-probability of the span with the pixels in."""
    from spantrace.methods.integrated_gradients import integrated_gradients

    model, ids, prompt_length, model_inputs, _, run = case(arch)
    with torch.no_grad():
        logits = model(input_ids=ids[None], **model_inputs).logits[0].double().log_softmax(-1)
    span = torch.arange(prompt_length, ids.shape[0])
    want = float(logits[span - 1, ids[span]].sum())
    result = integrated_gradients(run, span, torch.ones(span.shape[0]), steps=2)
    assert abs(result.objective_input - want) < 1e-3 * max(1.0, abs(want))
    assert abs(result.objective_baseline - want) > 1e-2  # the baseline differs: the check can fail
    occlusion = run.trace((prompt_length, ids.shape[0]), method="occlusion", method_options={"groups": 3})
    (start, end), = image_blocks(ids, model.config)
    assert np.isfinite(occlusion.scores).all() and occlusion.scores[start:end].any()


def test_image_blocks_are_the_runs_of_the_image_token() -> None:
    config = make_tiny_vlm("qwen2_5_vl").config
    ids = [5, 91, IMAGE_TOKEN, IMAGE_TOKEN, 92, 7, 91, IMAGE_TOKEN, 92, IMAGE_TOKEN]
    assert image_blocks(ids, config) == [(2, 4), (7, 8), (9, 10)]
    assert image_blocks(torch.tensor([ids]), config) == [(2, 4), (7, 8), (9, 10)]
    assert image_blocks([5, 6], config) == []


def test_model_inputs_on_a_text_model_are_refused_in_one_line() -> None:
    from tiny_models import make_tiny_model, random_ids

    model = st.Model(make_tiny_model("llama"), None)
    with pytest.raises(SpanTraceError, match="takes no model_inputs") as error:
        model.run(input_ids=random_ids(8), prompt_length=4, model_inputs={"pixel_values": torch.zeros(1)})
    assert "\n" not in str(error.value)


def test_video_inputs_are_refused_in_one_line() -> None:
    model, ids, prompt_length, model_inputs, _, _ = case("qwen2_5_vl")
    loaded = st.Model(model, None, check=False)
    with pytest.raises(SpanTraceError, match="video inputs are not traced"):
        loaded.run(input_ids=ids, prompt_length=prompt_length,
                   model_inputs={**model_inputs, "pixel_values_videos": torch.zeros(1)})


def test_image_token_count_must_match_the_images() -> None:
    model, ids, prompt_length, model_inputs, _, _ = case("qwen2_5_vl")
    loaded = st.Model(model, None, check=False)
    fewer = ids.clone()
    fewer[fewer == IMAGE_TOKEN] = 5
    with pytest.raises(SpanTraceError, match="image tokens"):
        loaded.run(input_ids=fewer, prompt_length=prompt_length, model_inputs=model_inputs)


def test_generation_reads_the_images() -> None:
    """``Model.generate`` passes the model inputs to the model's own generation: its first token is the argmax of
    the forward pass with the pixels in."""
    model, ids, prompt_length, model_inputs, _, run = case("qwen2_5_vl")
    prompt = ids[:prompt_length]
    new = run.model.generate(prompt.tolist(), max_new_tokens=2, progress=False, model_inputs={
        **model_inputs, "mm_token_type_ids": model_inputs["mm_token_type_ids"][:, :prompt_length]})
    with torch.no_grad():
        logits = model(input_ids=prompt[None], **{**model_inputs, "mm_token_type_ids":
                                                   model_inputs["mm_token_type_ids"][:, :prompt_length]}).logits
        blind = model(input_ids=prompt[None]).logits
    assert new[0] == int(logits[0, -1].argmax())
    assert int(blind[0, -1].argmax()) != new[0] or not torch.allclose(blind, logits)  # the image mattered


def test_generation_that_goes_non_finite_with_images_names_the_layer() -> None:
    """A NaN planted in layer 1 after loading: generation with the image stops with NonFiniteError naming layer 1,
    found by one forward pass over what it read, the pixels included (not blamed on the output head)."""
    from tiny_models import make_tiny_vlm, vision_inputs

    model = make_tiny_vlm("qwen2_5_vl")
    ids, prompt_length, model_inputs = vision_inputs("qwen2_5_vl", model)
    loaded = st.Model(model, None)
    with torch.no_grad():
        loaded.adapter.layer(1).mlp.down_proj.weight[0, 0] = float("nan")
    prompt = {**model_inputs, "mm_token_type_ids": model_inputs["mm_token_type_ids"][:, :prompt_length]}
    with pytest.raises(st.NonFiniteError, match="layer 1") as error:
        loaded.generate(ids[:prompt_length].tolist(), max_new_tokens=2, progress=False, model_inputs=prompt)
    assert "output head" not in str(error.value) and "\n" not in str(error.value)


# Qwen3-VL's deepstack: the methods that re-run the text stack add the captured deepstack features again. The
# references below run the wrapper's own forward with the pixels in (vision tower, deepstack, M-RoPE positions all
# computed by the model) and edit only what the text model is called with, through a pre-hook on it.
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")


def _wrapper_objective(model, ids, model_inputs, sinks, edit=None) -> torch.Tensor:
    """``Σ log p(ids[s] | ids[<s])`` over ``sinks`` (float64) by the wrapper's forward with the pixels in; ``edit``
    may change the text model's keyword arguments (``inputs_embeds``, ``deepstack_visual_embeds``) first."""
    hook = model.model.language_model.register_forward_pre_hook
    handle = hook(lambda m, a, k: (a, edit(dict(k))), with_kwargs=True) if edit else None
    try:
        logits = model(input_ids=ids[None], **model_inputs).logits[0].double().log_softmax(-1)
    finally:
        if handle is not None:
            handle.remove()
    return logits[sinks - 1, ids[sinks]].sum()


@functools.cache
def eos_case(arch: str):
    """A Qwen3-VL run whose neutral token is EOS (the tiny pad row is all zeros: a degenerate IG baseline). The MoE
    routes every token to all its experts: top-k routing switches experts along IG's path, and the jumps are
    outside any integral of gradients (completeness fails by them on text too)."""
    model = make_tiny_vlm(arch)
    model.config.text_config.pad_token_id = None
    for module in model.modules():
        if hasattr(module, "top_k") and hasattr(module, "num_experts"):
            module.top_k = module.num_experts
    ids, prompt_length, model_inputs = vision_inputs(arch, model)
    run = st.Model(model, None).run(input_ids=ids, prompt_length=prompt_length, model_inputs=model_inputs)
    return model, ids, prompt_length, model_inputs, run


@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_capture_keeps_the_deepstack_features_of_the_image_positions(arch: str) -> None:
    _, ids, _, _, _, run = case(arch)
    mask, features = run.capture.deepstack
    assert torch.equal(mask, ids == IMAGE_TOKEN)
    assert len(features) == 1 and features[0].shape == (6, 48) and features[0].abs().max() > 0


@pytest.mark.parametrize("aggregate", ["sum", "l2"])
@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_grad_input_is_autograd_through_the_wrappers_forward(arch: str, aggregate: str) -> None:
    """grad-input on Qwen3-VL = x ⊙ ∂f/∂x with x what the text model read (image features at image positions),
    by autograd through the wrapper's own forward with the pixels in: the deepstack features are constants there."""
    model, ids, prompt_length, model_inputs, _, run = case(arch)
    sinks = torch.arange(prompt_length, ids.shape[0])
    leaf = {}

    def as_leaf(kwargs):
        leaf["x"] = kwargs["inputs_embeds"].detach().requires_grad_(True)
        return {**kwargs, "inputs_embeds": leaf["x"]}

    (gradient,) = torch.autograd.grad(_wrapper_objective(model, ids, model_inputs, sinks, as_leaf), leaf["x"])
    product = (gradient[0] * leaf["x"][0]).detach().double()  # [N, D]
    want = product.sum(-1) if aggregate == "sum" else product.norm(dim=-1)
    got = get_method("grad-input", aggregate=aggregate).score(run, sinks, torch.ones(sinks.shape[0]), chunk_size=1)
    np.testing.assert_allclose(np.asarray(got.scores, np.float64), want.numpy(), rtol=1e-4, atol=1e-6)
    assert got.scores[ids == IMAGE_TOKEN].abs().min() > 0
    assert not model.model.language_model._forward_pre_hooks  # the replay's hook is gone


@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_occlusion_removes_the_image_feature_and_its_deepstack_features(arch: str) -> None:
    """Each group's score is f − f(group removed), f by the wrapper's forward with the pixels in, in which the group's
    text positions hold the neutral token's embedding and its image positions the zero vector and no deepstack
    feature; five groups cut the image in three, batches of two rows. EOS is the neutral token: its embedding is
    not the zero vector (the tiny pad row is)."""
    from spantrace.methods.objective import neutral_token_id

    model, ids, prompt_length, model_inputs, run = eos_case(arch)
    sinks = torch.arange(prompt_length, ids.shape[0])
    image = (ids == IMAGE_TOKEN).nonzero()[:, 0]  # the order of the deepstack rows
    neutral = model.get_input_embeddings()(torch.tensor(neutral_token_id(run))).detach()
    assert neutral.abs().max() > 0
    with torch.no_grad():
        full = float(_wrapper_objective(model, ids, model_inputs, sinks))
    got = run.trace((prompt_length, ids.shape[0]), method="occlusion", method_options={"groups": 5, "batch_size": 2})
    for group in torch.tensor_split(torch.arange(prompt_length), 5):

        def remove(kwargs, group=group):
            embeds, present = kwargs["inputs_embeds"].clone(), ~torch.isin(image, group)
            embeds[0, group] = torch.where(torch.isin(group, image)[:, None], torch.zeros_like(neutral), neutral)
            stacked = [f * present[:, None] for f in kwargs["deepstack_visual_embeds"]]
            return {**kwargs, "inputs_embeds": embeds, "deepstack_visual_embeds": stacked}

        with torch.no_grad():
            want = full - float(_wrapper_objective(model, ids, model_inputs, sinks, remove))
        np.testing.assert_allclose(got.scores[group.numpy()], want, rtol=1e-4, atol=1e-5, err_msg=str(group.tolist()))
    assert np.all(got.scores[prompt_length:] == 0)


@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_integrated_gradients_is_complete_from_no_image_at_all(arch: str) -> None:
    """IG's path scales the embeddings and the deepstack features together: f(x) is the wrapper's own with the
    pixels in, f(x′) has the neutral token everywhere and no deepstack feature, and the scores add up to the
    difference (completeness, 64 trapezoid steps)."""
    from spantrace.methods.integrated_gradients import integrated_gradients
    from spantrace.methods.objective import neutral_token_id

    model, ids, prompt_length, model_inputs, run = eos_case(arch)
    sinks = torch.arange(prompt_length, ids.shape[0])
    neutral = model.get_input_embeddings()(torch.tensor(neutral_token_id(run))).detach()
    assert neutral_token_id(run) == 2 and neutral.abs().max() > 0  # EOS: a baseline away from RMSNorm's zero

    def nothing(kwargs):
        embeds = neutral.expand_as(kwargs["inputs_embeds"])
        stacked = [torch.zeros_like(f) for f in kwargs["deepstack_visual_embeds"]]
        return {**kwargs, "inputs_embeds": embeds, "deepstack_visual_embeds": stacked}

    with torch.no_grad():
        want_input = float(_wrapper_objective(model, ids, model_inputs, sinks))
        want_baseline = float(_wrapper_objective(model, ids, model_inputs, sinks, nothing))
    result = integrated_gradients(run, sinks, torch.ones(sinks.shape[0]), steps=64, batch_size=24)
    assert result.objective_input == pytest.approx(want_input, rel=1e-5, abs=1e-5)
    assert result.objective_baseline == pytest.approx(want_baseline, rel=1e-5, abs=1e-5)
    assert abs(want_input - want_baseline) > 0.01  # the check below means something
    assert float(result.scores.sum()) == pytest.approx(want_input - want_baseline, rel=0.01)
    assert torch.isfinite(result.scores).all() and torch.all(result.scores[ids.shape[0] - 1 :] == 0)


@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_integrated_gradients_is_the_slow_path_integral(arch: str) -> None:
    """Each position's IG score (8 trapezoid steps) equals the same integral by autograd through the wrapper's
    forward with the pixels in, the text model called at each point a with ``x′ + a (x − x′)`` and ``a · d_k``: an
    image position gets its embedding's part and its deepstack features' part."""
    from spantrace.methods.integrated_gradients import integrated_gradients, trapezoid
    from spantrace.methods.objective import neutral_token_id

    model, ids, prompt_length, model_inputs, run = eos_case(arch)
    sinks = torch.arange(prompt_length, ids.shape[0])
    neutral = model.get_input_embeddings()(torch.tensor(neutral_token_id(run))).detach()
    want = torch.zeros(ids.shape[0], dtype=torch.float64)
    for point, weight in zip(*trapezoid(8), strict=True):
        kept = {}

        def along(kwargs, point=point, kept=kept):
            x, d = kwargs["inputs_embeds"].detach(), [f.detach() for f in kwargs["deepstack_visual_embeds"]]
            kept["x"], kept["d"] = x - neutral, d
            kept["path"] = (neutral + point * (x - neutral)).requires_grad_(True)
            kept["e"] = [(point * f).requires_grad_(True) for f in d]
            return {**kwargs, "inputs_embeds": kept["path"], "deepstack_visual_embeds": kept["e"]}

        value = _wrapper_objective(model, ids, model_inputs, sinks, along)
        gradients = torch.autograd.grad(value, [kept["path"], *kept["e"]])
        want += float(weight) * (gradients[0] * kept["x"])[0].sum(-1).double()
        for feature, gradient in zip(kept["d"], gradients[1:], strict=True):  # [n, D]: the image positions in order
            want[ids == IMAGE_TOKEN] += float(weight) * (gradient * feature).sum(-1).double()
    result = integrated_gradients(run, sinks, torch.ones(sinks.shape[0]), steps=8, batch_size=4)
    np.testing.assert_allclose(np.asarray(result.scores, np.float64), want.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("arch", QWEN3)
def test_qwen3_text_only_run_is_unchanged(arch: str) -> None:
    """A Qwen3-VL run without images keeps no deepstack features, leaves no hook behind, and its re-running methods
    are the wrapper's own forward on the ids (grad-input by autograd, occlusion by the neutral token's ids)."""
    from spantrace.methods.objective import neutral_token_id

    model, ids, prompt_length, _, _, _ = case(arch)
    text = ids[ids < IMAGE_TOKEN][:14]
    run = st.Model(model, None).run(input_ids=text, prompt_length=9)
    assert run.capture.deepstack is None and run.capture.position_ids is None
    sinks = torch.arange(9, 14)
    leaf = model.get_input_embeddings()(text)[None].detach().requires_grad_(True)
    logits = model(inputs_embeds=leaf).logits[0].double().log_softmax(-1)
    (gradient,) = torch.autograd.grad(logits[sinks - 1, text[sinks]].sum(), leaf)
    got = get_method("grad-input", aggregate="sum").score(run, sinks, torch.ones(5), chunk_size=1)
    np.testing.assert_allclose(got.scores, (gradient[0] * leaf[0]).sum(-1).detach().numpy(), rtol=1e-4, atol=1e-6)
    got = run.trace((9, 14), method="occlusion", method_options={"groups": 3})
    with torch.no_grad():
        def f(ids):
            return float(model(input_ids=ids[None]).logits[0].double().log_softmax(-1)[sinks - 1, text[sinks]].sum())

        for group in torch.tensor_split(torch.arange(9), 3):
            occluded = text.clone()
            occluded[group] = neutral_token_id(run)
            np.testing.assert_allclose(got.scores[group.numpy()], f(text) - f(occluded), rtol=1e-4, atol=1e-5)
    assert not model.model.language_model._forward_pre_hooks  # nothing left hooked


def test_images_on_a_wrapper_traced_on_its_text_only_are_refused_as_such() -> None:
    """Gemma 4's image-text wrapper is traced on its text stack: pixels are refused in one line that says so,
    not as if it were a text-only model."""
    from tiny_models import make_tiny_model, random_ids

    model = st.Model(make_tiny_model("gemma4"), None)
    with pytest.raises(SpanTraceError, match="traces gemma4 on its text only") as error:
        model.run(input_ids=random_ids(8), prompt_length=4, model_inputs={"pixel_values": torch.zeros(1)})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", VISION_ARCHITECTURES)
def test_raw_image_inputs_make_one_image_source_with_its_grid(arch: str, tmp_path) -> None:
    """Token ids with raw pixel inputs (no processor): each image is still an ``"image"`` source with its token
    range and grid (from ``image_grid_thw`` and the merge size, or a square), its tokens sources, not template."""
    model, ids, prompt_length, model_inputs, _, run = case(arch)
    result = run.trace((prompt_length + 1, ids.shape[0] - 1))
    (block,) = image_blocks(ids, model.config)
    (row,) = result.by("image")
    assert row.tokens == block
    grid = result.image_map(0)
    assert grid.size == block[1] - block[0]
    if "image_grid_thw" in model_inputs:  # Qwen: the merged grid, h / merge rows by w / merge columns
        _, height, width = model_inputs["image_grid_thw"][0].tolist()
        merge = model.config.vision_config.spatial_merge_size
        assert grid.shape == (height // merge, width // merge)
    np.testing.assert_allclose(grid.ravel(), result.scores[block[0]:block[1]], rtol=0, atol=0)
    assert not any(result.layout.template[block[0]:block[1]])
    result.save(tmp_path / "raw.json")
    np.testing.assert_array_equal(st.TraceResult.load(tmp_path / "raw.json").image_map(0), grid)


@pytest.mark.parametrize("arch", VISION_ARCHITECTURES)
def test_deletion_curves_read_the_image_and_remove_it_as_occlusion_does(arch: str) -> None:
    """The evaluation's curves on a run with images: nothing removed is the wrapper's own log-probability of the
    generation with the pixels in (they once re-ran the ids alone), and removing the image's tokens gives each of
    them the zero vector (and Qwen3-VL no deepstack features), as occlusion does."""
    from spantrace.eval.curves import deletion_curve, top_k_drop

    model, ids, prompt_length, model_inputs, _, run = case(arch)
    sinks = torch.arange(prompt_length, ids.shape[0])
    (start, end), = image_blocks(ids, model.config)
    scores = np.zeros(prompt_length)
    scores[start:end] = 1.0  # the image ranked first
    with torch.no_grad():
        full = _wrapper_objective(model, ids, model_inputs, sinks)

        def no_image(kwargs: dict) -> dict:
            embeds = kwargs["inputs_embeds"].clone()
            embeds[:, start:end] = 0
            if kwargs.get("deepstack_visual_embeds") is not None:
                kwargs["deepstack_visual_embeds"] = [torch.zeros_like(f) for f in kwargs["deepstack_visual_embeds"]]
            return {**kwargs, "inputs_embeds": embeds}

        removed = _wrapper_objective(model, ids, model_inputs, sinks, edit=no_image)
    curve = deletion_curve(run, scores, steps=2)
    np.testing.assert_allclose(curve.values[0], float(full), rtol=1e-5, atol=1e-5)
    drop = top_k_drop(run, scores, end - start)
    np.testing.assert_allclose(drop, float(full - removed), rtol=1e-4, atol=1e-4)
    assert abs(drop) > 1e-6  # the image mattered to the generation
