"""URL downloads within a size cap, a deadline and 5 redirects; a client's URLs only where a UrlPolicy allows."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# What one image URL may cost; without a policy, the environment variables override the first two for every download.
MAX_IMAGE_BYTES = 50 * 2**20  # BLIPKIT_MAX_IMAGE_BYTES
URL_DEADLINE_SECONDS = 30.0  # BLIPKIT_URL_DEADLINE: connecting, redirects, headers and body together
MAX_REDIRECTS = 5
DOWNLOAD_CHUNK = 2**16

# Cloud metadata services hand out the machine's credentials. Most are link-local or private, refused as such anyway;
# named here so that the refusal says what they are (and 192.0.0.192 is otherwise a "global" address).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "fd00:ec2::254",  # AWS over IPv6
        "169.254.170.2",  # AWS ECS task credentials
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
# The kinds of address a client's URL may not reach, checked in this order (a loopback address is also "reserved").
REFUSED_ADDRESSES = {
    "loopback": "a loopback address",
    "unspecified": "the unspecified address",
    "link_local": "a link-local address",
    "multicast": "a multicast address",
    "reserved": "a reserved address",
    "private": "a private address",
}


class DownloadError(ValueError):
    """A URL whose body was not fetched. ``reason``: "refused" (not http(s), or not where the policy allows),
    "too_large", "timeout" or "failed" (unreachable, an HTTP error, too many redirects)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class UrlPolicy:
    """Where a client's URL may lead and what it may cost: hosts in ``allowed_domains`` or their subdomains, at public
    unicast addresses only. Checked after DNS resolution on every redirect hop, and the connection goes to the very
    address checked: a second lookup could answer differently (DNS rebinding). No proxy is used, for the same reason.

    ``allowed_domains`` are lowercase host names (or IP addresses, matched only as themselves).
    """

    allowed_domains: tuple[str, ...]
    max_bytes: int = MAX_IMAGE_BYTES
    deadline_s: float = URL_DEADLINE_SECONDS

    def allows(self, host: str) -> bool:
        """Whether ``host`` is an allowed domain or a subdomain of one: ``images.example.com`` is in ``example.com``,
        ``evil-example.com`` is not."""
        host = host.lower().rstrip(".")
        if _is_address(host):
            return host in self.allowed_domains
        return any(
            host == domain or (host.endswith("." + domain) and not _is_address(domain))
            for domain in self.allowed_domains
        )

    def connect(self, host: str, port: int, timeout: float | None, what: str) -> socket.socket:
        """A socket connected to ``host``, refused (naming ``what``, the URL) unless the host is allowed and every
        address it resolves to is public."""
        # Non-ASCII names resolve through IDNA, which could map them onto a name other than the one checked.
        if not host.isascii() or not self.allows(host):
            raise DownloadError(
                f"{what}: host {host} is not in the allowed domains ({', '.join(self.allowed_domains)})", "refused"
            )
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise DownloadError(f"{what}: cannot resolve {host} ({e})", "failed") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in found))
        for address in addresses:
            if refusal := address_refusal(address):
                raise DownloadError(f"{what}: {host} is {refusal}", "refused")
        error: OSError | None = None
        for address in addresses:
            try:
                return socket.create_connection((str(address), port), timeout)  # an address: nothing to look up
            except OSError as e:
                error = e
        raise error  # every address refused the connection


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a client's URL may not reach ``address`` ("127.0.0.1, a loopback address"), or None for a public unicast
    address. An IPv4 address carried in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``) is judged as the
    IPv4 address it reaches."""
    embedded = getattr(address, "ipv4_mapped", None) or getattr(address, "sixtofour", None)
    if embedded is not None:
        refusal = address_refusal(embedded)
        return refusal and f"{address} (IPv4 {refusal})"
    if address in METADATA_ADDRESSES:
        return f"{address}, a cloud metadata address"
    for kind, description in REFUSED_ADDRESSES.items():
        if getattr(address, f"is_{kind}"):
            return f"{address}, {description}"
    if not address.is_global:  # shared (carrier-grade NAT), documentation, benchmarking, ... ranges
        return f"{address}, not a publicly routable address"
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def download(url: str, timeout: float = 10.0, policy: UrlPolicy | None = None) -> bytes:
    """The body at ``url`` (http or https), within the size, time and redirect limits; ``timeout`` bounds each socket
    operation. Without a ``policy`` (a user's own URLs) the limits come from the environment and any host is reached
    as urllib reaches it, proxies included; with one (a client's URLs), only what the policy allows, within its limits.
    """
    try:
        scheme = urlsplit(url).scheme
    except ValueError as e:  # such as a "[" that opens no IPv6 address
        raise DownloadError(f"image URL {url} is not a valid URL ({e})", "failed") from None
    if scheme not in ("http", "https"):
        raise DownloadError(f"image URL {url}: only http and https URLs are fetched", "refused")
    if policy is None:
        max_bytes = _positive_setting("BLIPKIT_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES, int)
        seconds = _positive_setting("BLIPKIT_URL_DEADLINE", URL_DEADLINE_SECONDS, float)
        size_setting, time_setting = " (BLIPKIT_MAX_IMAGE_BYTES)", " (BLIPKIT_URL_DEADLINE)"
        proxies = []
    else:
        max_bytes, seconds = policy.max_bytes, policy.deadline_s
        size_setting = time_setting = ""
        proxies = [urllib.request.ProxyHandler({})]
    request = urllib.request.Request(url)
    with _Deadline(seconds) as deadline:
        opener = urllib.request.build_opener(
            *proxies,
            _LimitedRedirects(url),
            _WatchedHTTPHandler(deadline, request, policy),
            _WatchedHTTPSHandler(deadline, request, policy),
        )
        try:
            with opener.open(request, timeout=min(timeout, seconds)) as response:
                data = _read_capped(response, url, max_bytes, size_setting)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a redirect to a malformed URL
            if not deadline.expired:
                raise DownloadError(f"cannot download image {url}: {e}", "failed") from None
    # A connection shut down by the deadline may also look like a body that simply ended.
    if deadline.expired:
        raise DownloadError(f"image URL {url} took longer than the {seconds:g} s limit{time_setting}", "timeout")
    return data


def _positive_setting(variable: str, default: float, kind: type) -> Any:
    raw = os.environ.get(variable)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{variable} must be a positive, finite {kind.__name__}, got {raw!r}")
    return value


def _read_capped(response: http.client.HTTPResponse, url: str, max_bytes: int, setting: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise DownloadError(
            f"image URL {url} is {int(declared)} bytes, over the {max_bytes}-byte limit{setting}", "too_large"
        )
    chunks, size = [], 0
    # One byte past the limit is enough to know the body breaks it.
    while size <= max_bytes and (chunk := response.read(min(DOWNLOAD_CHUNK, max_bytes + 1 - size))):
        chunks.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise DownloadError(f"image URL {url} sends more than the {max_bytes}-byte limit{setting}", "too_large")
    return b"".join(chunks)


class _Deadline:
    """One download's time limit. When it passes, every connection the download opened is shut down, which ends
    any read waiting on it: a per-socket timeout alone lets a server that trickles a byte a second hold a worker
    for ever."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedConnections:
    """Mixed into urllib's HTTP(S) handlers: each connection, once open, is put under the download's deadline; under
    a policy, the policy opens it (to a checked address of an allowed host), on the first request and every redirect.
    """

    def __init__(
        self, deadline: _Deadline, first: urllib.request.Request, policy: UrlPolicy | None, **handler_options: Any
    ) -> None:
        super().__init__(**handler_options)
        self.deadline = deadline
        self.first = first
        self.policy = policy

    def do_open(self, http_class: type, req: urllib.request.Request, **connection_options: Any):
        deadline, policy = self.deadline, self.policy
        what = f"image URL {self.first.full_url}" + ("" if req is self.first else f" redirects to {req.full_url}")

        class WatchedConnection(http_class):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                if policy is not None:
                    # http.client's own seam for opening the socket; HTTPS then wraps the checked socket, verifying
                    # the certificate against the host name.
                    self._create_connection = lambda address, timeout, *_: policy.connect(*address, timeout, what)

            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return super().do_open(WatchedConnection, req, **connection_options)


class _WatchedHTTPHandler(_WatchedConnections, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPSHandler(_WatchedConnections, urllib.request.HTTPSHandler):
    pass


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``MAX_REDIRECTS`` redirects, to http(s) URLs only (urllib's own follows ten, and ftp)."""

    # urllib's loop detection would otherwise answer first, with a less telling message.
    max_repeats = max_redirections = MAX_REDIRECTS + 1

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.redirects = 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.redirects += 1
        if urlsplit(newurl).scheme not in ("http", "https"):
            fp.close()
            raise DownloadError(
                f"image URL {self.url} redirects to {newurl}: only http and https URLs are followed", "refused"
            )
        if self.redirects > MAX_REDIRECTS:
            fp.close()
            raise DownloadError(f"image URL {self.url} redirects more than {MAX_REDIRECTS} times", "failed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
