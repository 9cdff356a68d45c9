"""The server's limits: flags, texts, image counts, decoded images (decompression bombs), references, body size."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blipkit.processing.image import load_image, to_rgb
from blipkit.serve.limits import (
    BodySizeLimit,
    Limits,
    RequestRefused,
    check_image_count,
    check_text,
    decode_image,
    image_from_reference,
)
from tests.conftest import IMAGES

SMALL = Limits(max_images=3, max_pixels=1000, max_text_chars=10)


def refused(call, *args) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        call(*args)
    return caught.value


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


# --- flags -----------------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipkit serve")
    Limits.add_arguments(parser)
    return parser


def test_every_limit_is_on_by_default_and_image_urls_off():
    limits = Limits.from_arguments(parser().parse_args([]))
    assert limits == Limits()
    assert limits.allow_url_domains == ()
    assert all(value > 0 for name, value in vars(limits).items() if name != "allow_url_domains")


def test_the_flags_set_the_limits():
    flags = {"--max-body-bytes": "1000", "--max-images": "2", "--max-pixels": "3000", "--max-text-chars": "40",
             "--allow-url-domains": " Example.com., cdn.example.org ,", "--max-url-bytes": "500",
             "--url-deadline-s": "2.5"}  # fmt: skip
    args = parser().parse_args([word for flag in flags.items() for word in flag])
    assert Limits.from_arguments(args) == Limits(1000, 2, 3000, 40, ("example.com", "cdn.example.org"), 500, 2.5)
    assert Limits.from_arguments(parser().parse_args(["--allow-url-domains", ""])).allow_url_domains == ()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-images", "0", "expected a positive int, got '0'"),
        ("--max-pixels", "many", "expected a positive int, got 'many'"),
        ("--url-deadline-s", "inf", "expected a positive float, got 'inf'"),
        ("--allow-url-domains", "https://example.com", "expected lowercase host names such as example.com"),
        ("--allow-url-domains", "*.example.com", "expected lowercase host names such as example.com"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([flag, value])
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_limits_made_in_python_are_checked_too():
    with pytest.raises(ValueError, match="--max-pixels must be a positive number, got 0"):
        Limits(max_pixels=0)
    with pytest.raises(ValueError, match="--allow-url-domains: expected lowercase host names .*, got 'Example.com'"):
        Limits(allow_url_domains=("Example.com",))


# --- texts and image counts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_text_is_refused(text):
    error = refused(check_text, text, SMALL, "question")
    assert (error.status, error.kind, error.message) == (422, "invalid_text", "question is empty")


def test_a_text_over_the_limit_is_refused():
    check_text("x" * 10, SMALL, "prompt")
    error = refused(check_text, "x" * 11, SMALL, "prompt")
    assert (error.status, error.kind) == (422, "invalid_text")
    assert error.message == "prompt is 11 characters, over the 10-character limit (--max-text-chars)"


def test_image_counts():
    check_image_count(3, SMALL)
    error = refused(check_image_count, 0, SMALL)
    assert (error.status, error.kind, error.message) == (422, "invalid_request", "no images given: give at least one")
    error = refused(check_image_count, 4, SMALL)
    assert (error.status, error.kind) == (413, "payload_too_large")
    assert error.message == "4 images in one request, over the limit of 3 (--max-images)"


# --- decoded images --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", IMAGES, ids=[path.name for path in IMAGES])
def test_an_image_decodes_as_load_image_decodes_it(path):
    data = path.read_bytes()
    image = decode_image(data, Limits())
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(to_rgb(load_image(data))))


def test_transparency_is_composited_over_white_as_the_pipelines_do():
    image = decode_image(encoded(Image.new("RGBA", (4, 3), (255, 0, 0, 128))), Limits())
    assert image.getpixel((0, 0)) == (255, 127, 127)


@pytest.mark.parametrize(
    "data",
    [b"hello, world", b"", encoded(Image.new("L", (8, 8))).replace(b"PNG", b"PNX")],
    ids=["text", "empty", "bad-signature"],
)
def test_what_is_not_an_image_is_refused(data):
    error = refused(decode_image, data, Limits())
    assert (error.status, error.kind) == (415, "unsupported_media_type")
    assert error.message == f"image ({len(data)} bytes) is not a JPEG, PNG, WEBP, GIF or BMP file"


# Pillow reads these, the server does not: EPS goes through Ghostscript.
@pytest.mark.parametrize(
    "data",
    [encoded(Image.new("RGB", (8, 8)), "TIFF"), encoded(Image.new("RGB", (8, 8)), "PPM"), b"%!PS-Adobe-3.0 EPSF-3.0\n"],
    ids=["tiff", "ppm", "eps"],
)
def test_formats_the_server_does_not_read_are_refused(data):
    assert refused(decode_image, data, Limits()).status == 415


def test_a_truncated_image_is_refused():
    data = IMAGES[0].read_bytes()
    error = refused(decode_image, data[: len(data) // 2], Limits())
    assert (error.status, error.kind) == (422, "invalid_image")
    assert error.message.startswith("cannot read image <bytes>: the file is truncated or corrupt")
    error = refused(decode_image, encoded(Image.new("L", (8, 8)))[:20], Limits())  # the header itself cut short
    assert (error.status, error.kind) == (422, "invalid_image")
    assert error.message.startswith("image is a PNG file whose header is truncated or corrupt")


def test_an_image_over_the_pixel_limit_is_refused():
    decode_image(encoded(Image.new("RGB", (40, 25))), SMALL)
    error = refused(decode_image, encoded(Image.new("RGB", (40, 26))), SMALL)
    assert (error.status, error.kind) == (413, "payload_too_large")
    assert error.message == "image is 40x26 = 1040 pixels, over the 1000-pixel limit (--max-pixels)"


def png_bomb(width: int, height: int) -> bytes:
    """A black RGB PNG, written a row at a time: the file is small, its pixels are not (never held here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter type 0, then the row's pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # start of frame: marker, length, precision, height, width
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def peak_memory_growth(action) -> int:
    """Bytes the process's peak resident memory rose by during ``action`` (Linux: the peak is reset first)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc to measure peak memory")
    clear_refs.write_text("5")  # resets the peak (VmHWM) to the memory resident now
    before = _peak_kib()
    action()
    return (_peak_kib() - before) * 1024


def _peak_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def test_the_memory_meter_sees_an_allocation():
    assert peak_memory_growth(lambda: b"x" * (64 * 2**20)) > 60 * 2**20


@pytest.mark.parametrize("bomb", [png_bomb(12000, 12000), jpeg_claiming(12000, 12000)], ids=["png", "jpeg-header"])
def test_a_decompression_bomb_is_refused_before_decoding(bomb, recwarn):
    assert len(bomb) < 2**20
    errors = []
    growth = peak_memory_growth(lambda: errors.append(refused(decode_image, bomb, Limits())))
    assert (errors[0].status, errors[0].kind) == (413, "payload_too_large")
    assert errors[0].message == "image is 12000x12000 = 144000000 pixels, over the 50000000-pixel limit (--max-pixels)"
    assert growth < 50 * 2**20  # decoded, it would take 432 MB
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# --- references: base64, data: URLs, and nothing from the server's disk ---------------------------------------------


def test_base64_and_data_urls_are_read():
    data = IMAGES[1].read_bytes()
    expected = np.asarray(decode_image(data, Limits()))
    encoded = base64.b64encode(data).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # as MIME encoders write it
    for ref in (encoded, wrapped, f"data:image/png;base64,{encoded}", f"DATA:Image/PNG;charset=x;BASE64,{wrapped}"):
        assert np.array_equal(np.asarray(image_from_reference(ref, Limits())), expected)


def test_a_data_url_must_be_a_base64_image():
    error = refused(image_from_reference, "data:text/plain;base64,aGVsbG8=", Limits())
    assert (error.status, error.kind) == (415, "unsupported_media_type")
    assert error.message == "a data: URL of type 'text/plain': give an image/* one"
    error = refused(image_from_reference, "data:image/png,%89PNG", Limits())
    assert (error.status, error.kind) == (422, "invalid_image")
    assert error.message == "data: URL 'data:image/png,%89PNG' does not hold base64 (data:image/png;base64,...)"


@pytest.mark.parametrize(
    "ref",
    [
        str(IMAGES[0]),  # a real image on the server's disk
        IMAGES[0].as_uri(),
        "/etc/passwd",
        "../../etc/passwd",
        "~/photo.jpg",
        "C:\\photos\\photo.jpg",
        "ftp://example.com/photo.jpg",
        "gopher://example.com/photo.jpg",
        "not base64!",
    ],
)
def test_paths_and_other_schemes_are_refused(ref):
    error = refused(image_from_reference, ref, Limits(allow_url_domains=("example.com",)))
    assert (error.status, error.kind) == (422, "invalid_image")
    assert error.message.endswith("is not base64, a data: URL or an http(s) URL (no endpoint reads the server's files)")


def test_a_long_bad_reference_is_quoted_short():
    error = refused(image_from_reference, "!" * 10_000, Limits())
    assert error.message.startswith(f"image '{'!' * 60}...' is not base64")


# --- the request body ------------------------------------------------------------------------------------------------


async def echo(scope, receive, send):
    """A plain ASGI app: answers 200 with the body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def answers_its_own_error(scope, receive, send):
    """Like FastAPI, turns a failure to read the body into a response of its own (a 400)."""
    try:
        await echo(scope, receive, lambda message: None)
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"There was an error parsing the body"})


def post(app, chunks, headers=()):
    """Sends ``chunks`` as one request body; returns (status, headers, body, how many chunks were read)."""
    read, sent = [], []

    async def receive():
        read.append(chunks[len(read)])
        return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/caption", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], dict(start["headers"]), body, len(read)


def refusal_body(message):
    return json.dumps({"error": {"type": "payload_too_large", "message": message}}).encode()


def test_a_body_under_the_limit_passes_through_unchanged():
    chunks = [b"a" * 400, b"b" * 400, b"c" * 200]
    assert post(BodySizeLimit(echo, 1000), chunks) == (200, {}, b"".join(chunks), 3)
    assert post(BodySizeLimit(echo, 1000), chunks, [(b"content-length", b"1000")])[:2] == (200, {})


def test_a_declared_content_length_over_the_limit_is_refused_unread():
    status, headers, body, read = post(BodySizeLimit(echo, 1000), [b"x" * 1001], [(b"content-length", b"1001")])
    assert (status, read) == (413, 0)
    assert body == refusal_body("request body is 1001 bytes, over the 1000-byte limit (--max-body-bytes)")
    assert headers[b"content-type"] == b"application/json" and headers[b"connection"] == b"close"


@pytest.mark.parametrize("app", [echo, answers_its_own_error])
@pytest.mark.parametrize("headers", [[], [(b"content-length", b"10")]], ids=["chunked", "lying-length"])
def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(app, headers):
    status, _, body, read = post(BodySizeLimit(app, 1000), [b"x" * 400] * 10, headers)
    assert (status, read) == (413, 3)  # 1200 bytes read of 4000: the rest never is
    assert body == refusal_body("request body is over the 1000-byte limit (--max-body-bytes)")


def test_other_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(app, 1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_body_size_limit_in_front_of_fastapi():
    fastapi = pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    app = fastapi.FastAPI()

    @app.post("/v1/caption")
    async def caption(payload: dict):  # FastAPI reads and parses the body itself
        return {"keys": sorted(payload)}

    async def send_all():
        transport = httpx.ASGITransport(app=BodySizeLimit(app, 1000))
        async with httpx.AsyncClient(transport=transport, base_url="http://blipkit") as client:

            async def chunked():
                for _ in range(10):
                    yield b" " * 400

            return [
                await client.post("/v1/caption", json={"images": []}),
                await client.post("/v1/caption", content=b" " * 1001),
                await client.post("/v1/caption", content=chunked()),
            ]

    fits, declared, streamed = asyncio.run(send_all())
    assert (fits.status_code, fits.json()) == (200, {"keys": ["images"]})
    assert (declared.status_code, declared.json()["error"]["type"]) == (413, "payload_too_large")
    assert (streamed.status_code, streamed.json()["error"]["type"]) == (413, "payload_too_large")
