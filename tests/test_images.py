"""Opening image files safely and turning any image into grayscale with alpha handled right."""

import io

import numpy as np
import pytest
from PIL import Image

from mnist_digits import images
from mnist_digits.errors import InputError


def gradient_image(mode: str = "L", size: tuple[int, int] = (40, 30)) -> Image.Image:
    values = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
    return Image.fromarray(values).convert(mode)


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("PNG", ".png"),
        ("JPEG", ".jpg"),
        ("BMP", ".bmp"),
        ("GIF", ".gif"),
        ("WEBP", ".webp"),
        ("TIFF", ".tif"),
    ],
)
def test_every_supported_format_opens_to_the_same_grayscale(tmp_path, fmt, suffix):
    original = gradient_image("RGB")
    path = tmp_path / f"gradient{suffix}"
    original.save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    gray = images.to_grayscale(images.open_image(path))
    assert gray.shape == (30, 40) and gray.dtype == np.float32
    expected = np.asarray(original.convert("L"), np.float32) / 255
    assert np.abs(gray - expected).max() < 0.06  # lossy formats and GIF's palette stay close


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    gradient_image("RGB", (40, 20)).save(path, format="JPEG", exif=exif)
    assert images.open_image(path).size == (20, 40)


def test_bytes_open_like_a_file(tmp_path):
    buffer = io.BytesIO()
    gradient_image().save(buffer, format="PNG")
    assert images.open_image(buffer.getvalue()).size == (40, 30)


def test_canvas_drawing_dark_ink_on_transparent_black_becomes_dark_on_white():
    pixels = np.zeros((20, 20, 4), np.uint8)  # an HTML canvas stores transparent pixels as black
    pixels[5:15, 9:11] = (10, 10, 40, 255)  # a dark blue stroke
    pixels[5:15, 8] = (10, 10, 40, 128)  # its anti-aliased edge
    gray = images.to_grayscale(Image.fromarray(pixels))
    assert gray[0, 0] == pytest.approx(1.0)  # paper: white, not the stored black
    assert gray[10, 9] < 0.1
    assert 0.4 < gray[10, 8] < 0.7  # half-transparent ink: halfway to the paper


def test_canvas_drawing_light_ink_on_transparent_becomes_light_on_black():
    pixels = np.zeros((20, 20, 4), np.uint8)
    pixels[5:15, 9:11] = (255, 255, 255, 255)
    gray = images.to_grayscale(pixels)  # arrays take the same path as images
    assert gray[0, 0] == 0.0 and gray[10, 9] == pytest.approx(1.0)


def test_mostly_opaque_cutout_fills_transparency_with_its_paper():
    pixels = np.full((20, 20, 4), (200, 200, 200, 255), np.uint8)  # gray paper
    pixels[:, :3, 3] = 0  # a transparent strip at the edge
    pixels[5:15, 10] = (0, 0, 0, 255)  # ink
    gray = images.to_grayscale(pixels)
    assert gray[0, 0] == pytest.approx(200 / 255, abs=0.01)
    assert gray[10, 10] == 0.0


def test_palette_image_with_transparency_and_16_bit_gray():
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.info["transparency"] = 0
    palette.putpixel((5, 5), 1)
    gray = images.to_grayscale(palette)
    assert gray[5, 5] == pytest.approx(1.0) and gray[0, 0] == 0.0  # white ink on transparent: on black

    deep = np.full((4, 4), 65535, np.uint16)
    deep[0, 0] = 0
    assert images.to_grayscale(Image.fromarray(deep)).max() == pytest.approx(1.0)


def test_a_16_bit_scan_keeps_its_tones_when_shrunk():
    scan = np.full((1000, 800), 60000, np.uint16)  # light paper
    scan[300:700, 350:450] = 3000  # dark ink
    small = images.shrink(Image.fromarray(scan), 100)
    gray = images.to_grayscale(small)
    assert max(small.size) == 100
    assert gray.max() == pytest.approx(60000 / 65535, abs=1e-3)
    assert gray.min() == pytest.approx(3000 / 65535, abs=1e-3)  # not clipped to white


def test_arrays_of_every_layout_and_range():
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 1] = 255
    assert images.to_grayscale(rgb)[0, 0] == pytest.approx(0.587, abs=1e-3)
    assert images.to_grayscale(np.full((5, 6), 128.0))[0, 0] == pytest.approx(128 / 255)  # 0-255 floats
    assert images.to_grayscale(np.full((5, 6, 1), 0.5))[0, 0] == pytest.approx(0.5)
    with pytest.raises(InputError, match=r"\(5, 6, 2\)"):
        images.to_grayscale(np.zeros((5, 6, 2)))


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(InputError, match=r"notes\.png: not a readable image") as error:
        images.open_image(path)
    assert "\n" not in str(error.value)


def test_a_truncated_png_is_refused_not_half_read(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError, match=r"cut\.png: the PNG data is truncated or corrupt"):
        images.open_image(path)


@pytest.mark.parametrize("side", [9000, 100_000])  # over our limit; over Pillow's own hard limit too
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side, png_declaring):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(side, side))
    with pytest.raises(InputError, match="decompression bomb"):
        images.open_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        images.open_image(tmp_path / "absent.png")
    with pytest.raises(InputError, match="directory"):
        images.open_image(tmp_path)


def test_large_jpeg_decodes_at_reduced_scale_but_not_below_the_working_size(tmp_path):
    path = tmp_path / "photo.jpg"
    gradient_image("RGB", (2400, 1600)).save(path, format="JPEG")
    opened = images.open_image(path, max_side=500)
    assert min(opened.size) >= 500 and max(opened.size) < 2400


def test_expand_paths_reads_folders_and_globs_and_reports_empty_ones(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = images.expand_paths(
        [str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "*.gif"), str(tmp_path / "empty"), "x.png"]
    )
    assert [(p.replace(str(tmp_path), "D"), problem is None) for p, problem in found] == [
        ("D/a.JPG", True),
        ("D/b.png", True),
        ("D/b.png", True),
        ("D/*.gif", False),
        ("D/empty", False),
        ("x.png", True),  # named explicitly: tried, and its error reported when it is opened
    ]
