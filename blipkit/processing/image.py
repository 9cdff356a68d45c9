"""Images in, pixel_values out: decoding, RGB conversion, resize, rescale and normalize.

``BlipImageProcessor`` reproduces the reference's PIL path pixel for pixel (huge JPEGs aside: see ``DRAFT_MARGIN``).
``BlipImageProcessorFast`` does the same steps batched in torch; its bicubic resize differs slightly from PIL's (see
its docstring).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from blipkit.hub import ModelFiles, read_json
from blipkit.processing.batch import BatchFeature
from blipkit.processing.fetch import DownloadError, download

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"

# A JPEG with more pixels than Pillow accepts without a DecompressionBombWarning (``Image.MAX_IMAGE_PIXELS``, 89M:
# 9459x9459) is decoded at a reduced scale that keeps at least this many times the size it will be resized to, in
# each dimension; smaller ones decode in full, as the reference decodes them. The bicubic resize then still sees 4
# pixels or more per output pixel each way: on a 6144 px mosaic of the test photographs decoded at 1536 px and
# resized to 384, the pixels land within 3 levels of 255 of the full decode's (mean 0.25); at a margin of 2,
# within 12 (mean 0.9).
DRAFT_MARGIN = 4
JPEG_START = b"\xff\xd8\xff"  # the start-of-image marker and the next marker's first byte

# PIL modes whose conversion to RGB the reference defines; others (float "F", LAB, HSV, premultiplied) are refused.
SUPPORTED_MODES = (
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
)


class ImageError(ValueError):
    """An input that cannot be turned into an image: unreadable, corrupt, empty, or of an unsupported kind."""


def load_image(image: Any, timeout: float = 10.0, resize_to: tuple[int, int] | None = None) -> Image.Image:
    """Open a path, URL, bytes or PIL image, fully decoded so that a truncated file fails here, not later.

    ``resize_to`` (width, height) is the size the caller will resize the image to: a JPEG too large for Pillow to
    open without a warning is then decoded at a reduced scale (see ``DRAFT_MARGIN``).
    """
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (bytes, bytearray, memoryview)):
        pil = _open(io.BytesIO(bytes(image)), "<bytes>", resize_to)
    elif isinstance(image, (str, os.PathLike)):
        source = str(image)
        if source.startswith(("http://", "https://")):
            try:
                data = download(source, timeout)
            except DownloadError as e:
                raise ImageError(str(e)) from None
            pil = _open(io.BytesIO(data), source, resize_to)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise ImageError(f"image file not found: {source}")
            pil = _open(path, source, resize_to)
    else:
        raise ImageError(
            f"cannot read an image from {type(image).__name__}; "
            "give a path, URL, bytes, PIL image, numpy array or tensor"
        )
    if pil.width == 0 or pil.height == 0:
        raise ImageError(f"image has zero size ({pil.width}x{pil.height})")
    return pil


def _open(source: Path | io.BytesIO, name: str, resize_to: tuple[int, int] | None) -> Image.Image:
    try:
        pil = _open_jpeg(source, resize_to) if resize_to and _is_jpeg(source) else Image.open(source)
        pil.load()
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {name}: not an image file, or a format Pillow does not know") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {name}: the file is truncated or corrupt ({e})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refusing image {name}: {e}") from None
    return pil


def _is_jpeg(source: Path | io.BytesIO) -> bool:
    if isinstance(source, Path):
        with source.open("rb") as file:
            return file.read(len(JPEG_START)) == JPEG_START
    start = source.read(len(JPEG_START))
    source.seek(0)
    return start == JPEG_START


def _open_jpeg(source: Path | io.BytesIO, resize_to: tuple[int, int]) -> Image.Image:
    """A JPEG opened by its own plugin, held to Pillow's decompression-bomb limits here: over twice
    ``Image.MAX_IMAGE_PIXELS`` it is refused; over it, set to decode at the smallest of JPEG's own scales (1/2, 1/4,
    1/8) that keeps ``DRAFT_MARGIN`` times ``resize_to`` - a 12000x12000 photo resized to 384 decodes at 3000x3000
    (27 MB, not 432 MB) - with Pillow's warning only if still over it.

    ``Image.open`` would warn (DecompressionBombWarning) before the scale can be set, and a process-wide warning
    filter is no place to silence it: images are decoded in worker threads.
    """
    jpeg = JpegImagePlugin.JpegImageFile(source)
    if refused := _over_pixel_limit(jpeg.size, 2):
        raise Image.DecompressionBombError(refused)
    if _over_pixel_limit(jpeg.size, 1):
        jpeg.draft(None, (resize_to[0] * DRAFT_MARGIN, resize_to[1] * DRAFT_MARGIN))
        if still_over := _over_pixel_limit(jpeg.size, 1):
            warnings.warn(still_over, Image.DecompressionBombWarning, stacklevel=2)
    return jpeg


def _over_pixel_limit(size: tuple[int, int], times: int) -> str | None:
    """Why ``size`` is over ``times`` Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), or None."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = size[0] * size[1]
    if limit is None or pixels <= times * limit:
        return None
    return f"{size[0]}x{size[1]} is {pixels} pixels, over {times * limit}: could be a decompression bomb"


def to_rgb(pil: Image.Image) -> Image.Image:
    """RGB as the reference makes it: transparent pixels are composited over white."""
    if pil.mode not in SUPPORTED_MODES:
        raise ImageError(f"unsupported image mode {pil.mode!r}; supported modes: {', '.join(SUPPORTED_MODES)}")
    if "A" in pil.getbands() or pil.info.get("transparency") is not None:
        white = Image.new("RGBA", pil.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, pil.convert("RGBA")).convert("RGB")
    return pil.convert("RGB")


def array_to_image(array: np.ndarray | torch.Tensor) -> tuple[Image.Image, bool]:
    """An (H, W), (H, W, C) or (C, H, W) array as an RGB PIL image, as the reference converts arrays.

    Returns the image and whether its values were floats in [0, 1] (scaled to bytes for PIL, and scaled back
    after resizing, exactly as the reference does).
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ImageError(f"an image array must have 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4):  # channels first, as the reference assumes when both ends could be channels
        array = np.moveaxis(array, 0, -1)
    elif array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"cannot find the channel axis of an image array of shape {array.shape}; expected 1, 3 or 4")
    if 0 in array.shape:
        raise ImageError(f"image has zero size (array shape {array.shape})")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = _composite_over_white(array)
    scaled = False
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ImageError(f"unsupported image array dtype {array.dtype}")
        if np.allclose(array, array.astype(int)):
            if array.min() < 0 or array.max() > 255:
                raise ImageError(f"image values must lie in [0, 255], got [{array.min()}, {array.max()}]")
        elif array.min() >= 0 and array.max() <= 1:
            array = (array.astype(np.float64) * 255).astype(np.float32)
            scaled = True
        else:
            raise ImageError(f"float image values must lie in [0, 1], got [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    return Image.fromarray(array), scaled


def _composite_over_white(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating) and (array.min() < 0.0 or array.max() > 1.0):
        raise ImageError(f"an RGBA float image must lie in [0, 1], got [{array.min()}, {array.max()}]")
    white = 255 if np.issubdtype(array.dtype, np.integer) else 1.0
    alpha = array[..., 3:4] / white
    composite = alpha * array[..., :3] + (1 - alpha) * white
    return np.round(composite).astype(array.dtype) if white == 255 else composite.astype(array.dtype)


class BlipImageProcessor:
    """Turns images into ``pixel_values`` exactly as the reference's PIL path does - except for JPEGs over Pillow's
    ``MAX_IMAGE_PIXELS``, decoded at a reduced scale first (within a few levels of 255; see ``DRAFT_MARGIN``).

    Accepts paths, URLs, bytes, PIL images, numpy arrays and tensors, one or a list.
    """

    image_processor_type = "BlipImageProcessor"

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: int = Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | tuple[float, ...] = CLIP_MEAN,
        image_std: float | list[float] | tuple[float, ...] = CLIP_STD,
        do_convert_rgb: bool = True,
        **extra: Any,
    ) -> None:
        self.do_resize = do_resize
        self.size = _size_dict(size)
        self.resample = int(resample)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = _per_channel(image_mean, "image_mean")
        self.image_std = _per_channel(image_std, "image_std")
        self.do_convert_rgb = do_convert_rgb
        self.extra = {k: v for k, v in extra.items() if k not in ("image_processor_type", "processor_class")}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BlipImageProcessor:
        return cls(**config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | ModelFiles, **hub_kwargs: Any) -> BlipImageProcessor:
        """Read preprocessor_config.json, or the image processor part of a processor_config.json."""
        files = ModelFiles.open(name_or_path, **hub_kwargs)
        path = files.get(PREPROCESSOR_CONFIG, required=False)
        if path is not None:
            return cls.from_dict(read_json(path))
        path = files.get(PROCESSOR_CONFIG, required=False)
        if path is not None and "image_processor" in (config := read_json(path)):
            return cls.from_dict(config["image_processor"])
        raise FileNotFoundError(f"{files.name} has no {PREPROCESSOR_CONFIG}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": BlipImageProcessor.image_processor_type,
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def __call__(self, images: Any, return_tensors: str | None = "pt", **overrides: Any) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **overrides: Any) -> BatchFeature:
        """``{"pixel_values": (batch, 3, H, W) float32 tensor}`` (or a list of arrays with return_tensors=None)."""
        options = self._options(overrides)
        arrays = [self._process_one(image, options) for image in as_image_list(images)]
        if return_tensors == "pt":
            if len({a.shape for a in arrays}) > 1:
                raise ValueError("images of different sizes cannot form one tensor; keep do_resize=True")
            return BatchFeature(pixel_values=torch.from_numpy(np.stack(arrays)))
        if return_tensors == "np":
            return BatchFeature(pixel_values=np.stack(arrays))
        if return_tensors is None:
            return BatchFeature(pixel_values=arrays)
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - set(IMAGE_OPTIONS)
        if unknown:
            raise TypeError(f"unknown image processing options: {', '.join(sorted(unknown))}")
        options = {name: getattr(self, name) for name in IMAGE_OPTIONS}
        options.update(overrides)
        options["size"] = _size_dict(options["size"])
        return options

    def _process_one(self, image: Any, o: dict[str, Any]) -> np.ndarray:
        scaled = False
        if isinstance(image, (np.ndarray, torch.Tensor)):
            pil, scaled = array_to_image(image)
        else:
            pil = load_image(image, resize_to=_output_size(o) if o["do_resize"] else None)
            if o["do_convert_rgb"]:
                pil = to_rgb(pil)
            elif pil.mode not in ("RGB", "L"):
                raise ImageError(f"image mode {pil.mode!r} needs do_convert_rgb=True")
        if o["do_resize"]:
            pil = pil.resize(_output_size(o), resample=o["resample"])
        array = np.array(pil)
        if array.ndim == 2:
            array = array[..., None]
        array = np.moveaxis(array, -1, 0)  # (channels, height, width)
        if scaled:
            array = (array.astype(np.float64) / 255).astype(np.float32)
            if o["do_rescale"]:
                warnings.warn(
                    "images with float values in [0, 1] are rescaled again (do_rescale=True), as the reference does; "
                    "pass do_rescale=False if they are already scaled",
                    stacklevel=4,
                )
        if o["do_rescale"]:
            array = (array.astype(np.float64) * o["rescale_factor"]).astype(np.float32)
        if o["do_normalize"]:
            array = array.astype(np.float32) if not np.issubdtype(array.dtype, np.floating) else array
            mean = np.asarray(o["image_mean"], dtype=array.dtype)[:, None, None]
            std = np.asarray(o["image_std"], dtype=array.dtype)[:, None, None]
            array = (array - mean) / std
        return array


IMAGE_OPTIONS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


class BlipImageProcessorFast(BlipImageProcessor):
    """The same processing, batched in torch: decode (PIL), then one resize + normalize for the whole batch.

    The resize is torch's antialiased uint8 bicubic, which lands within 2 levels of 255 of PIL's on every pixel
    (on average within 0.004 levels, tested on real photographs): after normalization, max |difference| below
    0.035 and mean below 0.001. Use ``BlipImageProcessor`` where bit-exact parity with the reference matters.
    """

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **overrides: Any) -> BatchFeature:
        o = self._options(overrides)
        if return_tensors != "pt":
            raise ValueError("BlipImageProcessorFast returns torch tensors only (return_tensors='pt')")
        if not o["do_resize"]:
            return super().preprocess(images, return_tensors=return_tensors, **overrides)
        height, width = o["size"]["height"], o["size"]["width"]
        resized = []
        for image in as_image_list(images):
            if isinstance(image, (np.ndarray, torch.Tensor)):
                pil, scaled = array_to_image(image)
                if scaled:
                    return super().preprocess(images, return_tensors=return_tensors, **overrides)
            else:
                pil = load_image(image, resize_to=(width, height))
                pil = to_rgb(pil) if o["do_convert_rgb"] else pil
            # (1, 3, h, w) uint8 -> antialiased bicubic, still uint8: torch's uint8 kernel rounds like PIL's.
            t = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)[None]
            resized.append(torch.nn.functional.interpolate(t, size=(height, width), mode="bicubic", antialias=True))
        batch = torch.cat(resized).float()
        if o["do_rescale"]:
            batch = batch * o["rescale_factor"]
        if o["do_normalize"]:
            mean = torch.tensor(o["image_mean"], dtype=batch.dtype)[:, None, None]
            std = torch.tensor(o["image_std"], dtype=batch.dtype)[:, None, None]
            batch = (batch - mean) / std
        return BatchFeature(pixel_values=batch)


def as_image_list(images: Any) -> list[Any]:
    """One image or a non-empty list of them; a 4-D array or tensor is a batch."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("images is an empty list: give at least one image")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if images is None:
        raise ImageError("no image given")
    return [images]


def _output_size(options: dict[str, Any]) -> tuple[int, int]:
    """(width, height), as PIL sizes go."""
    return options["size"]["width"], options["size"]["height"]


def _size_dict(size: dict[str, int] | int | None) -> dict[str, int]:
    if size is None:
        return {"height": 384, "width": 384}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        return {"height": int(size["height"]), "width": int(size["width"])}
    raise ValueError(f"size must be an int or a dict with 'height' and 'width', got {size!r}")


def _per_channel(value: float | list[float] | tuple[float, ...], name: str) -> tuple[float, ...]:
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (one per RGB channel), got {len(values)}")
    return values
