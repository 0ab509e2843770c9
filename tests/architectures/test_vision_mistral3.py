"""Mistral 3 image-text models (Mistral Small 3.x, Ministral 3, Magistral) traced exactly with images in.

A tiny ``mistral3`` wrapper (a Ministral 3 text stack behind a one-layer Pixtral tower, random weights, norm gains
and biases randomised) reads random tokens, one random 16 × 24-pixel image written as the Pixtral processor writes
it (2 rows of 3 ``[IMG]`` tokens, the first row ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``), more text and
a generated answer. FlashTrace (hops 0–2) and token-wise IFR must match the float64 reference
(``tests/reference.py``, the model's own attention probabilities); the methods that re-run the model must be the
wrapper's own forward with the pixels in.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from reference import assert_trace_matches, decomposition_error, reference_terms, trace
from tiny_models import IMAGE_BREAK, IMAGE_END, IMAGE_TOKEN, make_tiny_vlm, vision_inputs

import spantrace as st
from spantrace.architectures.vision import Mistral3VisionAdapter
from spantrace.errors import InputError, SpanTraceError
from spantrace.methods.registry import get_method

RTOL, ATOL = 1e-4, 1e-6


@functools.cache
def case():
    model = make_tiny_vlm("mistral3")
    # 22 tokens: the tiny Ministral 3 text stack is trained on 24 positions (its query scale grows past 6)
    ids, prompt_length, model_inputs = vision_inputs("mistral3", model, text=5, answer=4)
    terms = reference_terms(model, ids, model_inputs)
    run = st.Model(model, None).run(input_ids=ids, prompt_length=prompt_length, model_inputs=model_inputs)
    return model, ids, prompt_length, model_inputs, terms, run


def _wrapper_log_probs(model, ids: torch.Tensor, model_inputs: dict, embeds_edit=None) -> torch.Tensor:
    """[N, V] float64 log-probabilities by the wrapper's own forward with the pixels in; ``embeds_edit`` may
    replace the input embeddings the text model is called with (after the image features are merged in)."""
    hook = model.model.language_model.register_forward_pre_hook
    handle = hook(lambda m, a, k: (a, {**k, "inputs_embeds": embeds_edit(k["inputs_embeds"])}),
                  with_kwargs=True) if embeds_edit else None
    try:
        return model(input_ids=ids[None], **model_inputs).logits[0].double().log_softmax(-1)
    finally:
        if handle is not None:
            handle.remove()


def test_the_adapter_is_mistral3s_image_path() -> None:
    model, ids, _, _, _, run = case()
    assert isinstance(run.adapter, Mistral3VisionAdapter)
    assert run.adapter.input_model() is model.model
    image = ids.tolist()
    assert image.count(IMAGE_TOKEN) == 6 and image.count(IMAGE_BREAK) == 1 and image.count(IMAGE_END) == 1


def test_reference_decomposes_the_image_run() -> None:
    _, _, _, _, terms, _ = case()
    assert decomposition_error(terms) < 1e-9


@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
def test_trace_with_an_image_matches_the_float64_reference(method: str) -> None:
    _, ids, prompt_length, _, terms, run = case()
    span = (prompt_length + 1, ids.shape[0] - 1)
    scores = assert_trace_matches(run, terms, span, prompt_length, method=method, rtol=RTOL, atol=ATOL)
    assert scores[(ids == IMAGE_TOKEN).numpy()].sum() > 0  # the image's tokens are sources like any other


def test_the_capture_reads_the_image_features_the_text_stack_received() -> None:
    """Layer 0's input at the [IMG] positions is the projector's merged Pixtral features, row-major, and the image
    changed the run (not the placeholder's embedding)."""
    model, ids, _, model_inputs, _, run = case()
    with torch.no_grad():
        features = torch.cat(model.model.get_image_features(model_inputs["pixel_values"],
                                                            model_inputs["image_sizes"]).pooler_output)
    image = ids == IMAGE_TOKEN
    np.testing.assert_allclose(run.capture.x_in[0][image].float().numpy(), features.numpy(), rtol=1e-5, atol=1e-6)
    placeholder = model.get_input_embeddings()(torch.tensor(IMAGE_TOKEN)).detach()
    assert (run.capture.x_in[0][image] - placeholder).abs().max() > 1e-2


def test_the_load_check_runs_a_synthetic_image_and_fails_without_it() -> None:
    """The self-check's image pass rebuilds every layer from the synthetic image's capture; the same capture read
    with a wrong residual at the image positions does not (the check can fail)."""
    from spantrace.capture import capture_residuals
    from spantrace.selfcheck import capture_errors

    model, _, _, _, _, run = case()
    adapter = run.adapter
    ids, model_inputs = adapter.synthetic_image_inputs(torch.arange(3, 19))
    assert (ids == IMAGE_TOKEN).sum() == 4 and "image_sizes" in model_inputs
    capture = capture_residuals(adapter, ids, model_inputs=model_inputs)
    assert max(capture_errors(adapter, capture)) < 1e-4
    blind = capture_residuals(adapter, ids)  # the placeholders' embeddings instead of the image features
    assert (capture.x_in[0] - blind.x_in[0]).abs().max() > 1e-2


def test_grad_input_is_autograd_through_the_wrappers_forward() -> None:
    """grad-input = x ⊙ ∂f/∂x with x what the text model read (image features at the [IMG] positions), by autograd
    through the wrapper's own forward with the pixels in."""
    model, ids, prompt_length, model_inputs, _, run = case()
    sinks = torch.arange(prompt_length, ids.shape[0])
    leaf = {}

    def as_leaf(embeds: torch.Tensor) -> torch.Tensor:
        leaf["x"] = embeds.detach().requires_grad_(True)
        return leaf["x"]

    objective = _wrapper_log_probs(model, ids, model_inputs, as_leaf)[sinks - 1, ids[sinks]].sum()
    (gradient,) = torch.autograd.grad(objective, leaf["x"])
    want = (gradient[0] * leaf["x"][0]).detach().double().sum(-1)
    got = get_method("grad-input", aggregate="sum").score(run, sinks, torch.ones(sinks.shape[0]), chunk_size=1)
    np.testing.assert_allclose(np.asarray(got.scores, np.float64), want.numpy(), rtol=1e-4, atol=1e-6)
    assert got.scores[ids == IMAGE_TOKEN].abs().min() > 0


def test_integrated_gradients_and_occlusion_rerun_the_model_as_it_read_the_image() -> None:
    """IG's f(x) is the wrapper's log-probability of the span with the pixels in; occlusion's score of an image
    position is f − f(its embedding zeroed), both by the wrapper's forward."""
    from spantrace.methods.integrated_gradients import integrated_gradients

    model, ids, prompt_length, model_inputs, _, run = case()
    sinks = torch.arange(prompt_length, ids.shape[0])
    with torch.no_grad():
        full = float(_wrapper_log_probs(model, ids, model_inputs)[sinks - 1, ids[sinks]].sum())
    result = integrated_gradients(run, sinks, torch.ones(sinks.shape[0]), steps=2)
    assert result.objective_input == pytest.approx(full, rel=1e-4, abs=1e-4)
    image = (ids == IMAGE_TOKEN).nonzero()[:, 0]
    # one group per prompt position: each [IMG] position removed alone
    got = run.trace((prompt_length, ids.shape[0]), method="occlusion", method_options={"groups": prompt_length})
    for position in image.tolist():

        def zero(embeds: torch.Tensor, position=position) -> torch.Tensor:
            embeds = embeds.clone()
            embeds[:, position] = 0
            return embeds

        with torch.no_grad():
            removed = float(_wrapper_log_probs(model, ids, model_inputs, zero)[sinks - 1, ids[sinks]].sum())
        assert got.scores[position] == pytest.approx(full - removed, rel=1e-4, abs=1e-5)
    assert np.abs(got.scores[image.numpy()]).max() > 1e-6


def test_attnlrp_is_exact_with_the_image() -> None:
    """AttnLRP rebuilds the text stack from the merged input embeddings (positions plain, mask causal): its target
    is the wrapper's own logits with the pixels in, relevance is conserved, and the [IMG] positions hold some."""
    from spantrace.methods.attnlrp import attnlrp_relevance

    model, ids, prompt_length, model_inputs, _, run = case()
    sinks = torch.arange(prompt_length, ids.shape[0])
    with torch.no_grad():
        logits = model(input_ids=ids[None], **model_inputs).logits[0].double()
    relevance = attnlrp_relevance(run, sinks, torch.ones(sinks.shape[0]), record=True)
    assert relevance.target == pytest.approx(float(logits[sinks - 1, ids[sinks]].sum()), rel=1e-4, abs=1e-4)
    total = float(relevance.scores.double().sum()) + relevance.absorbed_by_biases + relevance.absorbed_by_softmax
    assert total == pytest.approx(relevance.target, rel=1e-3, abs=1e-3)
    assert relevance.scores[ids == IMAGE_TOKEN].abs().max() > 0


def test_every_method_runs_finite_with_the_image() -> None:
    _, ids, prompt_length, _, _, run = case()
    for method in st.list_methods():
        name = method if isinstance(method, str) else method["name"]
        options = {"steps": 4} if name == "integrated-gradients" else None
        result = run.trace((prompt_length, ids.shape[0]), method=name, method_options=options)
        assert np.isfinite(result.scores).all(), name


def test_a_wrong_image_token_count_is_refused_in_one_line() -> None:
    model, ids, prompt_length, model_inputs, _, _ = case()
    loaded = st.Model(model, None, check=False)
    fewer = ids.clone()
    fewer[(ids == IMAGE_TOKEN).nonzero()[0, 0]] = 5
    with pytest.raises(InputError, match="5 image tokens but the images give 6") as error:
        loaded.run(input_ids=fewer, prompt_length=prompt_length, model_inputs=model_inputs)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="pixel_values need image_sizes") as error:
        loaded.run(input_ids=ids, prompt_length=prompt_length,
                   model_inputs={"pixel_values": model_inputs["pixel_values"]})
    assert "\n" not in str(error.value)


def test_video_inputs_are_refused_in_one_line() -> None:
    model, ids, prompt_length, model_inputs, _, _ = case()
    loaded = st.Model(model, None, check=False)
    with pytest.raises(SpanTraceError, match="video inputs are not traced") as error:
        loaded.run(input_ids=ids, prompt_length=prompt_length,
                   model_inputs={**model_inputs, "pixel_values_videos": torch.zeros(1)})
    assert "\n" not in str(error.value)


def test_a_text_run_on_the_wrapper_is_unchanged() -> None:
    """Without images the wrapper is traced on its text stack as before: no positions kept, FlashTrace against
    the float64 reference on the ids alone."""
    model, ids, _, _, _, _ = case()
    text = ids[ids < IMAGE_TOKEN][:14]
    run = st.Model(model, None).run(input_ids=text, prompt_length=9)
    assert run.capture.position_ids is None and not run.model_inputs
    terms = reference_terms(model, text)
    got = run.trace((10, 13), hops=1)
    want = trace(terms, (10, 13), 9, method="flashtrace", hops=1)
    np.testing.assert_allclose(np.asarray(got.scores, np.float64), want.scores, rtol=RTOL, atol=ATOL)


def test_raw_image_inputs_make_one_image_source_with_its_row_broken_grid(tmp_path) -> None:
    """Token ids with raw pixel inputs: the image is ONE source from its first [IMG] to its last (the row break
    between its rows inside, as template), its grid rows × cols of [IMG] tokens row-major, summing to its score in
    by("image") whether template tokens are pooled or not; the grid round-trips through JSON."""
    _, ids, prompt_length, _, _, run = case()
    result = run.trace((prompt_length + 1, ids.shape[0] - 1))
    cells = (ids == IMAGE_TOKEN).nonzero()[:, 0].tolist()
    (row,) = result.by("image")
    assert row.tokens == (cells[0], cells[-1] + 1) and list(row.positions) == cells
    segment = result.layout.of_kind("image")[0]
    assert segment.image.row_stride == 4 and (segment.image.rows, segment.image.cols) == (2, 3)
    assert segment.image.size == (24, 16) and segment.image.cell == (8, 8)
    brk = ids.tolist().index(IMAGE_BREAK)
    assert result.layout.template[brk] and not any(result.layout.template[p] for p in cells)
    grid = result.image_map(0)
    assert grid.shape == (2, 3)
    np.testing.assert_array_equal(grid.ravel(), result.scores[cells])  # row-major, the break left out
    assert grid.sum() == pytest.approx(row.score, rel=1e-6)
    (pooled,) = result.by("image", include_template=True)
    assert pooled.score == pytest.approx(grid.sum(), rel=1e-6) and brk not in pooled.positions
    records = result.token_records()  # to_pandas's rows
    assert (records[cells[3]]["image_row"], records[cells[3]]["image_col"]) == (1, 0)
    assert records[brk]["image"] is None and records[cells[5]]["image"] == 0
    result.save(tmp_path / "raw.json")
    again = st.TraceResult.load(tmp_path / "raw.json")
    assert again.layout.of_kind("image")[0].image == segment.image
    np.testing.assert_array_equal(again.image_map(0), grid)


def test_the_picture_cells_are_the_img_tokens() -> None:
    """The views' cells (report, viewer, terminal) sit on the [IMG] positions, row-major, never on a break."""
    from spantrace.render.picture import image_views

    _, ids, prompt_length, _, _, run = case()
    result = run.trace((prompt_length + 1, ids.shape[0] - 1))
    (view,) = image_views(result)
    cells = (ids == IMAGE_TOKEN).nonzero()[:, 0].tolist()
    assert [cell.position for cell in view.cells] == cells
    assert [(cell.row, cell.col) for cell in view.cells] == [(r, c) for r in range(2) for c in range(3)]
    assert view.score == pytest.approx(result.image_map(0).sum(), rel=1e-6)


def test_a_row_stride_below_the_columns_is_refused_when_read() -> None:
    from spantrace.text.layout import ImageGrid

    grid = ImageGrid(rows=2, cols=3, size=(24, 16), input_size=(24, 16), cell=(8, 8), row_stride=4)
    assert ImageGrid.from_dict(grid.to_dict()) == grid and grid.span == 7
    assert grid.cell_offsets() == [0, 1, 2, 4, 5, 6]
    assert "row_stride" not in ImageGrid(rows=2, cols=3, size=(6, 4), input_size=(6, 4), cell=(2, 2)).to_dict()
    with pytest.raises(ValueError, match="row_stride must be at least"):
        ImageGrid.from_dict({**grid.to_dict(), "row_stride": 2})


def test_the_report_and_the_viewer_payload_draw_the_img_cells() -> None:
    """The HTML report's cells and the viewer's image payload name the [IMG] positions, never the row break."""
    from spantrace.serve.app import _images_payload

    _, ids, prompt_length, _, _, run = case()
    result = run.trace((prompt_length + 1, ids.shape[0] - 1))
    cells = (ids == IMAGE_TOKEN).nonzero()[:, 0].tolist()
    (payload,) = _images_payload(result)
    assert (payload["rows"], payload["cols"]) == (2, 3) and [c["position"] for c in payload["cells"]] == cells
    html = result.to_html()
    brk = ids.tolist().index(IMAGE_BREAK)
    assert all(f"row {p // 4}, col {p % 4} · #{cells[0] + p} ·" in html for p in (0, 1, 2, 4, 5, 6))
    assert f"· #{brk} · score" not in html


def test_a_saved_grid_whose_row_breaks_do_not_fit_its_tokens_is_refused(tmp_path) -> None:
    """Read back, an image's grid must span its tokens: without its row stride the 2 × 3 grid covers 6 of its 7."""
    import json

    _, ids, prompt_length, _, _, run = case()
    run.trace((prompt_length + 1, ids.shape[0] - 1)).save(tmp_path / "trace.json")
    data = json.loads((tmp_path / "trace.json").read_text())
    (segment,) = [s for s in data["layout"]["segments"] if s["kind"] == "image"]
    del segment["image"]["row_stride"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SpanTraceError, match="rows × cols matching its 7 tokens") as error:
        st.TraceResult.load(tmp_path / "bad.json")
    assert "\n" not in str(error.value)
