"""Limits on what one input may cost: generation lengths, downloaded images, pixel values, huge JPEGs."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time

import pytest
import torch
from PIL import Image

import blipkit
from blipkit.generation.cache import KVCache
from blipkit.modeling.qformer import QFormerTextEmbeddings
from blipkit.processing.image import BlipImageProcessor, BlipImageProcessorFast, ImageError, load_image
from tests.builders.configs import IMAGE_TOKEN, QUERIES
from tests.builders.models import reference_blip2
from tests.conftest import IMAGES
from tests.reference import perturb_, save_reference

# --- generation: caches and beams grow with what is generated, not with max_new_tokens ----------------------------

EOS = 1
TINY_T5 = {"model_type": "t5", "vocab_size": 99, "d_model": 32, "d_kv": 6, "d_ff": 37, "num_layers": 2,
           "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
           "dropout_rate": 0.0, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu",
           "tie_word_embeddings": False}  # fmt: skip
# More than any machine's memory: a buffer sized for it up front fails at once (too big to allocate at all).
UNREACHABLE = 10**12


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """A tiny reference Flan-T5 whose end token is likely (rows finish within a few steps), and ours from it."""
    import transformers

    directory = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    reference = perturb_(transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY_T5)))
    with torch.no_grad():
        reference.shared.weight[EOS] *= 6.0
    reference.eval().save_pretrained(directory)
    return reference, blipkit.T5ForConditionalGeneration.from_pretrained(directory)


def t5_inputs():
    ids = torch.randint(2, 99, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def cache_capacities(monkeypatch):
    """The length every KV cache buffer had after each update."""
    seen = []
    update = KVCache.update

    def spy(self, keys, values):
        result = update(self, keys, values)
        seen.append(self.keys.shape[2])
        return result

    monkeypatch.setattr(KVCache, "update", spy)
    return seen


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3, "num_return_sequences": 2}], ids=["greedy", "beams"])
def test_t5_generation_with_an_unreachable_max_new_tokens_allocates_what_it_generates(t5, cache_capacities, settings):
    reference, ours = t5
    # No token twice (the start token, pad, included): every row must end within the 97 others, and ends sooner.
    settings = {**settings, "no_repeat_ngram_size": 1}
    expected = reference.generate(**t5_inputs(), **settings, max_new_tokens=40)
    assert (expected == EOS).any(-1).all()  # every row ends within 40 tokens: the limit changes nothing
    generated = ours.generate(**t5_inputs(), **settings, max_new_tokens=UNREACHABLE)
    assert generated.tolist() == expected.tolist()
    assert max(cache_capacities) <= 1 + 64  # the start token and the first chunk


@pytest.mark.parametrize("settings", [{}, {"num_beams": 2}], ids=["greedy", "beams"])
def test_t5_generation_past_the_first_chunk_grows_and_matches_the_reference(t5, cache_capacities, settings):
    reference, ours = t5
    long = {**settings, "min_new_tokens": 150, "max_new_tokens": 150}  # the end token is barred until 150
    expected = reference.generate(**t5_inputs(), **long)
    assert ours.generate(**t5_inputs(), **long).tolist() == expected.tolist()
    assert sorted(set(cache_capacities)) == [65, 130, 151]  # doubled, then capped by max_length


# --- image URLs: a size cap, an overall deadline, few redirects ----------------------------------------------------

LIMIT = 1000  # bytes, for the tests
PHOTO = IMAGES[0].read_bytes()


class ImageServer(http.server.BaseHTTPRequestHandler):
    """The ways a server can make an image download cost too much, one path each."""

    def do_GET(self):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            getattr(self, "serve_" + self.path.strip("/").split("/")[0])()

    def serve_photo(self):
        self.send_body(PHOTO)

    def serve_declared_too_big(self):
        self.send_response(200)
        self.send_header("Content-Length", str(LIMIT + 1))
        self.end_headers()

    def serve_streams_too_much(self):
        self.send_response(200)  # no Content-Length: the body ends when the connection closes
        self.end_headers()
        for _ in range(10):
            self.wfile.write(b"x" * LIMIT)

    def serve_trickles(self):
        self.send_response(200)
        self.send_header("Content-Length", "60")
        self.end_headers()
        for _ in range(60):  # 3 s in all, far past the test's deadline
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def serve_hops(self):  # /hops/N redirects N more times, then to the photo
        left = int(self.path.split("/")[2])
        self.redirect(f"/hops/{left - 1}" if left else "/photo")

    def serve_loop(self):
        self.redirect("/loop")

    def serve_to_ftp(self):
        self.redirect("ftp://127.0.0.1/photo.jpg")

    def send_body(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageServer) as httpd:
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


@pytest.fixture
def limits(monkeypatch):
    monkeypatch.setenv("BLIPKIT_MAX_IMAGE_BYTES", str(LIMIT))
    monkeypatch.setenv("BLIPKIT_URL_DEADLINE", "0.5")


def test_url_image_within_the_limits_loads(server):
    assert load_image(f"{server}/photo").size == Image.open(IMAGES[0]).size
    assert load_image(f"{server}/hops/4").size == Image.open(IMAGES[0]).size  # 5 redirects: allowed


def test_url_image_declared_over_the_size_limit(server, limits):
    url = f"{server}/declared_too_big"
    with pytest.raises(ImageError, match=f"image URL {url} is 1001 bytes, over the 1000-byte limit"):
        load_image(url)


def test_url_image_streaming_past_the_size_limit(server, limits):
    url = f"{server}/streams_too_much"
    with pytest.raises(ImageError, match=rf"image URL {url} sends more than the 1000-byte limit \(BLIPKIT_MAX"):
        load_image(url)


def test_url_image_trickling_past_the_deadline(server, limits):
    url = f"{server}/trickles"
    started = time.monotonic()
    with pytest.raises(ImageError, match=rf"image URL {url} took longer than the 0.5 s limit \(BLIPKIT_URL_DEADLINE\)"):
        load_image(url)
    assert time.monotonic() - started < 2.5  # stopped by the deadline, not by the end of the body


def test_url_image_redirects(server):
    url = f"{server}/loop"
    with pytest.raises(ImageError, match=f"image URL {url} redirects more than 5 times"):
        load_image(url)
    with pytest.raises(ImageError, match=f"image URL {server}/hops/5 redirects more than 5 times"):
        load_image(f"{server}/hops/5")
    url = f"{server}/to_ftp"
    with pytest.raises(ImageError, match=f"{url} redirects to ftp://127.0.0.1/photo.jpg: only http and https"):
        load_image(url)


@pytest.mark.parametrize("value", ["0", "-3", "lots", "inf"])
def test_url_limits_from_the_environment_must_be_positive_numbers(server, monkeypatch, value):
    monkeypatch.setenv("BLIPKIT_URL_DEADLINE", value)
    with pytest.raises(ValueError, match=f"BLIPKIT_URL_DEADLINE must be a positive, finite float, got '{value}'"):
        load_image(f"{server}/photo")


# --- pixel values: refused where they enter the vision model -------------------------------------------------------


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    save_reference("BlipForConditionalGeneration", directory)
    return blipkit.BlipForConditionalGeneration.from_pretrained(directory)


@pytest.fixture(scope="module")
def blip2_vision():
    config = blipkit.Blip2VisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=28, patch_size=7
    )
    return blipkit.Blip2VisionModel(config)


def test_an_empty_pixel_batch_is_refused(caption_model, blip2_vision):
    with pytest.raises(ValueError, match="pixel_values is empty: got a batch of 0 images"):
        caption_model.generate(pixel_values=torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values is empty: got a batch of 0 images"):
        blip2_vision(torch.zeros(0, 3, 28, 28))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_pixel_values_that_are_not_finite_are_refused(caption_model, blip2_vision, bad):
    pixels = torch.zeros(2, 3, 32, 32)
    pixels[1, 0, :3, 0] = bad
    message = r"pixel_values has NaN or infinite values \(3 of 6144\): check the image preprocessing"
    with pytest.raises(ValueError, match=message):
        caption_model.generate(pixel_values=pixels)
    pixels = torch.zeros(1, 3, 28, 28)
    pixels[0, 2, 5, 5] = bad
    with pytest.raises(ValueError, match=r"pixel_values has NaN or infinite values \(1 of 2352\)"):
        blip2_vision(pixels)


# --- huge JPEGs: decoded at a reduced scale, without Pillow's warning ----------------------------------------------

BIG = 2048  # the test's "huge": Pillow's limit is lowered to match


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """A 2048 px mosaic of the test photographs (each 256 px, so there is detail at every scale), as a JPEG."""
    tiles = [Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC) for path in IMAGES]
    mosaic = Image.new("RGB", (BIG, BIG))
    for i in range(BIG // 256):
        for j in range(BIG // 256):
            mosaic.paste(tiles[(i + j) % len(tiles)], (i * 256, j * 256))
    path = tmp_path_factory.mktemp("huge") / "mosaic.jpg"
    mosaic.save(path, quality=90)
    return path


def test_a_jpeg_over_pillows_limit_decodes_at_a_reduced_scale_without_a_warning(huge_jpeg, monkeypatch, recwarn):
    processor = BlipImageProcessor(size=64)
    full = processor(Image.open(huge_jpeg))["pixel_values"]  # under the default limit: decoded in full
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BIG * BIG * 2 // 3)  # now it warrants Pillow's warning

    assert load_image(huge_jpeg, resize_to=(64, 64)).size == (256, 256)  # 1/8 scale: 4x the 64 px output
    reduced = processor(huge_jpeg)["pixel_values"]
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    difference = (reduced - full).abs()  # normalised units: one level of 255 is ~0.015
    assert difference.max() < 0.05 and difference.mean() < 0.01  # measured: 0.030 (2 levels) and 0.006
    assert BlipImageProcessorFast(size=64)(huge_jpeg)["pixel_values"].shape == (1, 3, 64, 64)


def test_a_jpeg_under_pillows_limit_decodes_in_full(huge_jpeg):
    assert load_image(huge_jpeg, resize_to=(64, 64)).size == (BIG, BIG)  # the reference's pixels, exactly


def test_a_jpeg_over_twice_pillows_limit_is_refused(huge_jpeg, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BIG * BIG // 3)
    message = rf"refusing image {huge_jpeg}: 2048x2048 is 4194304 pixels, over 2796202: could be a decompression"
    with pytest.raises(ImageError, match=message):
        BlipImageProcessor(size=64)(huge_jpeg)


def test_blip2_text_longer_than_the_positions_is_refused(tmp_path):
    """OPT and the Q-Former name the limit instead of failing in the embedding lookup (an IndexError)."""
    reference_blip2(tmp_path, max_position_embeddings=10)
    model = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    ids = torch.tensor([[IMAGE_TOKEN] * QUERIES + [2] + [15] * 7])  # 12 tokens: 4 image tokens and 8 of text
    pixels = torch.randn(1, 3, 28, 28)
    message = r"text of 12 tokens is longer than the model's max_position_embeddings \(10\); truncate it"
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
    embeddings = QFormerTextEmbeddings(model.config.qformer_config)
    limit = embeddings.position_embeddings.num_embeddings
    with pytest.raises(ValueError, match=f"text of {limit + 1} tokens is longer .* \\({limit}\\)"):
        embeddings(torch.zeros(1, limit + 1, dtype=torch.long))
