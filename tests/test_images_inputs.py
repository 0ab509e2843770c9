"""Images in: messages with image parts, rendered by a processor's own chat template and tokenised by it, each
image located as a source with its grid. The processors are built offline from their parts (a PIL image
processor and the built-in tokenizer with the image special tokens added); no model is needed."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import Gemma3Processor, LlavaProcessor, Qwen2VLProcessor, Qwen3VLProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from spantrace import TraceResult
from spantrace.errors import InputError
from spantrace.inputs import complete_layout, prepare
from spantrace.loading.processor import images_only

SIDE = 56  # pixels: the square side the Qwen3-VL and Gemma 3 processors below resize to (Qwen3-VL: to 64)
QWEN_MARKS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
GEMMA_MARKS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}


def template(marker: str) -> str:
    """A Qwen-like chat template that writes ``marker`` for each image part."""
    return (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}" + marker +
        "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


class ImagesOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without a video processor (that one needs torchvision, which is not installed)."""

    def check_argument_for_proper_class(self, argument_name, argument):  # noqa: ANN001, ANN201
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def qwen3_vl_processor(tokenizer) -> Qwen3VLProcessor:
    """Qwen3-VL's processor built offline: the PIL image processor (16-pixel patches, 2 × 2 merged), the built-in
    tokenizer with Qwen's vision marks added, no video processor (``images_only``: that one needs torchvision)."""
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": QWEN_MARKS})
    images = Qwen2VLImageProcessorPil(min_pixels=SIDE * SIDE, max_pixels=64 * 64, patch_size=16, merge_size=2)
    return images_only(Qwen3VLProcessor)(image_processor=images, tokenizer=own,
                                         chat_template=template("<|vision_start|><|image_pad|><|vision_end|>"))


def gemma3_processor(tokenizer, folder) -> Gemma3Processor:
    """Gemma 3's processor built offline: its PIL image processor (56 × 56), the built-in tokenizer with Gemma's
    three image tokens added and named (``boi_token``, ``image_token``, ``eoi_token``, as Gemma's tokenizer
    config names them: saved and read back, the public way to name them), 4 image tokens per image. Like
    Gemma's, the tokenizer adds BOS and the template writes it (the built-in's BOS, ``<|im_start|>``, opens it)."""
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": list(GEMMA_MARKS.values())})
    own.save_pretrained(folder)
    own = type(own).from_pretrained(folder, extra_special_tokens=GEMMA_MARKS, add_bos_token=True)
    images = Gemma3ImageProcessorPil(size={"height": SIDE, "width": SIDE})
    return Gemma3Processor(image_processor=images, tokenizer=own, chat_template=template("<start_of_image>"),
                           image_seq_length=4)


@pytest.fixture(scope="module")
def llava(tokenizer):
    own = copy.deepcopy(tokenizer)  # the session's tokenizer stays as it is
    own.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return LlavaProcessor(image_processor=images, tokenizer=own, chat_template=template("<image>"), patch_size=14,
                          vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1)


@pytest.fixture(scope="module")
def qwen(tokenizer):
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]})
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    return ImagesOnlyQwen2VLProcessor(image_processor=images, tokenizer=own,
                                      chat_template=template("<|vision_start|><|image_pad|><|vision_end|>"))


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def traced(processor, prepared) -> TraceResult:
    """A result over the prepared tokens (scores = position + 1 on the context): for the source tables."""
    layout = complete_layout(processor.tokenizer, prepared, prepared.output_ids)
    ids = prepared.ids + prepared.output_ids
    n, context = len(ids), len(prepared.ids)
    scores = np.where(np.arange(n) < context, np.arange(1, n + 1), 0).astype(np.float32)
    return TraceResult(tokens=processor.tokenizer.convert_ids_to_tokens(ids), token_ids=ids, prompt_length=context,
                       span=(context, n), method="flashtrace", scores=scores, hop_scores=[scores], rho=[1.0],
                       recursive_span=(context, n), layout=layout)


def test_llava_image_becomes_a_square_grid_of_sources(llava) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": picture(90, 60)}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "Noise."},
    ]
    prepared = prepare(llava.tokenizer, messages=messages, processor=llava)
    image_id = llava.tokenizer.convert_tokens_to_ids("<image>")
    assert prepared.ids.count(image_id) == 16  # 56 × 56 pixels in 14-pixel patches, CLS dropped
    assert tuple(prepared.model_inputs["pixel_values"].shape) == (1, 3, 56, 56)
    [image] = [s for s in prepared.context.segments if s.kind == "image"]
    grid = image.image
    assert (grid.rows, grid.cols, grid.size, grid.input_size, grid.cell) == (4, 4, (90, 60), (56, 56), (14, 14))
    assert grid.preview.startswith("data:image/png;base64,")
    result = traced(llava, prepared)
    first = prepared.ids.index(image_id)
    assert result.layout.of_kind("image")[0].tokens == (first, first + 16)
    assert not result.template_mask[first : first + 16].any()
    [row] = result.by("image")
    assert row.score == pytest.approx(result.image_map(0).sum())
    user = next(r for r in result.by("message") if r.name.startswith("user"))
    assert set(range(first, first + 16)) <= set(user.positions)  # the image is part of its message


def test_qwen_grids_follow_image_grid_thw(qwen, tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    picture(30, 30, seed=1).save(path)
    content = [{"type": "image", "image": picture(90, 60)}, {"type": "text", "text": "Which is larger?"},
               {"type": "image", "image": str(path)}]
    prepared = prepare(qwen.tokenizer, messages=[{"role": "user", "content": content}], output="The first.",
                       processor=qwen)
    assert prepared.ids == qwen(text=[qwen.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Which is larger?"}, {"type": "image"}]}],
        add_generation_prompt=True, tokenize=False)], images=[picture(90, 60), picture(30, 30, 1)])["input_ids"][0]
    assert prepared.model_inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 4]]
    first, second = (s.image for s in prepared.context.segments if s.kind == "image")
    assert (first.rows, first.cols, first.input_size, first.cell) == (2, 3, (84, 56), (28, 28))
    assert (second.rows, second.cols, second.size) == (2, 2, (30, 30))
    result = traced(qwen, prepared)
    assert [r.name for r in result.by("image")] == ["image 1 (30×30)", "image 0 (90×60)"]  # later: higher scores
    text = result.layout.text
    assert "Which is larger?" in [text[slice(*r.chars)] for r in result.by("sentence")]
    images = {p for s in result.layout.of_kind("image") for p in range(*s.tokens)}
    assert all(not images & set(r.positions) for r in result.by("word"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"type": "image", "image": "/no/such/picture.png"}], "does not exist"),
        ([{"type": "image", "image": 3}], "a PIL image or a local file path"),
        ([{"type": "text", "text": "a"}, {"type": "image", "image": "IMG"}, {"type": "text", "text": "b"}],
         "between text parts"),
        ([{"type": "image", "image": "TXT"}], "not an image file"),
    ],
)
def test_bad_image_parts_are_one_line_errors(qwen, tmp_path: Path, content, message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    picture(8, 8).save(tmp_path / "pic.png")
    for part in content:
        if part.get("image") in ("TXT", "IMG"):
            part["image"] = str(tmp_path / ("notes.txt" if part["image"] == "TXT" else "pic.png"))
    with pytest.raises(InputError, match=message) as caught:
        prepare(qwen.tokenizer, messages=[{"role": "user", "content": content}], processor=qwen)
    assert "\n" not in str(caught.value)


def test_an_image_needs_a_processor_and_a_user_message(qwen) -> None:
    image = {"type": "image", "image": picture(8, 8)}
    with pytest.raises(InputError, match="needs the model's processor"):
        prepare(qwen.tokenizer, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(InputError, match="images go into a user or system message"):
        prepare(qwen.tokenizer, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [image]}],
                processor=qwen)


def test_load_takes_a_processor_and_run_hands_its_images_on(llava) -> None:
    import spantrace

    model = spantrace.load(processor=llava)  # the built-in model: text-only, so its run refuses the pixels
    assert model.processor is llava
    image = {"type": "image", "image": picture(20, 20)}
    prepared = model.prepare(messages=[{"role": "user", "content": [image, {"type": "text", "text": "Hue?"}]}],
                             output="Grey.")
    assert set(prepared.model_inputs) == {"pixel_values"}
    with pytest.raises(InputError, match="takes no model_inputs"):
        model.run(prepared=prepared)


@pytest.fixture(scope="module")
def gemma(tokenizer, tmp_path_factory):
    return gemma3_processor(tokenizer, tmp_path_factory.mktemp("gemma3-tokenizer"))


def test_gemma3_image_is_its_soft_tokens_not_its_start_marker(gemma) -> None:
    # Gemma 3's processor names <start_of_image> as its image_token_id; the features sit on <image_soft_token>
    content = [{"type": "image", "image": picture(90, 60)}, {"type": "text", "text": "What?"}]
    prepared = prepare(gemma.tokenizer, messages=[{"role": "user", "content": content}], output="Noise.",
                       processor=gemma)
    # the ids the processor's own apply_chat_template gives: one BOS (the template wrote it, the tokenizer adds none)
    assert prepared.ids == gemma.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                     add_generation_prompt=True, return_dict=True)["input_ids"][0]
    assert prepared.ids[:2] == [gemma.tokenizer.bos_token_id, gemma.tokenizer.convert_tokens_to_ids("user")]
    [image] = [s for s in prepared.context.segments if s.kind == "image"]
    grid = image.image
    assert (grid.rows, grid.cols, grid.size, grid.input_size, grid.cell) == (2, 2, (90, 60), (SIDE, SIDE), (28, 28))
    result = traced(gemma, prepared)
    start, end = result.layout.of_kind("image")[0].tokens
    tokens = gemma.tokenizer
    assert prepared.ids[start:end] == [tokens.image_token_id] * 4
    assert (prepared.ids[start - 1], prepared.ids[end]) == (tokens.boi_token_id, tokens.eoi_token_id)
    assert result.template_mask[start - 1] and result.template_mask[end]  # the markers are template
    assert "\n\n<start_of_image>" in result.layout.text  # the processor's blank lines around the image kept
    assert "<end_of_image>\n\n" in result.layout.text
    assert set(prepared.model_inputs) == {"pixel_values", "token_type_ids"}  # token_type_ids: the two-way block
    assert prepared.model_inputs["token_type_ids"][0, start:end].all()


def test_images_only_processor_saves_and_loads_without_a_video_processor(tokenizer, tmp_path: Path) -> None:
    from spantrace.loading.processor import load_processor

    processor = qwen3_vl_processor(tokenizer)
    assert type(processor).__name__ == "Qwen3VLProcessor" and not hasattr(processor, "video_processor")
    processor.save_pretrained(tmp_path)  # Qwen3VLProcessor's own files, no video part
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl"}')
    found = load_processor(tmp_path, "qwen3_vl")  # AutoProcessor cannot: it wants the video processor
    assert isinstance(found, Qwen3VLProcessor)
    assert found.image_processor.patch_size == 16 and found.chat_template == processor.chat_template
    content = [{"type": "image", "image": picture(56, 56)}, {"type": "text", "text": "What?"}]
    prepared = prepare(found.tokenizer, messages=[{"role": "user", "content": content}], processor=found)
    assert prepared.model_inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert images_only(Qwen3VLProcessor) is type(processor)  # one class per processor class
    assert images_only(LlavaProcessor) is LlavaProcessor  # nothing to leave out
    assert load_processor(tmp_path / "nothing-here", "qwen3_vl") is None


def test_bos_is_added_once_as_the_processors_own_chat_template_adds_it(tokenizer, tmp_path: Path) -> None:
    # a LLaVA-1.5-like template that writes no BOS, and a tokenizer that adds one: the processor adds it
    own = copy.deepcopy(tokenizer)
    own.add_special_tokens({"additional_special_tokens": ["<image>"]})
    own.save_pretrained(tmp_path)
    own = type(own).from_pretrained(tmp_path, add_bos_token=True)
    plain = ("{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
             "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>\n{% elif p['type'] == 'text' %}"
             "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:"
             "{% endif %}")
    images = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=images, tokenizer=own, chat_template=plain, patch_size=14,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1)
    content = [{"type": "image", "image": picture(56, 56)}, {"type": "text", "text": "What?"}]
    prepared = prepare(own, messages=[{"role": "user", "content": content}], output="Noise.", processor=processor)
    assert prepared.ids == processor.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                         add_generation_prompt=True, return_dict=True)["input_ids"][0]
    assert prepared.ids.count(own.bos_token_id) == 1 and prepared.ids[0] == own.bos_token_id
    assert prepared.context.text.startswith(own.bos_token + "USER: <image>")  # the BOS has its own characters


def test_a_run_of_images_back_to_back_is_cut_by_their_token_counts() -> None:
    from spantrace.inputs.images import split_runs

    assert split_runs([(2, 34)], [16, 16]) == [(2, 18), (18, 34)]
    assert split_runs([(2, 18), (20, 36)], [16, 16]) == [(2, 18), (20, 36)]  # already one run each
    assert split_runs([(0, 10), (12, 16)], [6, 4, 4]) == [(0, 6), (6, 10), (12, 16)]
    assert split_runs([(2, 30)], [16, 16]) == [(2, 30)]  # counts that do not tile the run: left as found
    assert split_runs([(2, 34)], None) == [(2, 34)]


@pytest.mark.parametrize("model_type", ["qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def test_qwen3_vl_moe_and_qwen3_5_folders_read_qwen3_vl_processor(tokenizer, tmp_path: Path, model_type: str) -> None:
    # these checkpoints ship Qwen3-VL's processor; without torchvision it is read without its video part
    from spantrace.loading.processor import load_processor

    processor = qwen3_vl_processor(tokenizer)
    processor.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    found = load_processor(tmp_path, model_type)
    assert type(found) is images_only(Qwen3VLProcessor) and found.chat_template == processor.chat_template
    content = [{"type": "image", "image": picture(56, 56)}, {"type": "text", "text": "What?"}]
    prepared = prepare(found.tokenizer, messages=[{"role": "user", "content": content}], processor=found)
    assert prepared.model_inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
