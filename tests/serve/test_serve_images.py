"""Images through the viewer's API: data URIs in, traced on a tiny LLaVA, the image's cells out; every way an
image can be wrong (a path, bad base64, not an image, too big, too many pixels, a text-only model) is one line."""

from __future__ import annotations

import base64
import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_vision_end_to_end import picture
from viewer_cases import LIMITS

import spantrace
from spantrace.serve import create_app

QUESTION = "What is in the picture?"
ANSWER = "A grey square."
# room for a 56 × 56 random PNG (about 13 kB as base64) and LLaVA's 16 image tokens
IMAGE_LIMITS = dataclasses.replace(LIMITS, max_image_bytes=20_000, max_image_pixels=200 * 200, max_images=2)


@pytest.fixture(scope="module")
def vlm_client(llava: spantrace.Model) -> TestClient:
    return TestClient(create_app(llava, limits=IMAGE_LIMITS))


@pytest.fixture
def text_client(tiny_model: spantrace.Model) -> TestClient:
    return TestClient(create_app(tiny_model, limits=IMAGE_LIMITS))


def data_uri(image: Image.Image, kind: str = "png") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind.upper())
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width × height`` but whose data is a few bytes: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def as_uri(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def post_run(client: TestClient, **body):
    return client.post("/api/runs", json={"output": ANSWER, **body})


def test_info_says_whether_the_model_takes_images(vlm_client: TestClient, text_client: TestClient) -> None:
    images = vlm_client.get("/api/info").json()["images"]
    assert images["accepted"] is True and images["why_not"] is None and "image/png" in images["types"]
    limits = vlm_client.get("/api/info").json()["limits"]
    assert (limits["max_images"], limits["max_image_pixels"]) == (2, 200 * 200)
    refused = text_client.get("/api/info").json()["images"]
    assert refused["accepted"] is False and "no processor" in refused["why_not"]


def test_an_image_run_is_traced_with_its_cells(vlm_client: TestClient, llava: spantrace.Model) -> None:
    uri = data_uri(picture())
    assert len(uri) > IMAGE_LIMITS.max_prompt_chars  # the image's data is not measured as prompt text
    created = post_run(vlm_client, prompt=QUESTION, images=[uri])
    assert created.status_code == 200, created.text
    run = created.json()
    # the same run through messages with a data-URI image part: the same tokens
    content = [{"type": "image", "image": uri}, {"type": "text", "text": QUESTION}]
    as_messages = post_run(vlm_client, messages=[{"role": "user", "content": content}])
    assert as_messages.status_code == 200, as_messages.text
    assert as_messages.json()["token_ids"] == run["token_ids"]
    traced = vlm_client.post(f"/api/runs/{run['run_id']}/trace", json={"span": "answer", "by": "image"})
    assert traced.status_code == 200, traced.text
    payload = traced.json()
    # the library on the decoded picture (PNG is lossless) gives the same scores
    direct = llava.run(messages=[{"role": "user", "content": [{"type": "image", "image": picture()},
                                                               {"type": "text", "text": QUESTION}]}],
                       output=ANSWER, progress=False).trace("answer")
    assert run["token_ids"] == direct.token_ids
    np.testing.assert_allclose(payload["scores"], direct.scores, rtol=1e-5, atol=1e-7)
    (image,) = payload["images"]
    assert (image["rows"], image["cols"]) == (4, 4) and len(image["cells"]) == 16
    assert image["preview"].startswith("data:image/png;base64,")
    start, end = direct.by("image")[0].tokens
    assert [cell["position"] for cell in image["cells"]] == list(range(start, end))
    np.testing.assert_allclose([cell["score"] for cell in image["cells"]], direct.image_map(0).ravel(), rtol=1e-5,
                               atol=1e-7)
    assert [row["kind"] for row in payload["sources"]["rows"]] == ["image"]


def test_a_qwen2_5_vl_generates_from_an_image_and_is_traced(qwen2_5_vl: spantrace.Model) -> None:
    """M-RoPE positions and ``image_grid_thw`` through the server: generated (no output given), then traced."""
    client = TestClient(create_app(qwen2_5_vl, limits=IMAGE_LIMITS))
    created = client.post("/api/runs", json={"prompt": QUESTION, "images": [data_uri(picture())],
                                             "max_new_tokens": 4})
    assert created.status_code == 200, created.text
    run = created.json()
    assert run["num_tokens"] - run["prompt_length"] == 4
    payload = client.post(f"/api/runs/{run['run_id']}/trace", json={"span": "answer"}).json()
    direct = qwen2_5_vl.run(messages=[{"role": "user", "content": [{"type": "image", "image": picture()},
                                                                    {"type": "text", "text": QUESTION}]}],
                            max_new_tokens=4, progress=False)
    assert run["token_ids"] == direct.token_ids
    np.testing.assert_allclose(payload["scores"], direct.trace("answer").scores, rtol=1e-5, atol=1e-7)
    (image,) = payload["images"]
    assert (image["rows"], image["cols"], len(image["cells"])) == (2, 2, 4)


def test_a_jpeg_and_a_gif_are_read_too(vlm_client: TestClient) -> None:
    for kind in ("jpeg", "gif"):
        response = post_run(vlm_client, prompt=QUESTION, images=[data_uri(picture(), kind)])
        assert response.status_code == 200, (kind, response.text)


@pytest.mark.parametrize("source", ["/etc/hostname", "picture.png", "https://example.org/cat.png", "", 7, None])
def test_anything_but_a_data_uri_is_refused_and_never_opened(vlm_client: TestClient, source, tmp_path) -> None:
    if source == "picture.png":  # a real image file: were the server to open paths, this one would work
        picture().save(tmp_path / source)
        source = str(tmp_path / source)
    for body in ({"prompt": QUESTION, "images": [source]},
                 {"messages": [{"role": "user", "content": [{"type": "image", "image": source},
                                                            {"type": "text", "text": QUESTION}]}]}):
        response = post_run(vlm_client, **body)
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert "not a data URI: this server never opens a path or URL" in detail and "\n" not in detail


@pytest.mark.parametrize(("uri", "words"), [
    ("data:image/png;base64,AAAA!!!!", "not valid base64"),  # (a lenient decoder would drop the !s)
    (as_uri(b"just some text, not a picture"), "is not a PNG, JPEG, WebP or GIF image"),
    (as_uri(b"BM" + b"\0" * 60, "bmp"), "is image/bmp"),
    (as_uri(png_claiming(20, 20)), "could not be decoded"),  # a valid header over broken data
])
def test_bad_image_data_is_a_400(vlm_client: TestClient, uri: str, words: str) -> None:
    response = post_run(vlm_client, prompt=QUESTION, images=[uri])
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]


def test_oversize_images_are_refused_before_decoding(vlm_client: TestClient) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    heavy = data_uri(Image.fromarray(noise))  # about 30 kB of PNG: over the 20 000 bytes allowed, in the body limit
    cases = [
        ([heavy], "bytes; this server takes at most 20000 per image"),
        ([data_uri(Image.new("RGB", (300, 150)))], "300×150 = 45000 pixels; this server takes at most 40000"),
        # headers that claim more than the limit over data that could not be decoded: the size answers first
        ([as_uri(png_claiming(3000, 3000))], "3000×3000 = 9000000 pixels"),
        ([as_uri(png_claiming(20000, 20000))], "more pixels than PIL will open"),  # PIL's own bomb limit
        ([data_uri(picture())] * 3, "3 images; this server takes at most 2 per run"),
    ]
    for images, words in cases:
        response = post_run(vlm_client, prompt=QUESTION, images=images)
        assert response.status_code == 413, response.text
        assert words in response.json()["detail"]


def test_a_text_only_model_refuses_images(text_client: TestClient) -> None:
    response = post_run(text_client, prompt=QUESTION, images=[data_uri(picture())])
    assert response.status_code == 400
    assert response.json()["detail"] == ("this server's model (tiny-llama, llama) takes no images: it has no "
                                         "processor (a text-only model); send text only")
    assert post_run(text_client, prompt=QUESTION, images=[]).status_code == 200  # no images: a text run


def test_images_go_with_a_prompt_or_inside_messages(vlm_client: TestClient) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    response = post_run(vlm_client, messages=messages, images=[data_uri(picture())])
    assert response.status_code == 400 and '"images" go with "prompt"' in response.json()["detail"]
    response = post_run(vlm_client, prompt=QUESTION, images=[data_uri(picture())], chat=False)
    assert response.status_code == 400 and 'send "chat": true' in response.json()["detail"]


def test_a_type_traced_on_text_only_says_so() -> None:
    """A model with a processor whose adapter reads no pixels (a text-only load of an image-text checkpoint)."""
    from types import SimpleNamespace

    from spantrace.serve.images import images_refusal

    adapter = SimpleNamespace(name="qwen3_5_text", input_model=lambda: None)
    wrapper = SimpleNamespace(model_id="tiny-qwen3.5", adapter=adapter, processor=object())
    assert images_refusal(wrapper) == ("this server's model (tiny-qwen3.5, qwen3_5_text) is traced on text only: it "
                                       "takes no images here; send text only")
    assert images_refusal(SimpleNamespace(model_id="m", adapter=SimpleNamespace(name="llava", input_model=object),
                                          processor=object())) is None


def test_the_body_limit_makes_room_for_the_images_a_run_may_send(llava: spantrace.Model, tiny_model) -> None:
    """An image within its own limit fits in a request even where it passes ``max_body_bytes``: a model that takes
    images gets the room its image limits promise; a text-only model keeps ``max_body_bytes``."""
    limits = dataclasses.replace(IMAGE_LIMITS, max_body_bytes=12_000, max_image_bytes=20_000)
    noise = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = data_uri(Image.fromarray(noise))  # about 16 kB of base64 for 12 kB of PNG
    assert len(image) > limits.max_body_bytes and len(image) // 4 * 3 <= limits.max_image_bytes
    response = post_run(TestClient(create_app(llava, limits=limits)), prompt=QUESTION, images=[image])
    assert response.status_code == 200, response.text
    response = post_run(TestClient(create_app(tiny_model, limits=limits)), prompt=QUESTION, images=[image])
    assert response.status_code == 413 and "limit of 12000 bytes" in response.json()["detail"]


def test_two_images_side_by_side_are_two_sources(vlm_client: TestClient, llava: spantrace.Model) -> None:
    """The form puts every picked image before the prompt; this LLaVA template writes their markers with nothing
    between them, so the processor's image tokens are one run of 32, cut into one run per image (16 each)."""
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    created = post_run(vlm_client, prompt=QUESTION, images=[data_uri(picture()), data_uri(noise)])
    assert created.status_code == 200, created.text
    run = created.json()
    traced = vlm_client.post(f"/api/runs/{run['run_id']}/trace", json={"span": "answer", "by": "image"})
    assert traced.status_code == 200, traced.text
    first, second = traced.json()["images"]
    assert (first["rows"], first["cols"], len(first["cells"])) == (second["rows"], second["cols"], 16) == (4, 4, 16)
    assert first["cells"][-1]["position"] + 1 == second["cells"][0]["position"]  # back to back, no token between
    assert [row["kind"] for row in traced.json()["sources"]["rows"]] == ["image", "image"]
