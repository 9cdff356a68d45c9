"""What one request may cost the server, and the checks that refuse the rest before it costs anything."""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import math
import re
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image, ImageFile

from blipkit.processing.fetch import DownloadError, UrlPolicy, download
from blipkit.processing.image import ImageError, load_image, to_rgb

# Image formats a client may send: the web's. Pillow reads dozens more, some through rarely exercised decoders (and
# EPS through Ghostscript): attack surface a server has no need for.
SERVED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
DOMAINS_EXPECTED = "lowercase host names such as example.com (which covers its subdomains) or IP addresses"
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")  # never base64, which has no ":"
SHOWN_CHARS = 60  # of a bad reference, quoted in its error: enough to recognise, not a megabyte echoed back
# How a failed download is answered: status, error type, and the flag that sets the limit it broke.
DOWNLOAD_REFUSALS = {
    "refused": (422, "url_not_allowed", ""),
    "too_large": (413, "payload_too_large", " (--max-url-bytes)"),
    "timeout": (504, "url_timeout", " (--url-deadline-s)"),
    "failed": (422, "url_failed", ""),
}

# Each limit's flag: its metavar and help.
FLAGS = {
    "max_body_bytes": (
        "N",
        "request body size, counted as it arrives, chunked uploads included (413; default %(default)s)",
    ),
    "max_images": ("N", "images per request (413; default %(default)s)"),
    "max_pixels": ("N", "pixels per image, read from its header before decoding (413; default %(default)s)"),
    "max_text_chars": ("N", "characters per prompt, question or text (422; default %(default)s)"),
    "allow_url_domains": (
        "DOMAINS",
        "comma-separated domains whose http(s) image URLs are fetched, subdomains included, at public addresses only; "
        "empty (the default): image URLs are refused",
    ),
    "max_url_bytes": ("N", "bytes per fetched image URL (413; default %(default)s)"),
    "url_deadline_s": (
        "SECONDS",
        "per fetched image URL: connecting, redirects and body together (504; default %(default)s)",
    ),
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestRefused(Exception):
    """A request the server will not run: ``status`` (HTTP), ``kind`` (the JSON error's "type") and ``message``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON error body: ``{"error": {"type", "message"}}``."""
        return {"error": {"type": self.kind, "message": self.message}}


@dataclass(frozen=True)
class Limits:
    """What one request may cost. All on by default; image URLs are off until ``allow_url_domains`` names some."""

    max_body_bytes: int = 32 * 2**20  # 8 phone photos in base64 (4/3 of their size) and change
    max_images: int = 16
    max_pixels: int = 50_000_000  # a 48-megapixel phone photo passes; decoded in RGB it takes 150 MB
    max_text_chars: int = 2000  # past the 512 tokens BLIP reads
    allow_url_domains: tuple[str, ...] = ()
    max_url_bytes: int = 16 * 2**20
    url_deadline_s: float = 10.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "allow_url_domains":
                if bad := [domain for domain in value if not _is_domain(domain)]:
                    raise ValueError(f"--allow-url-domains: expected {DOMAINS_EXPECTED}, got {bad[0]!r}")
            elif not _is_positive(value):
                raise ValueError(f"{_flag(field.name)} must be a positive number, got {value!r}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field: ``--max-body-bytes`` sets ``max_body_bytes``, and so on."""
        group = parser.add_argument_group("limits", "what one request may cost (all on by default)")
        defaults = cls()
        for field in fields(cls):
            default = getattr(defaults, field.name)
            metavar, text = FLAGS[field.name]
            parse = _domains if field.name == "allow_url_domains" else _positive(type(default))
            group.add_argument(_flag(field.name), type=parse, default=default, metavar=metavar, help=text)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Limits:
        """The limits ``add_arguments``' flags set."""
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_positive(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a positive, finite ``kind``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not _is_positive(value):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _domains(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated domains, as lowercase host names."""
    domains = tuple(domain for part in text.split(",") if (domain := part.strip().lower().rstrip(".")))
    for domain in domains:
        if not _is_domain(domain):
            raise argparse.ArgumentTypeError(f"expected {DOMAINS_EXPECTED}, got {domain!r}")
    return domains


def _is_domain(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return HOST_NAME.fullmatch(domain) is not None
    return True


def check_text(text: str, limits: Limits, what: str) -> None:
    """Refuses (422) an empty ``text``, or one longer than ``max_text_chars``; ``what`` names it ("question")."""
    if not text.strip():
        raise RequestRefused(422, "invalid_text", f"{what} is empty")
    if len(text) > limits.max_text_chars:
        raise RequestRefused(
            422,
            "invalid_text",
            f"{what} is {len(text)} characters, over the {limits.max_text_chars}-character limit (--max-text-chars)",
        )


def check_image_count(n: int, limits: Limits) -> None:
    """Refuses a request with no image (422) or more than ``max_images`` (413)."""
    if n == 0:
        raise RequestRefused(422, "invalid_request", "no images given: give at least one")
    if n > limits.max_images:
        raise RequestRefused(
            413, "payload_too_large", f"{n} images in one request, over the limit of {limits.max_images} (--max-images)"
        )


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """``data`` decoded as ``load_image`` decodes it, in RGB as the pipelines see it, once its header shows a served
    format of at most ``max_pixels`` pixels: a decompression bomb (a small file of huge size) is refused before its
    pixels take any memory."""
    with _header(data) as header:
        width, height = header.size
    if width * height > limits.max_pixels:
        raise RequestRefused(
            413,
            "payload_too_large",
            f"image is {width}x{height} = {width * height} pixels, over the {limits.max_pixels}-pixel limit "
            "(--max-pixels)",
        )
    try:
        return to_rgb(load_image(data))
    except ImageError as e:
        raise RequestRefused(422, "invalid_image", str(e)) from None


def _header(data: bytes) -> ImageFile.ImageFile:
    """``data`` opened, not decoded, by the plugin of the served format whose signature it starts with.

    Not ``Image.open``: over Pillow's own limit it warns (DecompressionBombWarning) about an image that ``max_pixels``
    refuses anyway, and a process-wide warning filter is no place to silence it: images are decoded in worker threads.
    """
    Image.init()
    for name in SERVED_FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        if accept is not None and accept(data[:16]) is True:  # a string is Pillow explaining why not
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, OSError, ValueError, IndexError, TypeError, EOFError, struct.error) as e:
                raise RequestRefused(
                    422, "invalid_image", f"image is a {name} file whose header is truncated or corrupt ({e})"
                ) from None
    raise RequestRefused(
        415,
        "unsupported_media_type",
        f"image ({len(data)} bytes) is not a {', '.join(SERVED_FORMATS[:-1])} or {SERVED_FORMATS[-1]} file",
    )


def image_from_reference(ref: str, limits: Limits) -> Image.Image:
    """The image a request names: base64, a ``data:image/...`` URL, or an http(s) URL on an allowed domain.

    Nothing else - no path, no ``file:`` URL, no other scheme: no endpoint reads the server's files.
    """
    scheme = match.group(1).lower() if (match := SCHEME.match(ref)) else None
    if scheme == "data":
        return decode_image(_data_url(ref), limits)
    if scheme in ("http", "https"):
        return decode_image(_fetch(ref, limits), limits)
    data = None if scheme else _base64(ref)
    if data is None:
        raise RequestRefused(
            422,
            "invalid_image",
            f"image {_shown(ref)} is not base64, a data: URL or an http(s) URL (no endpoint reads the server's files)",
        )
    return decode_image(data, limits)


def _data_url(ref: str) -> bytes:
    header, _, payload = ref.partition(",")
    media_type, *parameters = header[len("data:") :].split(";")
    if not media_type.lower().startswith("image/"):
        raise RequestRefused(
            415, "unsupported_media_type", f"a data: URL of type {media_type or 'text/plain'!r}: give an image/* one"
        )
    data = _base64(payload) if "base64" in (parameter.strip().lower() for parameter in parameters) else None
    if data is None:
        raise RequestRefused(
            422, "invalid_image", f"data: URL {_shown(ref)} does not hold base64 (data:{media_type};base64,...)"
        )
    return data


def _base64(text: str) -> bytes | None:
    """``text`` decoded from base64 (line breaks, as some encoders add, ignored), or None if it is not base64."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def _fetch(url: str, limits: Limits) -> bytes:
    if not limits.allow_url_domains:
        raise RequestRefused(
            422,
            "url_not_allowed",
            f"image URL {_shown(url)} refused: image URLs are off on this server (--allow-url-domains enables them "
            "for chosen domains); send the image as base64 or a data: URL",
        )
    policy = UrlPolicy(limits.allow_url_domains, limits.max_url_bytes, limits.url_deadline_s)
    try:
        return download(url, limits.url_deadline_s, policy)
    except DownloadError as e:
        status, kind, flag = DOWNLOAD_REFUSALS[e.reason]
        raise RequestRefused(status, kind, f"{e}{flag}") from None


class BodySizeLimit:
    """ASGI middleware: answers 413 to a request whose body is over ``max_bytes``, counted as it arrives - refused
    before reading when its Content-Length says so, and as soon as it passes the limit when it has none (chunked).
    Nothing is buffered here: the app reads the body as it would without it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = f"the {self.max_bytes}-byte limit (--max-body-bytes)"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(
                send, RequestRefused(413, "payload_too_large", f"request body is {int(declared)} bytes, over {limit}")
            )
            return
        received = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge  # the app stops reading; whatever it makes of that, the 413 replaces
            return message

        async def unless_refused(message: Message) -> None:
            nonlocal started
            if not refused:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise
        # A response the app began before the body broke the limit cannot be taken back: the server ends it.
        if refused and not started:
            await _answer(send, RequestRefused(413, "payload_too_large", f"request body is over {limit}"))


class _BodyTooLarge(Exception):
    """Raised into the app when the body it reads passes the limit."""


async def _answer(send: Send, refused: RequestRefused) -> None:
    body = json.dumps(refused.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read, so the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
