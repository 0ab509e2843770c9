"""A vision-language model end to end: an image in a chat message, read by the model's processor, traced, and
its scores on the image, for LLaVA, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Gemma 3 and the Qwen3.5 / Qwen3.5-MoE
image-text wrappers (which ship Qwen3-VL's processor). Each processor is built offline from its
parts (a PIL image processor and the built-in tokenizer with the model's image tokens added; Qwen's without a
video processor, which needs torchvision); each model is tiny and random, its vocabulary that tokenizer's.

The engine's exactness against the float64 reference is in tests/architectures/test_vision.py (raw pixel inputs);
here the point is the path a user takes: ``messages=`` with an image part gives the same scores as the raw
``input_ids`` + ``model_inputs`` of the same tokens and pixels, and the image comes out as one source; a folder
with the model and its processor saved traces the same from the command line (``--image``, ``--messages``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from test_images_inputs import (  # the offline processors' parts
    QWEN_MARKS,
    gemma3_processor,
    qwen3_vl_processor,
    template,
)
from tiny_models import _COMMON, _QWEN_VISION, make_config, make_hybrid_vision_config, make_vision_config
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaProcessor, Qwen2_5_VLProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import spantrace
from spantrace import TraceResult
from spantrace.loading.processor import images_only

# 56 × 56 pixels in 14-pixel patches: a 4 × 4 grid; LLaVA keeps 16 image tokens (the CLS feature dropped),
# Qwen2.5-VL merges 2 × 2 patches into one token: 2 × 2 image tokens. Qwen3-VL's 16-pixel patches: the picture
# resized to 64 × 64 (a multiple of 16 × 2), 4 × 4 patches, 2 × 2 tokens. Gemma 3 pools its 4 × 4 patches into
# mm_tokens_per_image = 4 tokens: 2 × 2. Qwen3-VL-MoE and the Qwen3.5 wrappers read Qwen3-VL's processor: 2 × 2
SIDE, PATCH = 56, 14
GRIDS = {"llava": (4, 4), "qwen2_5_vl": (2, 2), "qwen3_vl": (2, 2), "gemma3": (2, 2), "qwen3_vl_moe": (2, 2),
         "qwen3_5": (2, 2), "qwen3_5_moe": (2, 2), "mistral3": (3, 3)}
# Mistral 3 (Pixtral's processor): the picture resized to 24 × 24 (longest edge), 4-pixel patches merged 2 × 2:
# 3 rows of 3 [IMG] tokens, each row followed by [IMG_BREAK] ([IMG_END] after the last)


@pytest.fixture(scope="module", params=sorted(GRIDS))
def vlm(request, tokenizer) -> spantrace.Model:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def qwen2_5_vl(tokenizer) -> spantrace.Model:
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": QWEN_MARKS})
    images = Qwen2VLImageProcessorPil(min_pixels=SIDE * SIDE, max_pixels=SIDE * SIDE, patch_size=PATCH, merge_size=2)
    processor = images_only(Qwen2_5_VLProcessor)(image_processor=images, tokenizer=own,
                                                 chat_template=template("<|vision_start|><|image_pad|><|vision_end|>"))
    text = dict(_COMMON, vocab_size=len(own),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]})
    text.pop("tie_word_embeddings")
    text.pop("head_dim")
    vision = dict(_QWEN_VISION, patch_size=PATCH, window_size=PATCH * 2, fullatt_block_indexes=[0])
    return qwen_vlm("qwen2_5_vl", processor, text, vision)


@pytest.fixture(scope="module")
def qwen3_vl(tokenizer) -> spantrace.Model:
    processor = qwen3_vl_processor(tokenizer)
    own = processor.tokenizer
    text = dict(_COMMON, vocab_size=len(own), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "mrope_section": [2, 2, 2], "mrope_interleaved": True})
    text.pop("tie_word_embeddings")
    vision = dict(_QWEN_VISION, patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0])
    return qwen_vlm("qwen3_vl", processor, text, vision)


def qwen_vlm(model_type: str, processor, text: dict, vision: dict) -> spantrace.Model:  # noqa: ANN001
    """A tiny random Qwen-VL ``model_type`` with these text and vision configs, reading ``processor``'s vision
    marks (start, end, image, video), loaded with that processor."""
    own = processor.tokenizer
    start, end, image, video = own.convert_tokens_to_ids(QWEN_MARKS)
    config = AutoConfig.for_model(model_type, text_config=text, vision_config=vision, image_token_id=image,
                                  video_token_id=video, vision_start_token_id=start, vision_end_token_id=end,
                                  tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    return spantrace.load(model, tokenizer=own, processor=processor)


def read_through(config, processor):  # noqa: ANN001, ANN201
    """A tiny Qwen3-VL-family ``config`` (from tests/tiny_models.py) made to read what ``processor`` gives: its
    tokenizer's vocabulary and vision marks, its image processor's 16-pixel patches."""
    own = processor.tokenizer
    config.text_config.vocab_size = len(own)
    config.vision_config.patch_size = processor.image_processor.patch_size
    config.vision_start_token_id, config.vision_end_token_id, config.image_token_id, config.video_token_id = (
        own.convert_tokens_to_ids(QWEN_MARKS))
    return config


def qwen3_vl_processor_model(tokenizer, config) -> spantrace.Model:  # noqa: ANN001
    """A tiny model of ``config`` behind Qwen3-VL's offline processor (the one the Qwen3.5 checkpoints ship too)."""
    processor = qwen3_vl_processor(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(read_through(config, processor), attn_implementation="sdpa")
    return spantrace.load(model.eval(), tokenizer=processor.tokenizer, processor=processor)


@pytest.fixture(scope="module")
def qwen3_vl_moe(tokenizer) -> spantrace.Model:
    return qwen3_vl_processor_model(tokenizer, make_vision_config("qwen3_vl_moe"))


@pytest.fixture(scope="module")
def qwen3_5(tokenizer) -> spantrace.Model:
    return qwen3_vl_processor_model(tokenizer, make_hybrid_vision_config("qwen3_5"))


@pytest.fixture(scope="module")
def qwen3_5_moe(tokenizer) -> spantrace.Model:
    return qwen3_vl_processor_model(tokenizer, make_hybrid_vision_config("qwen3_5_moe"))


@pytest.fixture(scope="module")
def gemma3(tokenizer, tmp_path_factory) -> spantrace.Model:
    processor = gemma3_processor(tokenizer, tmp_path_factory.mktemp("gemma3-tokenizer"))
    own = processor.tokenizer
    text = make_config("gemma3_text", vocab_size=len(own)).to_dict()
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=SIDE,
                  patch_size=PATCH)
    config = AutoConfig.for_model("gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  image_token_index=own.image_token_id, boi_token_index=own.boi_token_id,
                                  eoi_token_index=own.eoi_token_id)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # the projector starts at zero: every image would read as the same features
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape) * 0.3)
    return spantrace.load(model, tokenizer=own, processor=processor)


@pytest.fixture(scope="module")
def llava(tokenizer) -> spantrace.Model:
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    processor = LlavaProcessor(image_processor=images, tokenizer=own, chat_template=template("<image>"),
                               patch_size=PATCH,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1)
    vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=SIDE, patch_size=PATCH)
    config = AutoConfig.for_model(
        "llava", text_config=make_config("llama", vocab_size=len(own)).to_dict(), vision_config=vision,
        image_token_index=own.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    return spantrace.load(model, tokenizer=own, processor=processor)


def pixtral_processor(tokenizer):  # noqa: ANN001, ANN201
    """Pixtral's processor (Mistral 3's) built offline: its PIL image processor (longest edge 24, 8-pixel tokens)
    and the built-in tokenizer with the three image tokens added. transformers' processor module imports the
    torchvision image processor's module for one function, which its PIL module has too: that module is stood in
    for by one holding the PIL function (torchvision is not installed here)."""
    import sys
    import types

    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.image_processing_pixtral"
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].get_resize_output_image_size = pil.get_resize_output_image_size
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]})
    images = pil.PixtralImageProcessorPil(size={"longest_edge": 24}, patch_size={"height": 8, "width": 8})
    return PixtralProcessor(image_processor=images, tokenizer=own, patch_size=4, spatial_merge_size=2,
                            chat_template=template("[IMG]"))


@pytest.fixture(scope="module")
def mistral3(tokenizer) -> spantrace.Model:
    """A Mistral Small 3.x-shaped wrapper (a Mistral text stack, no sliding window) behind a one-layer Pixtral tower."""
    processor = pixtral_processor(tokenizer)
    own = processor.tokenizer
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, patch_size=4, image_size=64)
    config = AutoConfig.for_model("mistral3", text_config=make_config("mistral", vocab_size=len(own),
                                                                      sliding_window=None).to_dict(),
                                  vision_config=vision, image_token_index=own.convert_tokens_to_ids("[IMG]"),
                                  spatial_merge_size=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    return spantrace.load(model, tokenizer=own, processor=processor)


def picture() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_an_image_in_a_message_is_traced_as_one_source(vlm: spantrace.Model, tmp_path) -> None:
    messages = [{"role": "user", "content": [{"type": "image", "image": picture()},
                                             {"type": "text", "text": "What colour is it?"}]}]
    prepared = vlm.prepare(messages=messages, output="Grey, mostly.")
    run = vlm.run(prepared=prepared)
    result = run.trace("answer", hops=1)
    images = result.by("image")
    assert len(images) == 1
    row = images[0]
    start, end = row.tokens
    rows, cols = GRIDS[vlm.adapter.name] if vlm.adapter.name in GRIDS else GRIDS[vlm.hf_model.config.model_type]
    # the image's cells: its tokens, or (Mistral 3) its [IMG] tokens with a row break after each row of them
    cells = [start + offset for offset in result.layout.of_kind("image")[0].image.cell_offsets()]
    assert len(cells) == rows * cols and cells[-1] == end - 1 and list(row.positions) == cells
    image_token = vlm.hf_model.config.image_token_id
    assert all(result.token_ids[p] == image_token for p in cells)
    assert (end - start == rows * cols) == (vlm.hf_model.config.model_type != "mistral3")
    grid = result.image_map(0)
    assert grid.shape == (rows, cols)
    np.testing.assert_allclose(grid.ravel(), result.scores[cells], rtol=0, atol=0)  # row-major
    np.testing.assert_allclose(grid.sum(), row.score, rtol=1e-5)
    assert np.abs(result.scores[cells]).sum() > 0  # the image carries score: it is read, not masked
    # the same tokens and pixels given raw give the same scores: the processor path adds nothing of its own
    ids = prepared.ids + prepared.output_ids
    raw = vlm.run(input_ids=ids, prompt_length=len(prepared.ids), model_inputs=prepared.model_inputs)
    raw_result = raw.trace((len(prepared.ids), len(ids)), hops=1)
    # ...and the same image source: its tokens and its grid, found from the raw inputs without the processor
    assert [r.tokens for r in raw_result.by("image")] == [row.tokens]
    assert raw_result.image_map(0).shape == grid.shape
    np.testing.assert_allclose(raw_result.scores, result.scores,
                               rtol=1e-6, atol=1e-9)
    # without the pixels the image positions read other features: the scores differ (the pixels reach the model)
    changed = dict(prepared.model_inputs, pixel_values=prepared.model_inputs["pixel_values"].flip(-1))
    other = vlm.run(input_ids=ids, prompt_length=len(prepared.ids), model_inputs=changed)
    assert not np.allclose(other.trace((len(prepared.ids), len(ids)), hops=1).scores, result.scores)
    if vlm.hf_model.config.model_type == "gemma3":
        # the processor's token_type_ids (1 on the image tokens) reach the capture: the image block is two-way;
        # with them zeroed every row is causal, and the scores differ
        types = prepared.model_inputs["token_type_ids"]
        assert types[0, start:end].all() and int(types.sum()) == end - start
        causal = dict(prepared.model_inputs, token_type_ids=torch.zeros_like(types))
        one_way = vlm.run(input_ids=ids, prompt_length=len(prepared.ids), model_inputs=causal)
        assert not np.allclose(one_way.trace((len(prepared.ids), len(ids)), hops=1).scores, result.scores)
    # the image layout round-trips through JSON
    saved = tmp_path / "trace.json"
    result.save(saved)
    again = TraceResult.load(saved)
    np.testing.assert_array_equal(again.image_map(0), grid)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "qwen3_vl", "gemma3", "qwen3_5", "mistral3"])
def test_a_saved_vlm_folder_traces_an_image_from_the_command_line(request, name: str, tmp_path, monkeypatch) -> None:
    import transformers
    from typer.testing import CliRunner

    from spantrace.cli import app

    vlm = request.getfixturevalue(name)
    if name == "mistral3":  # without torchvision transformers offers a stand-in for Pixtral's processor: the real one
        monkeypatch.setattr(transformers, "PixtralProcessor", type(vlm.processor))
    folder = tmp_path / f"tiny-{name}"
    vlm.hf_model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)  # Qwen's without a video processor: load() must still find it
    picture().save(tmp_path / "pic.png")
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, ["trace", "--model", str(folder), "--image", str(tmp_path / "pic.png"),
                                      "--prompt", "What is in the picture?", "--output", "A grey square.",
                                      "--by", "image", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = TraceResult.load(out)
    (image,) = saved.by("image")
    rows, cols = GRIDS[name]
    assert len(image.positions) == rows * cols and saved.image_map(0).shape == (rows, cols)
    image_token = vlm.hf_model.config.image_token_id
    assert all(saved.token_ids[p] == image_token for p in image.positions)
    assert f"image 0 ({SIDE}×{SIDE})" in result.output
    # the same trace through the API, from the model in memory: the folder's model and processor are the same
    content = [{"type": "image", "image": picture()}, {"type": "text", "text": "What is in the picture?"}]
    prepared = vlm.prepare(messages=[{"role": "user", "content": content}], output="A grey square.")
    assert saved.token_ids == prepared.ids + prepared.output_ids
    api = vlm.run(prepared=prepared).trace("answer")
    np.testing.assert_allclose(saved.scores, api.scores, rtol=1e-5, atol=1e-7)


def test_a_messages_file_with_an_image_part_traces_it_from_the_command_line(qwen3_vl: spantrace.Model,
                                                                           tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from spantrace.cli import app

    folder = tmp_path / "tiny-qwen3-vl"
    qwen3_vl.hf_model.save_pretrained(folder)
    qwen3_vl.processor.save_pretrained(folder)
    chat = tmp_path / "chat"
    chat.mkdir()
    picture().save(chat / "pic.png")
    messages = [{"role": "user", "content": [{"type": "image", "image": "pic.png"},  # relative to the file
                                             {"type": "text", "text": "What is in the picture?"}]},
                {"role": "assistant", "content": "A grey square."}]
    (chat / "chat.json").write_text(json.dumps(messages))
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, ["trace", "--model", str(folder), "--messages", str(chat / "chat.json"),
                                      "--by", "image", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = TraceResult.load(out)
    (image,) = saved.by("image")
    assert image.tokens[1] - image.tokens[0] == 4 and saved.image_map(0).shape == (2, 2)
    assert saved.layout.of_kind("image")[0].image.size == (SIDE, SIDE)


def test_a_saved_qwen3_5_wrapper_loads_with_its_vision_tower(tmp_path) -> None:
    """A Qwen3.5 image-text folder has a causal-LM class too (its text stack alone): load() takes the image-text
    class, so the vision tower and the processor come with it; a Llama 4 wrapper, which no adapter takes whole,
    still loads as its text stack, and a text-only Qwen3.5 folder as a causal LM."""
    from transformers import AutoModelForCausalLM

    from spantrace.loading.hub import auto_class

    configs = {"qwen3_5": make_hybrid_vision_config("qwen3_5"), "qwen3_5_moe": make_hybrid_vision_config("qwen3_5_moe"),
               "qwen3_vl_moe": make_vision_config("qwen3_vl_moe"), "llama4": make_config("llama4"),
               "qwen3_5_text": make_hybrid_vision_config("qwen3_5").text_config}
    expected = {"qwen3_5": AutoModelForImageTextToText, "qwen3_5_moe": AutoModelForImageTextToText,
                "qwen3_vl_moe": AutoModelForImageTextToText, "llama4": AutoModelForCausalLM,
                "qwen3_5_text": AutoModelForCausalLM}
    for name, config in configs.items():
        config.save_pretrained(tmp_path / name)  # the config is all auto_class reads
        assert auto_class(tmp_path / name) is expected[name], name


def test_a_qwen3_5_conversation_with_an_image_is_generated_as_transformers_generates_it(qwen3_5) -> None:
    """``run(messages=...)`` without an output generates with the pixels in: the same greedy tokens as the model's
    own ``generate`` on what its processor gives for the same conversation, and the image is a source of them."""
    messages = [{"role": "user", "content": [{"type": "image", "image": picture()},
                                             {"type": "text", "text": "What is in the picture?"}]}]
    run = qwen3_5.run(messages=messages, max_new_tokens=6, progress=False)
    inputs = qwen3_5.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt")
    with torch.no_grad():
        want = qwen3_5.hf_model.generate(**inputs, max_new_tokens=6, do_sample=False, temperature=None, top_p=None,
                                         top_k=None)[0].tolist()
    assert run.token_ids == want and len(want) > inputs["input_ids"].shape[1]  # without the pixels: other tokens
    (row,) = run.trace("answer", hops=1).by("image")
    assert np.isfinite(row.score) and row.score != 0


def test_the_readme_names_the_model_types_traced_here_with_images() -> None:
    """The README's list of the model types that take images is the list this file traces end to end."""
    import re
    from pathlib import Path

    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").split())
    listed = readme.split("The model types that take images are ", 1)[1].split(";", 1)[0]
    names = set(re.findall(r"`(\w+)`", listed))
    assert names == set(GRIDS) and names <= set(spantrace.supported_architectures())
