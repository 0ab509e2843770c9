"""Images that reach the viewer's API: ``data:`` URIs only, decoded with bounds, never a path.

A run request carries its images inside the JSON body, either as image parts of ``messages``
(``{"type": "image", "image": "data:image/png;base64,..."}``) or as ``images`` beside ``prompt``. The
server never opens a file or a URL named in a request: any string that is not a ``data:image/...;base64,``
URI is refused (400). Each image is checked in the order that costs least: its count and encoded size
(413), its base64 (400), its header (PIL reads only the header on open: the format must be PNG, JPEG,
WebP or GIF, and the declared width × height at most ``Limits.max_image_pixels``, 413), and only then
are its pixels decoded (400 when they cannot be). A GIF gives its first frame.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import HTTPException

from ..api import Model
from .schemas import Limits, RunRequest

# The formats PIL may try (no other decoder runs on a request's bytes), and their MIME subtypes.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF"}
DATA_URI = re.compile(r"data:image/([a-z]+);base64,", re.IGNORECASE)
HOW = 'send each image as a data URI ("data:image/png;base64,..."; png, jpeg, webp or gif)'


def image_parts(messages: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Every ``{"type": "image", ...}`` part of ``messages`` (a content list of any message), in reading order."""
    found = []
    for message in messages or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            found += [part for part in content if isinstance(part, dict) and part.get("type") == "image"]
    return found


def check_sources(sources: Sequence[Any], limits: Limits) -> None:
    """Each image given is a data URI (never a path or URL) and there are at most ``max_images`` of them."""
    for number, source in enumerate(sources):
        if not isinstance(source, str) or not DATA_URI.match(source):
            raise HTTPException(400, _not_a_data_uri(number, source))
    if len(sources) > limits.max_images:
        raise HTTPException(413, f"the request has {len(sources)} images; this server takes at most "
                                 f"{limits.max_images} per run")


def decode_image(number: int, uri: str, limits: Limits) -> Any:
    """The data URI ``uri`` as an RGB PIL image, within ``limits``."""
    from PIL import Image, UnidentifiedImageError

    head = DATA_URI.match(uri)
    if head is None:
        raise HTTPException(400, _not_a_data_uri(number, uri))
    if head.group(1).lower() not in FORMATS:
        raise HTTPException(400, f"image {number} is image/{head.group(1)}; {HOW}")
    payload = uri[head.end():]
    if len(payload) // 4 * 3 > limits.max_image_bytes:  # base64: 4 characters per 3 bytes, measured undecoded
        raise HTTPException(413, f"image {number} has about {len(payload) // 4 * 3} bytes; this server takes at "
                                 f"most {limits.max_image_bytes} per image")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"image {number}'s data URI is not valid base64; {HOW}") from None
    try:
        with warnings.catch_warnings():  # PIL warns past its own limit; ours (below) is the one that answers
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(raw), formats=sorted(set(FORMATS.values())))  # reads the header only
    except Image.DecompressionBombError:
        raise HTTPException(413, _too_many_pixels(number, None, limits)) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(400, f"image {number} is not a PNG, JPEG, WebP or GIF image; {HOW}") from None
    with opened:
        width, height = opened.size
        if width * height > limits.max_image_pixels:  # before a single pixel is decoded
            raise HTTPException(413, _too_many_pixels(number, (width, height), limits))
        try:
            return opened.convert("RGB")  # decodes the pixels (a GIF's first frame)
        except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data after a valid header
            reason = " ".join(str(error).split())[:120]
            raise HTTPException(400, f"image {number} could not be decoded ({reason}); {HOW}") from None


def _not_a_data_uri(number: int, source: Any) -> str:
    shown = source[:60] + "…" if isinstance(source, str) and len(source) > 60 else source
    what = repr(shown) if isinstance(source, str) else "missing" if source is None else f"a {type(source).__name__}"
    return f"image {number} is {what}, not a data URI: this server never opens a path or URL; {HOW}"


def _too_many_pixels(number: int, size: tuple[int, int] | None, limits: Limits) -> str:
    said = f"{size[0]}×{size[1]} = {size[0] * size[1]} pixels" if size else "more pixels than PIL will open"
    return f"image {number} has {said}; this server takes at most {limits.max_image_pixels} pixels per image"


def without_image_data(value: Any) -> Any:
    """``value`` (a request's messages) with every image part's data left out: what the text limits measure."""
    if isinstance(value, list):
        return [without_image_data(item) for item in value]
    if isinstance(value, dict):
        if value.get("type") == "image":
            return {"type": "image"}
        return {key: without_image_data(item) for key, item in value.items()}
    return value


def conversation_text(messages: Any, tools: Any, documents: Any) -> str:
    """A request's conversation as JSON text, its images' data left out: what the prompt limit measures."""
    return json.dumps([without_image_data(messages), tools, documents], ensure_ascii=False)


def with_images(messages: list[dict[str, Any]], pictures: Sequence[Any]) -> list[dict[str, Any]]:
    """``messages`` with each image part's data URI replaced by its decoded picture (``pictures``, in order)."""
    remaining = iter(pictures)

    def replaced(message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        parts = [dict(part, image=next(remaining)) if isinstance(part, dict) and part.get("type") == "image"
                 else part for part in content]
        return dict(message, content=parts)

    return [replaced(message) if isinstance(message, dict) else message for message in messages]


def images_refusal(model: Model) -> str | None:
    """Why ``model`` takes no images, in one line; None when it does (a processor, and an adapter that reads
    pixels: ``input_model``)."""
    name = f"this server's model ({model.model_id}, {model.adapter.name})"
    if model.processor is None:
        return f"{name} takes no images: it has no processor (a text-only model); send text only"
    if getattr(model.adapter, "input_model", lambda: None)() is None:
        return f"{name} is traced on text only: it takes no images here; send text only"
    return None


def pictured(request: RunRequest, model: Model, limits: Limits) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The request's prompt and messages with its images decoded (PIL images in place of the data URIs); a
    prompt with ``images`` becomes one user message, the images before its text (as ``--image`` does)."""
    parts = image_parts(request.messages)
    if not parts and not request.images:
        return request.prompt, request.messages
    if request.images and (request.prompt is None or request.messages is not None):
        raise HTTPException(400, '"images" go with "prompt"; in "messages" give {"type": "image", "image": '
                                 '"data:..."} parts instead')
    if request.images and not request.chat:  # the processor's chat template places the images
        raise HTTPException(400, 'images are shown to the model through its chat template; send "chat": true '
                                 '(tick "chat template") with images')
    sources = [part.get("image") for part in parts] + list(request.images or ())
    check_sources(sources, limits)  # a path is refused whatever the model, before anything else
    refusal = images_refusal(model)
    if refusal is not None:
        raise HTTPException(400, refusal)
    pictures = [decode_image(number, source, limits) for number, source in enumerate(sources)]
    if request.messages is not None:
        return request.prompt, with_images(request.messages, pictures)
    content = [*({"type": "image", "image": picture} for picture in pictures), {"type": "text", "text": request.prompt}]
    return None, [{"role": "user", "content": content}]
