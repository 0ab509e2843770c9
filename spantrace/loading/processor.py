"""The processor of an image-text model, from its files, with or without its video part.

A Qwen-VL processor holds an image processor, a tokenizer and a video processor, and transformers builds the
video processor with torchvision. Without torchvision, ``AutoProcessor.from_pretrained`` fails for the whole
processor, though spantrace reads still images only (videos are refused). ``images_only`` makes the model's
processor class without its video part: it loads, runs and saves with the image processor and the tokenizer
alone, and the files it saves are the class's own (its name is the class's), so a machine with torchvision
reads them with ``AutoProcessor`` as usual.

``load_processor`` is what ``spantrace.load`` calls for a model with a vision tower: ``AutoProcessor`` first,
then the images-only class of the model type's processor.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["images_only", "load_processor"]

logger = logging.getLogger(__name__)

VIDEO_PART = "video_processor"  # the processor's attribute that transformers builds with torchvision


@cache  # one subclass per processor class: the same class each time, so isinstance and equality of types hold
def images_only(processor_class: type) -> type:
    """``processor_class`` (a transformers ``ProcessorMixin`` subclass) without its video processor.

    Build it like the class itself, leaving out ``video_processor``; ``from_pretrained`` and ``save_pretrained``
    read and write the other parts. A class without a video part is returned as it is."""
    if VIDEO_PART not in processor_class.get_attributes():
        return processor_class

    def get_attributes(cls: type) -> list[str]:
        # the parts transformers loads, checks and saves: all of the class's but the video processor
        return [name for name in super(subclass, cls).get_attributes() if name != VIDEO_PART]

    subclass = type(processor_class.__name__, (processor_class,), {
        "get_attributes": classmethod(get_attributes),
        "__module__": __name__,
        "__qualname__": f"images_only.{processor_class.__name__}",
        "__doc__": f"{processor_class.__name__} without its video processor (spantrace.loading.processor).",
    })
    return subclass


def load_processor(source: str | Path, model_type: str) -> Any:
    """The processor stored at ``source`` (a folder or hub id) for a ``model_type`` model, or None when its files
    hold no image processor. ``AutoProcessor`` first; when that fails (a video processor without torchvision),
    the images-only class of the processor transformers maps ``model_type`` to."""
    from transformers import AutoProcessor

    try:
        found = AutoProcessor.from_pretrained(source)
    except Exception as error:  # whatever stops it, the images-only class may still read the files
        logger.info("AutoProcessor could not read %s (%s: %s); trying without the video part", source,
                    type(error).__name__, error)
        found = None
    if getattr(found, "image_processor", None) is not None:
        return found
    processor_class = _processor_class(model_type)
    if processor_class is None:
        return None
    try:
        found = images_only(processor_class).from_pretrained(source)
    except Exception as error:  # no processor files: the caller passes processor= then
        logger.info("No image processor in %s (%s: %s)", source, type(error).__name__, error)
        return None
    return found if getattr(found, "image_processor", None) is not None else None


def _processor_class(model_type: str) -> type | None:
    """The processor class transformers maps ``model_type`` to (``Qwen3VLProcessor`` for ``qwen3_vl``), or None."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None
