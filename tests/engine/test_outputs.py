"""Output saving: A1111 folder/name rules, formats + infotext read-back, grids, concurrency,
atomicity and path safety (reference a1111.md 3.3 and 8)."""

from __future__ import annotations

import errno
import io
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin, features

from modules.core.filenames import FilenameContext, next_sequence_number
from modules.core.infotext import build_infotext, parse_infotext
from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.engine import outputs, publishing
from modules.engine.grids import grid_rows, make_grid
from modules.engine.image_metadata import (
    decode_user_comment,
    encode_image,
    exif_with_user_comment,
    read_image_info,
    read_infotext_from_image,
)
from modules.engine.outputs import ImageSaver

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 7, 27, 13, 5, 9)
DATE = "2024-07-27"
INFOTEXT = build_infotext(
    'a cat, "quoted": ü 猫\nsecond line',
    "blurry, lowres",
    {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 42, "Size": "64x48", "Lora hashes": "a: 0123456789ab"},
)


@pytest.fixture()
def options() -> Options:
    return Options(default_option_infos(), None)


@pytest.fixture()
def paths(tmp_path: Path) -> Paths:
    return Paths.from_settings(parse_settings(["--data-dir", str(tmp_path / "data")]), tmp_path / "repo", environ={})


@pytest.fixture()
def saver(options: Options, paths: Paths) -> ImageSaver:
    return ImageSaver(options, paths)


def picture(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    raw = bytes((i * 7 + seed * 13 + (i // width) * 3) % 256 for i in range(width * height * len(mode)))
    return Image.frombytes(mode, (width, height), raw)


def ctx(seed: int = 42, prompt: str = "a cat, sitting", **kw: object) -> FilenameContext:
    return FilenameContext(seed=seed, prompt=prompt, now=NOW, **kw)  # type: ignore[arg-type]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- folders and names ------------------------------------------------------------------------


def test_default_txt2img_layout_and_numbering(saver: ImageSaver, paths: Paths) -> None:
    first = saver.save_sample(picture(), "txt2img", ctx(seed=1234567890), infotext=INFOTEXT)
    second = saver.save_sample(picture(), "txt2img", ctx(seed=7), infotext=INFOTEXT)
    folder = paths.data_dir / "outputs" / "txt2img-images" / DATE
    assert first.path == folder / "00000-1234567890.png"
    assert second.path == folder / "00001-7.png"
    assert files(folder) == ["00000-1234567890.png", "00001-7.png"]  # no temp files left
    assert first.paths == (first.path,)


def test_numbering_continues_after_existing_files(saver: ImageSaver, paths: Paths) -> None:
    folder = paths.data_dir / "outputs" / "img2img-images" / DATE
    folder.mkdir(parents=True)
    (folder / "00041-999.png").write_bytes(b"x")
    (folder / "grid-0100.png").write_bytes(b"x")
    saved = saver.save_sample(picture(), "img2img", ctx(seed=5))
    assert saved.path.name == "00042-5.png"


def test_without_save_to_dirs_the_prompt_is_in_the_name(saver: ImageSaver, options: Options, paths: Paths) -> None:
    options.set("save_to_dirs", False)
    saved = saver.save_sample(picture(), "txt2img", ctx(seed=3, prompt="a cat, sitting"))
    assert saved.path == paths.data_dir / "outputs" / "txt2img-images" / "00000-3-a cat, sitting.png"


def test_custom_patterns(saver: ImageSaver, options: Options, paths: Paths) -> None:
    options.set("samples_filename_pattern", "[seed]-[steps]-[model_name]")
    options.set("directories_filename_pattern", "[date]/[model_name]")
    saved = saver.save_sample(picture(), "txt2img", ctx(seed=3, steps=20, model_name="v1-5"))
    assert saved.path == paths.data_dir / "outputs" / "txt2img-images" / DATE / "v1-5" / "00000-3-20-v1-5.png"


def test_outdir_options(saver: ImageSaver, options: Options, paths: Paths, tmp_path: Path) -> None:
    assert saver.samples_dir("txt2img") == paths.data_dir / "outputs" / "txt2img-images"
    assert saver.samples_dir("extras") == paths.data_dir / "outputs" / "extras-images"
    assert saver.grids_dir("img2img") == paths.data_dir / "outputs" / "img2img-grids"
    options.set("outdir_txt2img_samples", "elsewhere/t2i")
    assert saver.samples_dir("txt2img") == paths.data_dir / "elsewhere" / "t2i"
    options.set("outdir_samples", str(tmp_path / "all"))
    options.set("outdir_grids", "grids-here")
    for kind in ("txt2img", "img2img", "extras"):
        assert saver.samples_dir(kind) == tmp_path / "all"
    assert saver.grids_dir("txt2img") == paths.data_dir / "grids-here"
    with pytest.raises(ValueError):
        saver.samples_dir("nope")


def test_no_seed_or_short_filename_gives_number_only(saver: ImageSaver, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = saver.save_image(picture(), out, FilenameContext(now=NOW), save_to_dirs=False)
    b = saver.save_image(picture(), out, ctx(seed=9), short_filename=True, save_to_dirs=False)
    assert (a.path.name, b.path.name) == ("00000.png", "00001.png")


def test_suffix_and_forced_filename(saver: ImageSaver, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = saver.save_image(picture(), out, ctx(seed=9), suffix="-before-highres-fix", save_to_dirs=False)
    assert a.path.name == "00000-9-before-highres-fix.png"
    b = saver.save_image(picture(), out, ctx(seed=9), forced_filename="original name", save_to_dirs=False)
    assert b.path == out / "original name.png"


def test_without_numbers_replace_or_add_suffix(saver: ImageSaver, options: Options, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options.set("save_images_add_number", False)
    first = saver.save_image(picture(seed=1), out, ctx(seed=5), save_to_dirs=False)
    second = saver.save_image(picture(seed=2), out, ctx(seed=5), save_to_dirs=False)
    assert first.path == second.path == out / "5.png"
    assert files(out) == ["5.png"]
    with Image.open(second.path) as im:
        assert im.tobytes() == picture(seed=2).tobytes()
    options.set("save_images_replace_action", "Add number suffix")
    third = saver.save_image(picture(), out, ctx(seed=5), save_to_dirs=False)
    fourth = saver.save_image(picture(), out, ctx(seed=5), save_to_dirs=False)
    assert (third.path.name, fourth.path.name) == ("5-1.png", "5-2.png")


def test_long_names_fit_the_filesystem(options: Options, paths: Paths, tmp_path: Path) -> None:
    options.set("save_to_dirs", False)
    saver = ImageSaver(options, paths, filenames_max_length=2000)
    saved = saver.save_image(picture(), tmp_path / "out", ctx(seed=1, prompt="猫 " * 400))
    assert saved.path.exists()
    assert len(saved.path.name.encode("utf-8")) <= 255
    assert saved.path.name.startswith("00000-1-猫 猫")


# --- path safety ------------------------------------------------------------------------------

TRAVERSAL = ["../../../escape", "..", "../..\\..\\x", "/etc/passwd", "a/../../b", " . ", "C:\\evil", "CON"]


@pytest.mark.parametrize("prompt", TRAVERSAL)
@pytest.mark.parametrize("unix", [False, True])
def test_prompt_cannot_escape_the_output_folder(
    options: Options, paths: Paths, tmp_path: Path, prompt: str, unix: bool
) -> None:
    saver = ImageSaver(options, paths, unix_filenames_sanitization=unix)
    base = tmp_path / "out"
    options.set("directories_filename_pattern", "[prompt_spaces]/[prompt]")
    options.set("samples_filename_pattern", "[prompt_spaces]")
    a = saver.save_image(picture(), base, ctx(prompt=prompt))
    options.set("save_to_dirs", False)
    options.set("samples_filename_pattern", "")
    b = saver.save_image(picture(), base, ctx(prompt=prompt))
    c = saver.save_image(picture(), base, ctx(prompt=prompt), forced_filename=prompt)
    created = all_files(tmp_path)
    assert set(created) == {a.path, b.path, c.path}
    for path in created:
        resolved = path.resolve()
        assert resolved.is_relative_to(base.resolve())
        assert ".." not in path.relative_to(base).parts


def test_literal_dotdot_in_directory_pattern_is_neutralised(
    saver: ImageSaver, options: Options, tmp_path: Path
) -> None:
    options.set("directories_filename_pattern", "../[seed]/./..//x")
    saved = saver.save_image(picture(), tmp_path / "out", ctx(seed=3))
    assert saved.path == tmp_path / "out" / "_" / "3" / "_" / "_" / "x" / "00000-3.png"


# --- formats and infotext read-back -----------------------------------------------------------


def test_png_keeps_infotext_in_parameters_chunk(saver: ImageSaver, tmp_path: Path) -> None:
    saved = saver.save_image(picture(), tmp_path, ctx(), infotext=INFOTEXT, save_to_dirs=False)
    raw = saved.path.read_bytes()
    assert b"iTXtparameters" in raw  # not Latin-1 -> iTXt
    with Image.open(saved.path) as im:
        assert im.format == "PNG"
        assert im.info["parameters"] == INFOTEXT
        assert read_infotext_from_image(im) == INFOTEXT
        parsed = parse_infotext(read_infotext_from_image(im) or "")
    assert parsed["Prompt"] == 'a cat, "quoted": ü 猫\nsecond line'
    assert parsed["Lora hashes"] == "a: 0123456789ab"


def test_latin1_infotext_uses_text_chunk(saver: ImageSaver, tmp_path: Path) -> None:
    text = "cat\nSteps: 20, Seed: 1, CFG scale: 7"
    saved = saver.save_image(picture(), tmp_path, ctx(), infotext=text, save_to_dirs=False)
    assert b"tEXtparameters\x00cat" in saved.path.read_bytes()


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "webp", "avif"])
def test_exif_formats_read_back(saver: ImageSaver, options: Options, tmp_path: Path, fmt: str) -> None:
    if fmt == "avif" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    options.set("samples_format", fmt)
    saved = saver.save_image(picture(mode="RGBA"), tmp_path, ctx(), infotext=INFOTEXT, save_to_dirs=False)
    assert saved.path.suffix == f".{fmt}"
    with Image.open(saved.path) as im:
        assert im.format == {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[fmt]
        assert read_infotext_from_image(im) == INFOTEXT
        if fmt in ("jpg", "jpeg"):
            assert im.mode == "RGB"  # alpha dropped


def test_jpeg_quality_and_webp_lossless_options(saver: ImageSaver, options: Options, tmp_path: Path) -> None:
    img = picture(128, 96)
    options.set("samples_format", "jpg")
    options.set("jpeg_quality", 95)
    high = saver.save_image(img, tmp_path, ctx(), save_to_dirs=False).path.stat().st_size
    options.set("jpeg_quality", 10)
    low = saver.save_image(img, tmp_path, ctx(), save_to_dirs=False).path.stat().st_size
    assert low < high
    options.set("samples_format", "webp")
    options.set("webp_lossless", True)
    lossless = saver.save_image(img, tmp_path, ctx(), save_to_dirs=False)
    with Image.open(lossless.path) as im:
        assert im.convert("RGB").tobytes() == img.tobytes()


def test_exif_block_has_piexif_layout() -> None:
    blob = exif_with_user_comment("hé")
    assert blob.startswith(b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08")
    # IFD0: one entry, ExifIFD pointer (LONG) -> 26; Exif IFD: one entry, UserComment (UNDEFINED)
    assert struct.unpack(">HHHII", blob[14:28]) == (1, 0x8769, 4, 1, 26)
    comment = b"UNICODE\x00" + "hé".encode("utf-16-be")
    assert struct.unpack(">HHHII", blob[6 + 26 : 6 + 40]) == (1, 0x9286, 7, len(comment), 44)
    assert blob[6 + 44 :] == comment


def test_decode_user_comment_variants() -> None:
    assert decode_user_comment(b"UNICODE\x00" + "ab猫".encode("utf-16-be")) == "ab猫"
    assert decode_user_comment(b"UNICODE\x00" + "abc, d".encode("utf-16-le")) == "abc, d"
    assert decode_user_comment(b"UNICODE\x00" + "x".encode("utf-16")) == "x"
    assert decode_user_comment(b"ASCII\x00\x00\x00hello\x00") == "hello"
    assert decode_user_comment(b"\x00" * 8 + "ü".encode()) == "ü"
    assert decode_user_comment(b"plain") == "plain"


def test_enable_pnginfo_off_embeds_nothing(saver: ImageSaver, options: Options, tmp_path: Path) -> None:
    options.set("enable_pnginfo", False)
    for fmt in ("png", "jpg", "webp"):
        options.set("samples_format", fmt)
        saved = saver.save_image(picture(), tmp_path, ctx(), infotext=INFOTEXT, save_to_dirs=False)
        with Image.open(saved.path) as im:
            assert read_infotext_from_image(im) is None


def test_save_txt_sidecar(saver: ImageSaver, options: Options, tmp_path: Path) -> None:
    options.set("save_txt", True)
    saved = saver.save_image(picture(), tmp_path, ctx(seed=4), infotext=INFOTEXT, save_to_dirs=False)
    assert saved.txt_path == tmp_path / "00000-4.txt"
    assert saved.txt_path.read_text(encoding="utf-8") == INFOTEXT
    assert saved.paths == (saved.path, saved.txt_path)


def test_existing_png_text_kept_and_other_section(tmp_path: Path) -> None:
    data = encode_image(
        picture(),
        "png",
        infotext="upscaled",
        pnginfo_section="extras",
        existing_info={"parameters": "orig", "postprocessing": "Postprocess upscaler: R-ESRGAN", "dpi": (72, 72)},
    )
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["parameters"] == "orig"
        assert im.info["extras"] == "upscaled"
        assert im.info["postprocessing"] == "Postprocess upscaler: R-ESRGAN"
        geninfo, items = read_image_info(im)
    assert geninfo == "orig"
    assert items == {"extras": "upscaled", "postprocessing": "Postprocess upscaler: R-ESRGAN"}


def test_unknown_format_falls_back_to_png(
    saver: ImageSaver, options: Options, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options.set("samples_format", "nosuchformat")
    with caplog.at_level(logging.WARNING):
        saved = saver.save_image(picture(), tmp_path, ctx(), infotext=INFOTEXT, save_to_dirs=False)
    assert saved.path.suffix == ".png"
    assert "nosuchformat" in caplog.text
    with pytest.raises(ValueError):
        encode_image(picture(), "nosuchformat")


def test_export_for_4chan_copy(saver: ImageSaver, options: Options, tmp_path: Path) -> None:
    options.set("target_side_length", 32.0)
    saved = saver.save_image(picture(64, 48), tmp_path, ctx(seed=8), infotext=INFOTEXT, save_to_dirs=False)
    assert saved.jpeg_copy_path == tmp_path / "00000-8.jpg"
    with Image.open(saved.jpeg_copy_path) as im:
        assert im.size == (32, 24)
        assert read_infotext_from_image(im) == INFOTEXT
    small = saver.save_image(picture(16, 16), tmp_path, ctx(seed=9), save_to_dirs=False)
    assert small.jpeg_copy_path is None
    options.set("export_for_4chan", False)
    assert saver.save_image(picture(64, 48), tmp_path, ctx(), save_to_dirs=False).jpeg_copy_path is None


def test_read_image_info_gif_comment_and_novelai() -> None:
    buf = io.BytesIO()
    picture().convert("P").save(buf, "GIF", comment=b"cat\nSteps: 1, Seed: 2, CFG scale: 3")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert read_infotext_from_image(im) == "cat\nSteps: 1, Seed: 2, CFG scale: 3"

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "1girl, masterpiece")
    info.add_text(
        "Comment", '{"uc": "lowres, bad", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 5}'
    )
    buf = io.BytesIO()
    picture(64, 48).save(buf, "PNG", pnginfo=info)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        text = read_infotext_from_image(im)
    assert text == (
        "1girl, masterpiece\nNegative prompt: lowres, bad\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 5, Size: 64x48, Clip skip: 2, ENSD: 31337"
    )


def test_plain_image_has_no_infotext() -> None:
    assert read_infotext_from_image(picture()) is None


# --- params.txt -------------------------------------------------------------------------------


def test_params_txt(options: Options, paths: Paths) -> None:
    saver = ImageSaver(options, paths)
    assert saver.write_params(INFOTEXT) == paths.params_file
    assert paths.params_file.read_text(encoding="utf-8") == INFOTEXT
    settings = parse_settings(["--data-dir", str(paths.data_dir), "--no-prompt-history"])
    quiet = ImageSaver.from_settings(options, paths, settings)
    assert quiet.write_params("other") is None
    assert paths.params_file.read_text(encoding="utf-8") == INFOTEXT


# --- grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "batch_size", "n_rows", "prevent", "rows"),
    [
        (1, 1, -1, False, 1),
        (2, 1, -1, False, 1),
        (3, 1, -1, False, 2),
        (4, 1, -1, False, 2),
        (6, 1, -1, False, 2),
        (7, 1, -1, False, 3),
        (9, 1, -1, False, 3),
        (7, 1, -1, True, 1),
        (8, 1, -1, True, 2),
        (12, 1, -1, True, 3),
        (8, 4, 0, False, 4),
        (8, 1, 3, False, 3),
        (3, 1, 5, False, 3),
        (0, 1, -1, False, 1),
    ],
)
def test_grid_rows(count: int, batch_size: int, n_rows: int, prevent: bool, rows: int) -> None:
    assert grid_rows(count, batch_size=batch_size, n_rows=n_rows, prevent_empty_spots=prevent) == rows


def test_make_grid_layout() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    tiles = [Image.new("RGB", (10, 8), c) for c in colours]
    grid = make_grid(tiles, rows=2)
    assert grid.size == (20, 16) and grid.mode == "RGB"
    assert grid.getpixel((5, 4)) == colours[0]
    assert grid.getpixel((15, 4)) == colours[1]
    assert grid.getpixel((5, 12)) == colours[2]
    assert grid.getpixel((15, 12)) == (0, 0, 0)
    assert make_grid(tiles).size == (20, 16)  # auto: round(sqrt(3)) = 2 rows
    with pytest.raises(ValueError):
        make_grid([])


def test_save_grids(saver: ImageSaver, options: Options, paths: Paths) -> None:
    images = [picture(seed=i) for i in range(4)]
    assert saver.should_save_grid(4)
    assert not saver.should_save_grid(1)
    grid = saver.grid(images, batch_size=4)
    assert grid.size == (128, 96)
    options.set("n_rows", 0)
    assert saver.grid(images, batch_size=4).size == (64, 192)
    first = saver.save_grid(grid, "txt2img", ctx(seed=11), infotext=INFOTEXT)
    second = saver.save_grid(grid, "txt2img", ctx(seed=12), infotext=INFOTEXT)
    folder = paths.data_dir / "outputs" / "txt2img-grids" / DATE
    assert (first.path, second.path) == (folder / "grid-0000.png", folder / "grid-0001.png")
    with Image.open(first.path) as im:
        assert read_infotext_from_image(im) == INFOTEXT
    options.set("grid_extended_filename", True)
    options.set("grid_format", "jpg")
    third = saver.save_grid(grid, "txt2img", ctx(seed=13))
    assert third.path == folder / "grid-0002-13.jpg"
    options.set("grid_save", False)
    assert not saver.should_save_grid(4)


# --- concurrency ------------------------------------------------------------------------------


def _slow_next_number(folder: object, basename: str = "") -> int:
    """The real numbering, with the race window between looking and claiming made wide."""
    number = next_sequence_number(folder, basename)  # type: ignore[arg-type]
    time.sleep(0.02)
    return number


@pytest.mark.parametrize("same_seed", [False, True])
def test_eight_threads_get_eight_consecutive_numbers(
    saver: ImageSaver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_seed: bool
) -> None:
    monkeypatch.setattr(publishing, "next_sequence_number", _slow_next_number)
    out = tmp_path / "out"
    barrier = threading.Barrier(8)
    results: list[Path] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            barrier.wait(10)
            text = build_infotext("p", "", {"Steps": 1, "Seed": i, "CFG scale": 1})
            saved = saver.save_image(picture(seed=i), out, ctx(seed=7 if same_seed else i), infotext=text)
            with lock:
                results.append(saved.path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(set(results)) == 8
    names = files(out / DATE)
    assert len(names) == 8
    assert sorted(int(n.split("-")[0]) for n in names) == list(range(8))
    for path in results:  # every file is complete and holds its own image's infotext
        with Image.open(path) as im:
            parsed = parse_infotext(read_infotext_from_image(im) or "")
            assert im.tobytes() == picture(seed=int(str(parsed["Seed"]))).tobytes()


_WORKER = """
import sys, time
from pathlib import Path
from modules.core.filenames import FilenameContext
from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.core.filenames import next_sequence_number
from modules.engine import publishing
from modules.engine.outputs import ImageSaver
from PIL import Image

def slow(folder, basename=""):
    number = next_sequence_number(folder, basename)
    time.sleep(0.02)  # widen the race window between looking and claiming
    return number

publishing.next_sequence_number = slow

out, go, wid = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
paths = Paths.from_settings(parse_settings(["--data-dir", str(out)]), out, environ={})
saver = ImageSaver(Options(default_option_infos(), None), paths)
while not go.exists():
    time.sleep(0.005)
for i in range(4):
    image = Image.new("RGB", (32, 32), (wid, i, 0))
    saver.save_image(image, out, FilenameContext(seed=wid * 100 + i), save_to_dirs=False)
"""


def test_processes_saving_at_once_never_share_a_number(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(out), str(go), str(w)], cwd=ROOT, env=env)
        for w in range(3)
    ]
    time.sleep(0.5)
    go.write_text("go")
    for proc in procs:
        assert proc.wait(60) == 0
    names = files(out)
    assert len(names) == 12
    assert sorted(int(n.split("-")[0]) for n in names) == list(range(12))


# --- atomicity --------------------------------------------------------------------------------


def test_failed_write_leaves_no_file(saver: ImageSaver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        saver.save_image(picture(), out, ctx(), infotext=INFOTEXT, save_to_dirs=False)
    assert files(out) == []


def test_failed_publish_leaves_no_file(saver: ImageSaver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"

    def broken(tmp: Path, target: Path) -> bool:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(publishing, "publish_new", broken)
    with pytest.raises(OSError):
        saver.save_image(picture(), out, ctx(), save_to_dirs=False)
    assert files(out) == []


def test_failed_encode_leaves_no_file(saver: ImageSaver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError("encoder crashed")

    monkeypatch.setattr(outputs, "encode_image", broken)
    with pytest.raises(OSError):
        saver.save_image(picture(), tmp_path / "out", ctx(), save_to_dirs=False)
    assert all_files(tmp_path) == []


def test_without_hard_links_names_are_claimed_exclusively(
    saver: ImageSaver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def no_link(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(publishing.os, "link", no_link)
    a = saver.save_image(picture(seed=1), out, ctx(seed=1), infotext=INFOTEXT, save_to_dirs=False)
    b = saver.save_image(picture(seed=2), out, ctx(seed=2), save_to_dirs=False)
    assert files(out) == ["00000-1.png", "00001-2.png"]
    with Image.open(a.path) as im:
        assert read_infotext_from_image(im) == INFOTEXT
    with Image.open(b.path) as im:
        assert im.tobytes() == picture(seed=2).tobytes()

    real_replace = os.replace

    def broken_replace(src: object, dst: object) -> None:
        if str(dst).endswith(".png"):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(publishing.os, "replace", broken_replace)
    with pytest.raises(OSError):
        saver.save_image(picture(), out, ctx(seed=3), save_to_dirs=False)
    assert files(out) == ["00000-1.png", "00001-2.png"]  # no empty placeholder, no temp file
