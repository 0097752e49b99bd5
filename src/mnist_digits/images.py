"""Opening people's image files safely, and turning any image into one grayscale array.

Only the formats we name are decoded (Pillow would otherwise try dozens), the declared size
is checked before any pixel is decoded (a 100-byte PNG can declare 10 gigapixels), truncated
files are refused rather than half-read, and phone photos are turned upright by their EXIF tag.
"""

from __future__ import annotations

import glob
import io
import stat
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # phone JPEGs open as MPO, a JPEG
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
MAX_PIXELS = 64_000_000  # width x height; a 48-megapixel phone photo fits, a decompression bomb does not


def open_image(
    source: Path | str | bytes, max_pixels: int = MAX_PIXELS, max_side: int | None = None, name: str = ""
) -> Image.Image:
    """The first frame of an image file (a path, or the file's bytes), decoded and upright.

    InputError says why a file cannot be used, naming it (`name`, else its path). `max_side`
    lets JPEG decode at a reduced scale, at least that many pixels a side: a 12-megapixel photo
    then decodes several times faster, and the preprocessing would shrink it anyway.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "image")
    if not isinstance(source, bytes) and _is_special_file(Path(source)):
        # Opening a pipe blocks until something writes to it: refused, not waited on.
        raise InputError(f"{name}: not a regular file (a pipe, socket or device); give an image file.")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours is checked below with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            file = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
            image = Image.open(file, formats=SUPPORTED_FORMATS)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file.") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an image file.") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: {_too_large(None, max_pixels)}") from e
    except UnidentifiedImageError:
        raise InputError(
            f"{name}: not a readable image (supported: {', '.join(SUPPORTED_FORMATS)}). "
            "Convert it to PNG or JPEG."
        ) from None
    except OSError as e:
        raise InputError(f"{name}: cannot read it ({e.strerror or e}).") from e
    except (ValueError, SyntaxError, struct.error, IndexError, TypeError) as e:
        # A damaged header can fail a format's parser in these ways (PNG: "Truncated IHDR chunk").
        raise InputError(f"{name}: the image's header is corrupt ({e}). Save or export it again.") from e
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise InputError(f"{name}: {_too_large((width, height), max_pixels)}")
        if width == 0 or height == 0:
            raise InputError(f"{name}: the image is empty ({width}x{height} pixels).")
        try:
            if max_side:
                reduce_on_decode(image, max_side)
            image.load()
            # exif_transpose returns a new, loaded image (a copy when there is nothing to turn).
            return ImageOps.exif_transpose(image)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for damaged files
            raise InputError(
                f"{name}: the {image.format} data is truncated or corrupt ({e}). Save or export it again."
            ) from e


def open_input(source: object, max_side: int | None = None, name: str = "") -> Image.Image | np.ndarray:
    """An image to preprocess from anything `Recognizer.predict` takes: a file's path or bytes are
    opened (`open_image`), a PIL image or an array is used as it is; InputError for anything else."""
    if isinstance(source, str | Path | bytes):
        return open_image(source, max_side=max_side, name=name)
    if isinstance(source, Image.Image | np.ndarray):
        return source
    kind = type(source).__name__
    raise InputError(f"{name or 'image'}: cannot read a {kind}; give a path, a PIL image or a numpy array.")


def _is_special_file(path: Path) -> bool:
    """Whether `path` exists and is neither a regular file nor a folder (a FIFO, socket or device)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False  # missing, a loop of links, unreadable: open() says which, below
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> str:
    declared = f"{size[0]}x{size[1]} pixels" if size else "more pixels than Pillow allows"
    return (
        f"declares {declared}, over the limit of {max_pixels / 1e6:.0f} megapixels; a file like this "
        "is usually a decompression bomb. If the image is real, scale it down first."
    )


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """`image` with its longest side at most `max_side`, in a mode that keeps its alpha."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # Checked and scaled to [0, 1] at full size (converting to RGB would clip 16-bit values at
        # 255): resampling would blur the whole numbers that tell 0-255 floats from 0-1 ones.
        image = Image.fromarray(_unit_range(np.asarray(image)))
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = image.mode in ("PA", "La", "RGBa") or image.has_transparency_data
        image = image.convert("RGBA" if has_alpha else "RGB")
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Pillow premultiplies by alpha while resampling, so transparent pixels' colour does not bleed in.
    return image.resize(size, Image.Resampling.BOX)


def to_grayscale(source: Image.Image | np.ndarray) -> np.ndarray:
    """Luminance as float32 in [0, 1] (white = 1), shape (H, W), with any alpha composited.

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 or 16-bit, or floats in [0, 1].
    """
    if isinstance(source, Image.Image):
        return _image_to_grayscale(source)
    array = np.asarray(source)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
        raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); this one is {array.shape}.")
    values = _unit_range(array)
    if values.ndim == 2:
        return values
    luma = values[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L"
    if values.shape[2] == 3:
        return luma.astype(np.float32)
    return composite_alpha(luma, values[:, :, 3])


def _unit_range(array: np.ndarray) -> np.ndarray:
    """Pixel values as float32 in [0, 1]: integers over 255 (or 65535 when some exceed 255), floats
    in [0, 1] as they are, whole-number floats over 255 or 65535 likewise. InputError for anything
    else (NaN, infinities, negatives, floats over 1 with fractions, 0-1 floats with brighter
    pixels): any scale guessed for those would misread the image without a word."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 65535:
            raise InputError(
                f"pixel values from {low} to {high}: integer images must hold 0-255, or 0-65535 for "
                "16 bits. Rescale it, or save it as an 8-bit PNG."
            )
        return array.astype(np.float32) / (65535.0 if high > 255 else 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"pixel values of type {array.dtype}: give integers or floating-point numbers.")
    if not np.isfinite(array).all():
        raise InputError(
            "the image holds NaN or infinite pixel values, which show no shade of gray. "
            "Replace them, or save it as an 8-bit PNG."
        )
    least, most = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if least >= 0.0 and most <= 1.0:
        return array.astype(np.float32)
    # Floats made from 8- or 16-bit pixels are whole numbers, and few of them are 1: a 0-1 image
    # with a few brighter pixels (1s, and a block of 2s) must not be read as a dark 0-255 one.
    whole = bool(np.all(array == np.round(array)))
    if least >= 0.0 and whole and most <= 65535.0 and (array == 1).sum() < (array > 1).sum():
        return array.astype(np.float32) / (65535.0 if most > 255.0 else 255.0)
    raise InputError(
        f"pixel values from {least:g} to {most:g}: a floating-point image must hold values from 0 to 1 "
        "(or whole numbers 0-255 or 0-65535). Rescale it to 0-1, or save it as an 8-bit PNG."
    )


def _image_to_grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _unit_range(np.asarray(image))
    has_alpha = image.mode in ("LA", "PA", "La", "RGBA", "RGBa") or image.has_transparency_data
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    with_alpha = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    luma = with_alpha[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return composite_alpha(luma, with_alpha[:, :, 3])


def composite_alpha(luma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Lay a partly transparent image on the background that its transparent part stands for.

    A canvas drawing is ink on a transparent field whose colour is meaningless (an HTML canvas
    stores black): mostly transparent, so the ink goes on a background that contrasts with it.
    A mostly opaque image (a cut-out photo) has its paper in the opaque part: the transparent
    part gets the opaque part's typical gray, so it reads as more paper.
    """
    alpha = alpha.astype(np.float32)
    if alpha.min(initial=1.0) >= 1.0:
        return luma.astype(np.float32)
    weight = float(alpha.sum())
    if weight == 0:
        return np.ones_like(luma, dtype=np.float32)  # fully transparent: blank paper
    if (alpha < 0.5).mean() > 0.5:
        ink = float((luma * alpha).sum()) / weight
        background = 1.0 if ink < 0.5 else 0.0
    else:
        background = float(np.median(luma[alpha >= 0.5]))
    return (luma * alpha + background * (1.0 - alpha)).astype(np.float32)


def is_image_file(path: Path) -> bool:
    """Whether a file in a folder should be read as an image (by its suffix; names given are always tried)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_paths(patterns: Sequence[str]) -> list[tuple[str, str | None]]:
    """The files that command-line PATHs name: files as given, folders' images, globs' matches.

    Each comes with None, or with the reason it yields nothing (an empty folder, a glob that
    matches no image), so that the caller can report it in its place among the results.
    """
    found: list[tuple[str, str | None]] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            try:
                # Every entry but a folder gets a row: a loop of links or a dangling one, its error.
                files = sorted(p for p in path.iterdir() if is_image_file(p) and not p.is_dir())
            except OSError as e:
                found.append((pattern, f"{pattern}: cannot list this folder ({e.strerror or e})."))
                continue
            if not files:
                found.append((pattern, f"{pattern}: no image files in this folder ({_suffixes()})."))
            found += [(str(f), None) for f in files]
        elif glob.has_magic(pattern) and not path.exists():
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            files = [m for m in matches if is_image_file(m) and not m.is_dir()]
            if not files:
                found.append((pattern, f"{pattern}: matches no image files ({_suffixes()})."))
            found += [(str(f), None) for f in files]
        else:
            found.append((pattern, None))  # read as it is: open_image explains what is wrong with it
    return found


def _suffixes() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def reduce_on_decode(image: Image.Image, max_side: int) -> None:
    """Before decoding: a JPEG decodes at a reduced scale, never below `max_side` a side; other formats
    at full size. The server's pixel budget reads the size this leaves, so both share this rule."""
    if image.format in ("JPEG", "MPO"):
        image.draft(None, (max_side, max_side))
