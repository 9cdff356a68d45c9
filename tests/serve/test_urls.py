"""Image URLs from clients: off by default; on, only allowed domains at public addresses, on every redirect hop."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import ipaddress
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from blipkit.processing.fetch import DownloadError, UrlPolicy, address_refusal, download
from blipkit.serve.limits import Limits, RequestRefused, image_from_reference
from tests.conftest import IMAGES

PHOTO = IMAGES[0].read_bytes()
PUBLIC = "93.184.215.14"  # a public address; the fake network routes it to the local server
# The fake network's DNS: what each name resolves to.
NAMES = {
    "images.example.com": [PUBLIC],
    "cdn.images.example.com": [PUBLIC],
    "internal.example.com": ["127.0.0.1"],
    "private.example.com": ["10.1.2.3"],
    "link-local.example.com": ["169.254.10.20"],
    "metadata.example.com": ["169.254.169.254"],
    "metadata6.example.com": ["fd00:ec2::254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "mapped-metadata.example.com": ["::ffff:169.254.169.254"],
    "sixtofour.example.com": ["2002:7f00:1::"],
    "loopback6.example.com": ["::1"],
    "cgnat.example.com": ["100.64.0.1"],
    "mixed.example.com": [PUBLIC, "10.0.0.5"],  # one private address among public ones is enough to refuse
}
ALLOWED = Limits(allow_url_domains=("example.com",), max_url_bytes=100_000)


class ImageServer(http.server.BaseHTTPRequestHandler):
    """/photo, /redirect?to=URL, /big (declares too many bytes), /trickle (a byte every 50 ms)."""

    def do_GET(self):
        self.server.seen.append(self.path)
        route = urlsplit(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            if route.path == "/photo":
                self.answer(200, {"Content-Length": len(PHOTO)}, PHOTO)
            elif route.path == "/redirect":
                self.answer(302, {"Location": parse_qs(route.query)["to"][0], "Content-Length": 0})
            elif route.path == "/big":
                self.answer(200, {"Content-Length": ALLOWED.max_url_bytes + 1})
            elif route.path == "/trickle":
                self.answer(200, {"Content-Length": 60})
                for _ in range(60):  # 3 s in all, far past the deadline
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)

    def answer(self, status, headers, body=b""):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """The local server: its port and the paths it was asked for."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageServer) as httpd:
        httpd.daemon_threads = True
        httpd.seen = []
        thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)  # quick to shut down
        thread.start()
        yield httpd
        httpd.shutdown()


@pytest.fixture
def network(monkeypatch, server):
    """A fake network, no internet: DNS answers from NAMES, and the public address routes to the local server.
    Returns every lookup made, in order."""
    lookups = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        lookups.append(host)
        if host == PUBLIC:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", server.server_port))]
        if host in NAMES:
            return [_entry(address, port) for address in NAMES[host]]
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return real(host, port, family, type, proto, flags)  # an address: nothing to look up
        raise socket.gaierror(socket.EAI_NONAME, f"{host} is not on the fake network")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def _entry(address, port):
    if ipaddress.ip_address(address).version == 4:
        return socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port)
    return socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0)


def refusal(ref, limits=ALLOWED) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        image_from_reference(ref, limits)
    return caught.value


def same_as_photo(image):
    return np.array_equal(np.asarray(image), np.asarray(Image.open(IMAGES[0]).convert("RGB")))


def test_image_urls_are_off_by_default(network, server):
    refused = refusal("http://images.example.com/photo", Limits())
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert refused.message == (
        "image URL 'http://images.example.com/photo' refused: image URLs are off on this server "
        "(--allow-url-domains enables them for chosen domains); send the image as base64 or a data: URL"
    )
    assert network == [] and server.seen == []


def test_an_allowed_domain_is_fetched_from_the_address_it_resolved_to(network, server):
    assert same_as_photo(image_from_reference("http://images.example.com/photo", ALLOWED))
    assert network == ["images.example.com", PUBLIC]  # one lookup of the name; the connection goes to its address
    assert server.seen == ["/photo"]


def test_a_name_is_resolved_once_so_a_second_answer_cannot_rebind_it(network, server, monkeypatch):
    answers = iter([[PUBLIC], ["127.0.0.1"]])  # an attacker's DNS: public when checked, loopback after
    fake = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example.com":
            return fake(host, port, *args, **kwargs)
        network.append(host)
        return [_entry(address, port) for address in next(answers)]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert same_as_photo(image_from_reference("http://rebind.example.com/photo", ALLOWED))
    assert network == ["rebind.example.com", PUBLIC]


def test_a_domain_not_listed_is_refused_before_any_lookup(network, server):
    refused = refusal("http://images.example.org/photo")
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert refused.message == (
        "image URL http://images.example.org/photo: host images.example.org is not in the allowed domains (example.com)"
    )
    assert network == [] and server.seen == []


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("example.com", True),
        ("images.example.com", True),
        ("a.b.example.com", True),
        ("Images.EXAMPLE.com.", True),  # names are case-insensitive; a trailing dot is the same name
        ("evil-example.com", False),
        ("notexample.com", False),
        ("example.com.evil.net", False),
        ("example.co", False),
        ("com", False),
        ("93.184.215.14", False),
    ],
)
def test_a_domain_covers_itself_and_its_subdomains_only(host, allowed):
    assert UrlPolicy(("example.com",)).allows(host) is allowed


def test_an_ip_address_in_the_list_matches_only_itself():
    assert UrlPolicy(("93.184.215.14",)).allows("93.184.215.14")
    assert not UrlPolicy(("93.184.215.14",)).allows("1.93.184.215.14")  # a name, not a subdomain of an address
    assert not UrlPolicy(("0.1",)).allows("10.0.0.1")  # an address, in no domain


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_a_local_server_is_refused_even_when_allowed_by_name(server, name):
    """No fake network here: the real resolver, the real local server."""
    url = f"http://{name}:{server.server_port}/photo"
    refused = refusal(url, Limits(allow_url_domains=(name,)))
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert refused.message.startswith(f"image URL {url}: {name} is ")
    assert refused.message.endswith(("127.0.0.1, a loopback address", "::1, a loopback address"))
    assert server.seen == []


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://internal.example.com:{port}/photo", "internal.example.com is 127.0.0.1, a loopback address"),
        ("http://127.0.0.1:{port}/photo", "host 127.0.0.1 is not in the allowed domains (example.com)"),
        ("http://localhost:{port}/photo", "host localhost is not in the allowed domains (example.com)"),
        ("http://metadata.example.com/latest/", "metadata.example.com is 169.254.169.254, a cloud metadata address"),
        ("https://internal.example.com/photo", "internal.example.com is 127.0.0.1, a loopback address"),
    ],
)
def test_a_redirect_is_checked_on_the_hop(network, server, target, why):
    target = target.format(port=server.server_port)
    url = f"http://images.example.com/redirect?to={target}"
    refused = refusal(url)
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert refused.message == f"image URL {url} redirects to {target}: {why}"
    assert server.seen == [f"/redirect?to={target}"]  # the first hop only


def test_a_redirect_to_a_file_or_ftp_is_refused(network, server):
    url = "http://images.example.com/redirect?to=ftp://images.example.com/photo.jpg"
    refused = refusal(url)
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert (
        refused.message
        == f"image URL {url} redirects to ftp://images.example.com/photo.jpg: only http and https URLs are followed"
    )
    # urllib itself refuses to follow a redirect to a file, before any handler sees it.
    url = "http://images.example.com/redirect?to=file:///etc/passwd"
    refused = refusal(url)
    assert (refused.status, refused.kind) == (422, "url_failed")
    assert refused.message.endswith("Redirection to url 'file:///etc/passwd' is not allowed")


@pytest.mark.parametrize("url", ["http://[::1/photo", "http://images.example.com/redirect?to=http://[::1/photo"])
def test_a_malformed_url_fails(network, url):
    refused = refusal(url)
    assert (refused.status, refused.kind) == (422, "url_failed")
    assert "Invalid IPv6 URL" in refused.message


def test_a_redirect_between_allowed_public_hosts_is_followed(network, server):
    url = "http://images.example.com/redirect?to=http://cdn.images.example.com/photo"
    assert same_as_photo(image_from_reference(url, ALLOWED))
    assert network == ["images.example.com", PUBLIC, "cdn.images.example.com", PUBLIC]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("private", "10.1.2.3, a private address"),
        ("link-local", "169.254.10.20, a link-local address"),
        ("metadata", "169.254.169.254, a cloud metadata address"),
        ("metadata6", "fd00:ec2::254, a cloud metadata address"),
        # Python before 3.13 writes an IPv4-mapped address in hexadecimal (::ffff:7f00:1).
        ("mapped", f"{ipaddress.ip_address('::ffff:127.0.0.1')} (IPv4 127.0.0.1, a loopback address)"),
        (
            "mapped-metadata",
            f"{ipaddress.ip_address('::ffff:a9fe:a9fe')} (IPv4 169.254.169.254, a cloud metadata address)",
        ),
        ("sixtofour", "2002:7f00:1:: (IPv4 127.0.0.1, a loopback address)"),
        ("loopback6", "::1, a loopback address"),
        ("cgnat", "100.64.0.1, not a publicly routable address"),
        ("mixed", "10.0.0.5, a private address"),
    ],
)
def test_a_name_that_resolves_to_a_refused_address_is_refused(network, server, name, why):
    url = f"http://{name}.example.com/photo"
    refused = refusal(url)
    assert (refused.status, refused.kind) == (422, "url_not_allowed")
    assert refused.message == f"image URL {url}: {name}.example.com is {why}"
    assert server.seen == []


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("192.168.1.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("fc00::1", "a private address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("192.0.0.192", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
    ],
)
def test_refused_addresses(address, why):
    assert address_refusal(ipaddress.ip_address(address)) == f"{address}, {why}"


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_a_fetched_image_is_held_to_the_size_limit(network, server):
    refused = refusal("http://images.example.com/big")
    assert (refused.status, refused.kind) == (413, "payload_too_large")
    assert refused.message == (
        "image URL http://images.example.com/big is 100001 bytes, over the 100000-byte limit (--max-url-bytes)"
    )


def test_a_fetched_image_is_held_to_the_deadline(network, server):
    started = time.monotonic()
    refused = refusal("http://images.example.com/trickle", dataclasses.replace(ALLOWED, url_deadline_s=0.5))
    assert (refused.status, refused.kind) == (504, "url_timeout")
    assert (
        refused.message
        == "image URL http://images.example.com/trickle took longer than the 0.5 s limit (--url-deadline-s)"
    )
    assert time.monotonic() - started < 2.5  # stopped by the deadline, not by the end of the body


def test_the_policy_ignores_the_environment_and_proxies(network, server, monkeypatch):
    """The user's settings for their own downloads do not loosen or redirect a client's: a proxy would connect to
    the address instead of the checked one."""
    monkeypatch.setenv("BLIPKIT_MAX_IMAGE_BYTES", "10")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert same_as_photo(image_from_reference("http://images.example.com/photo", ALLOWED))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example.com/photo.jpg"])
def test_download_fetches_http_and_https_only(url):
    with pytest.raises(DownloadError, match=f"image URL {url}: only http and https URLs are fetched") as caught:
        download(url, policy=UrlPolicy(("example.com",)))
    assert caught.value.reason == "refused"


def test_an_unknown_host_fails(network):
    refused = refusal("http://nowhere.example.com/photo")
    assert (refused.status, refused.kind) == (422, "url_failed")
    assert refused.message.startswith("image URL http://nowhere.example.com/photo: cannot resolve nowhere.example.com")
