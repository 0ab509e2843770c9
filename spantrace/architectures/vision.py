"""Vision-language models traced exactly: Qwen2.5-VL, Qwen3-VL (dense and MoE), Gemma 3, LLaVA 1.5 and Mistral 3.

After the vision tower and its merger, each image is a run of token positions whose input embeddings are the image
features; the text stack is a Llama-shaped decoder (``LlamaStyleAdapter``), and every method attributes to those
positions like any other. What the images change, and how each is kept exact:

- The capture runs the wrapper's base model (``input_model``: vision tower, merger, text stack, no LM head) with
  the model inputs as given, so ``x_in`` of layer 0 at an image position is the merged image feature the text
  stack received (Qwen3-VL's deepstack features, added after early layers, are in the next layers' ``x_in``; the
  capture also keeps them, so the methods that re-run the text stack add them again: ``adding_deepstack``).
- Positions: Qwen's M-RoPE gives each image token a (t, h, w) position; the capture keeps the position ids the
  model's rotary module was called with, and the rotary tables are rebuilt from them by that same module
  (``LlamaStyleAdapter.at_positions``).
- Gemma 3 lets an image token see the later tokens of its own image (a bidirectional block, also under the
  sliding window). The blocks are read from the ``token_type_ids`` the model's mask was built from (runs of 1,
  the model's own rule) and the row kernels handle them (``AttentionRule.bidirectional_blocks``).
- The load-time self-check runs a small synthetic image too (``synthetic_image_inputs``), built from the vision
  config the way the model's forward takes pixels, without a processor.

Refused: video inputs (``pixel_values_videos``), with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, UnsupportedArchitectureError
from ..inputs.images import raw_image_segments, row_blocks, row_break_grid
from ..text.tokens import runs
from .llama import LlamaStyleAdapter
from .registry import register_adapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..capture import Capture

# A fixed seed: the self-check's synthetic image is the same on every load.
_IMAGE_SEED = 20260207

# Model inputs with one value per token (1 at image tokens), which a processor gives for the prompt it read only.
PER_TOKEN_INPUTS = ("mm_token_type_ids", "token_type_ids")


def image_token_id(config: Any) -> int | None:
    """The id of the placeholder token that stands for one image feature (None if the config has none)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def image_blocks(input_ids: torch.Tensor | list[int], config: Any) -> list[tuple[int, int]]:
    """The token ranges ``(start, end)`` (end exclusive) of the images in ``input_ids``: each maximal run of the
    config's image token, in order (one run per image when images are separated by text or markers, as every
    processor writes them)."""
    token = image_token_id(config)
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return runs(value == token for value in ids) if token is not None else []


class ImageInputs:
    """The image path every image-text adapter shares (a mixin over an adapter with ``model`` and ``name``): model
    inputs checked and completed, and what a forward from input embeddings needs to repeat the capture."""

    model: PreTrainedModel
    name: str

    def complete_model_inputs(self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``model_inputs`` checked, with what a processor adds and the forward needs filled in when missing."""
        if model_inputs.get("pixel_values_videos") is not None or model_inputs.get("video_grid_thw") is not None:
            raise UnsupportedArchitectureError(
                f"{self.name}: video inputs are not traced yet (frames share temporal positions and tokens); "
                "give images (pixel_values) only"
            )
        completed = dict(model_inputs)
        length = int(torch.as_tensor(input_ids).reshape(-1).shape[0])
        for key in PER_TOKEN_INPUTS:  # a processor's per-token types cover the prompt: the generation is text (0)
            types = completed.get(key)
            if types is not None and torch.as_tensor(types).shape[-1] < length:
                types = torch.as_tensor(types).reshape(1, -1)
                completed[key] = torch.cat([types, types.new_zeros(1, length - types.shape[-1])], dim=-1)
        return completed

    def replay_inputs(
        self, capture: Capture, model_inputs: Mapping[str, Any], length: int, batch: int
    ) -> dict[str, torch.Tensor]:
        """What a forward from the merged input embeddings (no pixels) needs besides them to repeat the capture's
        first ``length`` tokens, for ``batch`` rows: nothing for a causal model with plain positions."""
        return {}

    def image_segments(self, token_ids: Sequence[int], model_inputs: Mapping[str, Any]) -> list[tuple[int, int, Any]]:
        """Each image of a run given raw model inputs: its token range and grid (``inputs.images``), read with
        this model's image token, patch size and merge size."""
        config, vision = self.model.config, self.model.config.vision_config
        token = image_token_id(config)
        if token is None:
            return []
        return raw_image_segments(token_ids, dict(model_inputs), token, patch=int(getattr(vision, "patch_size", 1)),
                                  merge=int(getattr(vision, "spatial_merge_size", 1) or 1))

    def _check_image_count(self, input_ids: torch.Tensor, count: int) -> None:
        tokens = sum(end - start for start, end in image_blocks(input_ids, self.model.config))
        if tokens != count:
            raise InputError(
                f"the input_ids hold {tokens} image tokens but the images give {count} features; put one image "
                "token per feature (the processor's expansion of each image placeholder)"
            )


class VisionLanguageAdapter(ImageInputs, LlamaStyleAdapter):
    """The text stack of an image-text wrapper, with the image path: model inputs, positions, self-check image."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        if self._outer is None:
            raise UnsupportedArchitectureError(
                f"{self.name}: expected an image-text wrapper (model.model.language_model) but found a text stack only"
            )

    def input_model(self) -> torch.nn.Module:
        """The wrapper's base model (vision tower, merger and text stack, no LM head): what a capture with model
        inputs (images) runs. Only the adapters here have it: a wrapper traced on its text stack (Gemma 4's)
        takes no images."""
        return self._outer


class QwenImageInputs(ImageInputs):
    """Qwen's image path (Qwen2.5-VL, Qwen3-VL, and the Qwen3.5 hybrids' wrappers in ``qwen_hybrid``): merged patch
    features per image, ``mm_token_type_ids`` for M-RoPE, the captured position ids replayed."""

    def complete_model_inputs(self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
        completed = super().complete_model_inputs(input_ids, model_inputs)
        grid = completed.get("image_grid_thw")
        if completed.get("pixel_values") is not None and grid is None:
            raise InputError("pixel_values need image_grid_thw (each image's t, h, w patch grid, as a processor gives)")
        if grid is not None:
            merge = int(self.model.config.vision_config.spatial_merge_size)
            self._check_image_count(input_ids, int(torch.as_tensor(grid).prod(-1).sum()) // merge**2)
            if completed.get("mm_token_type_ids") is None:  # what the processor gives: 1 at image tokens
                ids = torch.as_tensor(input_ids).reshape(1, -1)
                completed["mm_token_type_ids"] = (ids == image_token_id(self.model.config)).int()
        return completed

    def replay_inputs(
        self, capture: Capture, model_inputs: Mapping[str, Any], length: int, batch: int
    ) -> dict[str, torch.Tensor]:
        """The M-RoPE position ids the capture used (the model recomputes none when given them)."""
        if capture.position_ids is None:
            return {}
        positions = capture.position_ids[..., :length]
        return {"position_ids": positions.expand(positions.shape[0], batch, length).to(self.model.device)}

    def synthetic_image_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``input_ids`` with one small random image put in the middle (start marker, image tokens, end marker),
        and its model inputs: a (1, 2m, 2m) patch grid (m the merge size), so 4 image tokens."""
        config, vision = self.model.config, self.model.config.vision_config
        merge = int(vision.spatial_merge_size)
        grid = torch.tensor([[1, 2 * merge, 2 * merge]])
        width = int(vision.in_channels) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
        generator = torch.Generator().manual_seed(_IMAGE_SEED)
        pixels = torch.randn(int(grid.prod()), width, generator=generator).to(next(self.model.parameters()).dtype)
        middle = input_ids.shape[0] // 2
        image = [int(config.vision_start_token_id), *[image_token_id(config)] * 4, int(config.vision_end_token_id)]
        ids = torch.cat([input_ids[:middle], torch.tensor(image), input_ids[middle:]])
        ids = _avoid_tokens(ids, image, keep=range(middle, middle + len(image)))
        return ids, self.complete_model_inputs(ids, {"pixel_values": pixels, "image_grid_thw": grid})


class QwenVisionAdapter(QwenImageInputs, VisionLanguageAdapter):
    """Qwen2.5-VL and Qwen3-VL (dense and MoE): M-RoPE positions, merged patch features per image."""


class Qwen3VisionAdapter(QwenVisionAdapter):
    """Qwen3-VL: as Qwen2.5-VL, and its deepstack image features join the residual at the image positions after
    the first layers. They depend on the pixels only: the capture keeps the ones the text model was called with
    (``deepstack_module``), and a forward from input embeddings gets them back through ``adding_deepstack``."""

    def deepstack_module(self) -> torch.nn.Module:
        """The text model, whose forward takes ``visual_pos_masks`` and ``deepstack_visual_embeds`` (the image
        positions and the features its first layers' outputs get added there)."""
        return self._base

    @contextlib.contextmanager
    def adding_deepstack(self, mask: torch.Tensor, features: Sequence[torch.Tensor]) -> Iterator[None]:
        """While inside, a forward of the text model adds ``features[k]`` (``[B or 1, n, D]``: one row of the n
        image positions per sequence) after layer k at the positions ``mask`` (``[T]`` bool, n of them), by the
        model's own deepstack code: the wrapper passes none when it reads no pixels, and this fills them in."""

        def fill(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            batch, length = kwargs["inputs_embeds"].shape[:2]  # the wrapper passes its merged embeddings by name
            if kwargs.get("deepstack_visual_embeds") is not None or mask.shape[0] != length:
                raise RuntimeError("adding_deepstack: the forward already has deepstack features or another length")
            # every sequence has the same image positions; the model takes them in row-major order
            rows = mask.to(kwargs["inputs_embeds"].device)[None].expand(batch, length)
            added = [f.expand(batch, *f.shape[1:]).reshape(-1, f.shape[-1]) for f in features]  # [B·n, D] each
            return args, {**kwargs, "visual_pos_masks": rows, "deepstack_visual_embeds": added}

        handle = self._base.register_forward_pre_hook(fill, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


class Gemma3VisionAdapter(VisionLanguageAdapter):
    """Gemma 3 image-text: bidirectional attention inside each image block, read from ``token_type_ids``."""

    def complete_model_inputs(self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
        completed = super().complete_model_inputs(input_ids, model_inputs)
        pixels = completed.get("pixel_values")
        if pixels is not None:
            count = int(torch.as_tensor(pixels).shape[0]) * int(self.model.config.mm_tokens_per_image)
            self._check_image_count(input_ids, count)
            if completed.get("token_type_ids") is None:  # what the processor gives: 1 at image tokens
                ids = torch.as_tensor(input_ids).reshape(1, -1)
                completed["token_type_ids"] = (ids == image_token_id(self.model.config)).long()
        return completed

    def bidirectional_blocks(
        self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]
    ) -> list[tuple[int, int]]:
        """The runs of ``token_type_ids == 1``: the blocks the model's mask makes bidirectional (none without)."""
        types = model_inputs.get("token_type_ids")
        return runs(int(v) == 1 for v in torch.as_tensor(types).reshape(-1).tolist()) if types is not None else []

    def replay_inputs(
        self, capture: Capture, model_inputs: Mapping[str, Any], length: int, batch: int
    ) -> dict[str, torch.Tensor]:
        """The token types, from which the model's mask makes each image block bidirectional again."""
        types = model_inputs.get("token_type_ids")
        if types is None:
            return {}
        return {"token_type_ids": torch.as_tensor(types)[:, :length].expand(batch, length).to(self.model.device)}

    def synthetic_image_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``input_ids`` with one random image (``mm_tokens_per_image`` tokens) in the middle, and its inputs."""
        config, vision = self.model.config, self.model.config.vision_config
        size = int(vision.image_size)
        generator = torch.Generator().manual_seed(_IMAGE_SEED)
        pixels = torch.randn(1, int(vision.num_channels), size, size, generator=generator)
        pixels = pixels.to(next(self.model.parameters()).dtype)
        middle = input_ids.shape[0] // 2
        image = [image_token_id(config)] * int(config.mm_tokens_per_image)
        ids = torch.cat([input_ids[:middle], torch.tensor(image), input_ids[middle:]])
        ids = _avoid_tokens(ids, image, keep=range(middle, middle + len(image)))
        return ids, self.complete_model_inputs(ids, {"pixel_values": pixels})


class LlavaAdapter(VisionLanguageAdapter):
    """LLaVA (1.5-style): a vision tower's patch features, projected, one token per feature; a causal text stack."""

    def tokens_per_image(self) -> int:
        """Image tokens per image: the vision tower's patches, plus its class token under the "full" strategy
        (the "default" strategy drops the first feature)."""
        config, vision = self.model.config, self.model.config.vision_config
        patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
        tower = self._outer.vision_tower
        embeddings = getattr(getattr(tower, "vision_model", tower), "embeddings", None)
        features = patches + (1 if hasattr(embeddings, "class_embedding") else 0)
        return features - (1 if config.vision_feature_select_strategy == "default" else 0)

    def complete_model_inputs(self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
        completed = super().complete_model_inputs(input_ids, model_inputs)
        pixels = completed.get("pixel_values")
        if pixels is not None:
            self._check_image_count(input_ids, int(torch.as_tensor(pixels).shape[0]) * self.tokens_per_image())
        return completed

    def synthetic_image_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``input_ids`` with one random image (its tokens) in the middle, and its pixel values."""
        vision = self.model.config.vision_config
        size = int(vision.image_size)
        generator = torch.Generator().manual_seed(_IMAGE_SEED)
        pixels = torch.randn(1, int(vision.num_channels), size, size, generator=generator)
        pixels = pixels.to(next(self.model.parameters()).dtype)
        middle = input_ids.shape[0] // 2
        image = [image_token_id(self.model.config)] * self.tokens_per_image()
        ids = torch.cat([input_ids[:middle], torch.tensor(image), input_ids[middle:]])
        ids = _avoid_tokens(ids, image, keep=range(middle, middle + len(image)))
        return ids, self.complete_model_inputs(ids, {"pixel_values": pixels})


class Mistral3VisionAdapter(VisionLanguageAdapter):
    """Mistral 3 image-text (Mistral Small 3.x, Ministral 3, Magistral): Pixtral's patch features, merged
    ``spatial_merge_size`` × ``spatial_merge_size`` by the projector, fill the ``[IMG]`` positions in row-major
    order; the text stack is a Mistral / Ministral decoder with plain positions and a causal mask, so a forward
    from the merged input embeddings needs nothing else (``replay_inputs`` is the default ``{}``). The processor
    ends each row of ``[IMG]`` tokens with ``[IMG_BREAK]`` (the last with ``[IMG_END]``): ordinary text tokens to
    the model, so one image's tokens are several runs, and its grid has a row stride of cols + 1."""

    def downsample(self) -> int:
        """Pixels per image token along each side: the vision patch size times the projector's merge size."""
        config = self.model.config
        return int(config.vision_config.patch_size) * int(config.spatial_merge_size)

    def image_token_counts(self, image_sizes: Any) -> list[tuple[int, int]]:
        """Each image's ``(rows, cols)`` of ``[IMG]`` tokens from its ``(height, width)`` in pixels, as the
        projector merges them."""
        side = self.downsample()
        return [(int(h) // side, int(w) // side) for h, w in torch.as_tensor(image_sizes).reshape(-1, 2).tolist()]

    def complete_model_inputs(self, input_ids: torch.Tensor, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
        completed = super().complete_model_inputs(input_ids, model_inputs)
        if completed.get("pixel_values") is not None:
            sizes = completed.get("image_sizes")
            if sizes is None:
                raise InputError("pixel_values need image_sizes (each image's height and width in pixels, as the "
                                 "Pixtral processor gives)")
            self._check_image_count(input_ids, sum(rows * cols for rows, cols in self.image_token_counts(sizes)))
        return completed

    def image_segments(self, token_ids: Sequence[int], model_inputs: Mapping[str, Any]) -> list[tuple[int, int, Any]]:
        """Each image of a run given raw model inputs: from its first ``[IMG]`` to its last, the row breaks between
        included, and its grid (rows ``cols + 1`` tokens apart); empty when the ``[IMG]`` rows are not written one
        break apart as the processor writes them (the run is traced the same, without image rows)."""
        sizes, token = model_inputs.get("image_sizes"), image_token_id(self.model.config)
        if sizes is None or token is None:
            return []
        shapes = self.image_token_counts(sizes)
        blocks = row_blocks(runs(int(t) == token for t in token_ids), shapes)
        if blocks is None:
            return []
        pixels = torch.as_tensor(sizes).reshape(-1, 2).tolist()
        return [(start, end, row_break_grid(shape, size, self.downsample()))
                for (start, end), shape, size in zip(blocks, shapes, pixels, strict=True)]

    def synthetic_image_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``input_ids`` with one random 2 × 2-token image in the middle (two rows of two ``[IMG]``, the first row
        ended by a text token standing for ``[IMG_BREAK]``), and its pixels and size."""
        config, vision = self.model.config, self.model.config.vision_config
        side = 2 * self.downsample()
        generator = torch.Generator().manual_seed(_IMAGE_SEED)
        pixels = torch.randn(1, int(vision.num_channels), side, side, generator=generator)
        pixels = pixels.to(next(self.model.parameters()).dtype)
        token, middle = image_token_id(config), input_ids.shape[0] // 2
        row_break = next(t for t in range(3, 8) if t != token)  # the model reads the break as any text token
        image = [token, token, row_break, token, token]
        ids = torch.cat([input_ids[:middle], torch.tensor(image), input_ids[middle:]])
        ids = _avoid_tokens(ids, [token], keep=range(middle, middle + len(image)))
        sizes = torch.tensor([[side, side]])
        return ids, self.complete_model_inputs(ids, {"pixel_values": pixels, "image_sizes": sizes})


def _avoid_tokens(ids: torch.Tensor, special: list[int], keep: range) -> torch.Tensor:
    """``ids`` with the image's special tokens replaced outside ``keep`` (a random text token that happened to be
    one would be read as an extra image token)."""
    ids = ids.clone()
    filler = next(t for t in range(3, 4 + len(special)) if t not in special)  # past pad/BOS/EOS, none of them
    for position in range(ids.shape[0]):
        if position not in keep and int(ids[position]) in special:
            ids[position] = filler
    return ids


# the model types these adapters read (docs/vision-engine.md)
register_adapter("qwen2_5_vl", QwenVisionAdapter)
for _model_type in ("qwen3_vl", "qwen3_vl_moe"):
    register_adapter(_model_type, Qwen3VisionAdapter)
register_adapter("gemma3", Gemma3VisionAdapter)
register_adapter("llava", LlavaAdapter)
register_adapter("mistral3", Mistral3VisionAdapter)
