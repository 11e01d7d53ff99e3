"""The built-in scripts through the API with A1111's `script_args`: prompt matrix, prompts from file
or textbox, loopback, outpainting mk2, poor man's outpainting, SD upscale (A1111's own SD upscale
test is tests/api/test_a1111_sd_upscale.py). Tiny sd1 checkpoint, 64x64, 1-2 steps; plus the
pure parts (tiles, matched noise, the denoising curve, line parsing) without a model."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.app import build_services, create_app
from modules.core.errors import ValidationError
from modules.core.infotext import parse_infotext
from modules.core.settings import parse_settings
from modules.extensions.builtin_scripts import tiles
from modules.extensions.builtin_scripts.loopback import denoising_strength
from modules.extensions.builtin_scripts.outpainting_mk_2 import matched_noise, split_growth
from modules.extensions.builtin_scripts.prompt_matrix import matrix_prompts, matrix_shape
from modules.extensions.builtin_scripts.prompts_from_file import load_prompt_file, parse_line, parse_lines
from modules.extensions.builtin_scripts.sd_upscale import resolve_upscaler
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs

SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "seed": 5}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tiny_models: dict[str, Path], module_tmp: ModuleTempDirs) -> Iterator[Services]:
    root = module_tmp.mktemp("builtin-scripts")
    sd = root / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    shutil.copy(tiny_models["sd1"], sd / "sd1.safetensors")
    services = build_services(parse_settings(["--data-dir", str(root), "--api"], {}), root, {})
    services.engine.switch_model(checkpoint="sd1.safetensors")
    yield services
    services.worker.shutdown()


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        yield test_client


def b64_png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def init_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (200, 40, 40))
    image.paste((20, 20, 220), (16, 16, size[0] - 16, size[1] - 16))
    return image


def post(client: TestClient, tab: str, payload: dict[str, Any]) -> tuple[list[Image.Image], dict[str, Any]]:
    response = client.post(f"/sdapi/v1/{tab}", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    return [decode(b) for b in body["images"]], json.loads(body["info"])


def post_error(client: TestClient, tab: str, payload: dict[str, Any]) -> str:
    response = client.post(f"/sdapi/v1/{tab}", json=payload)
    assert response.status_code in (400, 422), response.text
    body = response.json()
    return str(body.get("errors") or body.get("detail") or body)


def img2img(**extra: Any) -> dict[str, Any]:
    return {**SMALL, "prompt": "a house", "init_images": [b64_png(init_image())], "denoising_strength": 0.5, **extra}


def params(infotext: str) -> dict[str, Any]:
    """The infotext's parameters, numbers as numbers."""
    out: dict[str, Any] = {}
    for key, value in parse_infotext(infotext).items():
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except (TypeError, ValueError):
                continue
        out[key] = value
    return out


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- what the API lists -----------------------------------------------------------------------

LABELS = {
    ("prompt matrix", False): [
        "Put variable parts at start of prompt",
        "Use different seed for each picture",
        "Select prompt",
        "Select joining char",
        "Grid margins (px)",
    ],
    ("prompts from file or textbox", False): [
        "Iterate seed every line",
        "Use same random seed for all lines",
        "Insert prompts at the",
        "List of prompt inputs",
    ],
    ("loopback", True): [
        "Loops",
        "Final denoising strength",
        "Denoising strength curve",
        "Append interrogated prompt at each iteration",
    ],
    ("outpainting mk2", True): [
        None,
        "Pixels to expand",
        "Mask blur",
        "Outpainting direction",
        "Fall-off exponent (lower=higher detail)",
        "Color variation",
    ],
    ("poor man's outpainting", True): ["Pixels to expand", "Mask blur", "Masked content", "Outpainting direction"],
    ("sd upscale", True): [None, "Tile overlap", "Upscaler", "Scale Factor"],
}


def test_scripts_are_listed_with_a1111_arguments_in_order(client: TestClient) -> None:
    scripts = client.get("/sdapi/v1/scripts").json()
    assert {"prompt matrix", "prompts from file or textbox"} <= set(scripts["txt2img"])
    assert {"loopback", "outpainting mk2", "poor man's outpainting", "sd upscale", "prompt matrix"} <= set(
        scripts["img2img"]
    )
    for img2img_only in ("loopback", "outpainting mk2", "poor man's outpainting", "sd upscale"):
        assert img2img_only not in scripts["txt2img"]
    info = {(s["name"], s["is_img2img"]): s for s in client.get("/sdapi/v1/script-info").json()}
    for key, labels in LABELS.items():
        args = info[key]["args"]
        assert [a["label"] for a in args] == labels, key
    defaults = {key: [a["value"] for a in info[key]["args"]] for key in LABELS}
    assert defaults["prompt matrix", False] == [False, False, "positive", "comma", 0]
    assert defaults["loopback", True] == [4, 0.5, "Linear", "None"]
    assert defaults["outpainting mk2", True][1:] == [128, 8, ["left", "right", "up", "down"], 1.0, 0.05]
    assert defaults["poor man's outpainting", True] == [128, 4, "fill", ["left", "right", "up", "down"]]
    assert defaults["sd upscale", True][1:] == [64, "None", 2.0]
    upscaler = info["sd upscale", True]["args"][2]
    assert upscaler["choices"][:3] == ["None", "Lanczos", "Nearest"]


# -- prompt matrix ----------------------------------------------------------------------------


def test_prompt_matrix_grid_cells_and_prompts(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "a cat|red|blue", "script_name": "prompt matrix"}
    payload["script_args"] = [False, False, "positive", "comma", 0]
    images, info = post(client, "txt2img", payload)
    assert info["index_of_first_image"] == 1
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]
    assert info["all_seeds"] == [5, 5, 5, 5]
    assert len(images) == 5
    grid, cells = images[0], images[1:]
    # 2 parts: 2 columns ("red" off, on) x 2 rows ("blue" off, on), labels left (3/4 of a cell)
    # and on top; combination k is cell k in row-major order
    assert grid.width == 48 + 2 * 64
    pad_top = grid.height - 2 * 64
    assert pad_top > 0
    background = (255, 255, 255)
    left_label = pixels(grid.crop((48, 0, 48 + 64, pad_top)))  # "red", struck through
    right_label = pixels(grid.crop((48 + 64, 0, 48 + 128, pad_top)))  # "red"
    row_labels = pixels(grid.crop((0, pad_top, 48, grid.height)))
    assert (left_label == (153, 153, 153)).all(axis=-1).any()  # inactive colour, with the strike
    assert left_label.min() >= 140
    assert right_label.min() < 100 and not (right_label == (153, 153, 153)).all(axis=-1).any()
    assert (row_labels != background).any()
    for k, cell in enumerate(cells):
        col, row = k % 2, k // 2
        # the cells are the bottom-right block of the grid (labels, if any, go left and top)
        x = grid.width - (2 - col) * 64
        y = grid.height - (2 - row) * 64
        assert np.array_equal(pixels(grid.crop((x, y, x + 64, y + 64))), pixels(cell)), k
    for k, text in enumerate(info["infotexts"][1:]):
        assert text.startswith(info["all_prompts"][k] + "\n"), text
    # the same prompt made alone is the same image
    alone, _ = post(client, "txt2img", {**SMALL, "prompt": "a cat, red"})
    assert np.array_equal(pixels(alone[0]), pixels(cells[1]))


def test_prompt_matrix_negative_space_start_seeds_margin_and_uneven_batches(client: TestClient) -> None:
    payload = {
        **SMALL,
        "prompt": "a dog",
        "negative_prompt": "ugly|dark|noisy",
        "batch_size": 3,  # 4 images: a batch of 3 and one of 1
        "script_name": "prompt matrix",
        "script_args": [True, True, "negative", "space", 4],
    }
    images, info = post(client, "txt2img", payload)
    assert info["all_negative_prompts"] == ["ugly", "dark ugly", "noisy ugly", "dark noisy ugly"]
    assert info["all_prompts"] == ["a dog"] * 4
    assert info["all_seeds"] == [5, 6, 7, 8]
    assert len(images) == 5
    grid = images[0]
    # 2 x 2 cells with a 4 px margin between them, labels left and on top
    assert grid.width == 48 + 2 * 64 + 4 and grid.height > 2 * 64 + 4
    gap = pixels(grid.crop((48 + 64, grid.height - 64, 48 + 68, grid.height)))
    assert (gap == (255, 255, 255)).all()
    last = images[4]
    assert np.array_equal(pixels(grid.crop((grid.width - 64, grid.height - 64, grid.width, grid.height))), pixels(last))
    assert params(info["infotexts"][4])["Seed"] == 8


def test_prompt_matrix_parts_and_shape() -> None:
    parts, prompts = matrix_prompts("base|a|b,|c", put_at_start=False, delimiter=", ")
    assert parts == ["base", "a", "b,", "c"]
    assert len(prompts) == 8
    assert prompts[0] == "base" and prompts[5] == "base, a, c" and prompts[7] == "base, a, b, c"
    assert matrix_shape(3) == (4, 2)
    assert matrix_shape(1) == (2, 1)


def test_prompt_matrix_bad_arguments_are_user_errors(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "a|b", "script_name": "prompt matrix", "script_args": [False, False, "both"]}
    assert "prompt type" in post_error(client, "txt2img", payload)
    payload["script_args"] = [False, False, "positive", "tab"]
    assert "delimiter" in post_error(client, "txt2img", payload)


# -- prompts from file ------------------------------------------------------------------------


def test_prompts_from_file_lines_with_options(client: TestClient) -> None:
    text = "\n".join(
        [
            "plain words",
            "",
            '--prompt "a dog" running --steps 2 --seed 11 --negative_prompt bad hands',
            "--prompt cat --cfg_scale 3.5 --sd_model sd1 --sampler_name euler",
        ]
    )
    payload = {**SMALL, "prompt": "base", "seed": 100, "script_name": "prompts from file or textbox"}
    payload["script_args"] = [True, False, "end", text]
    images, info = post(client, "txt2img", payload)
    assert len(images) == 3
    assert info["all_prompts"] == ["base plain words", "base a dog running", "base cat"]
    assert info["all_negative_prompts"][1] == "bad hands"
    first, second, third = (params(t) for t in info["infotexts"])
    assert (first["Seed"], first["Steps"]) == (100, 1)
    assert (second["Seed"], second["Steps"]) == (11, 2)
    # "iterate seed every line": 100, (line 2 has its own), then 102
    assert third["Seed"] == 102
    assert third["CFG scale"] == 3.5
    assert third["Model"] == "sd1"
    alone, _ = post(
        client,
        "txt2img",
        {**SMALL, "prompt": "base a dog running", "negative_prompt": "bad hands"}
        | {
            "steps": 2,
            "seed": 11,
        },
    )
    assert np.array_equal(pixels(alone[0]), pixels(images[1]))


def test_prompts_from_file_start_position_and_bad_lines(client: TestClient) -> None:
    payload = {**SMALL, "prompt": "base", "seed": -1, "script_name": "prompts from file or textbox"}
    payload["script_args"] = [False, True, "start", "one\n--prompt two --steps 1"]
    _, info = post(client, "txt2img", payload)
    assert info["all_prompts"] == ["one base", "two base"]
    # "use same random seed for all lines": -1 becomes one random seed for every line
    assert info["all_seeds"][0] == info["all_seeds"][1] != -1

    for line, expected in [
        ("--prompt x --stepz 3", "unknown commandline option: --stepz"),
        ("--prompt x --steps", "missing argument"),
        ("--steps three", "--steps three"),
        ('--prompt "unclosed', "cannot split"),
        ("--sd_model nothing-like-this", "Unknown checkpoint"),
        ("--sampler_name NoSuchSampler", "unknown sampler"),
        ("--steps 0", "--steps must be at least 1"),
    ]:
        payload["script_args"] = [False, False, "start", f"fine\n{line}"]
        message = post_error(client, "txt2img", payload)
        assert "line 2" in message and expected in message, (line, message)


def test_prompts_from_file_upload_fills_the_textbox(tmp_path: Path) -> None:
    data = b"first line \r\n--prompt second\n"
    cleared, text, _ = load_prompt_file(data)
    assert cleared is None and text == "first line\n--prompt second\n"
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    assert load_prompt_file(str(path))[1] == text


def test_prompts_from_file_parsing() -> None:
    assert parse_line('--prompt "a b" c --steps 3 --cfg_scale 2.5 --tiling true --restore_faces no') == {
        "prompt": "a b c",
        "steps": 3,
        "cfg_scale": 2.5,
        "tiling": True,
        "restore_faces": False,
    }
    assert parse_line('--styles "one, two" --negative_prompt x y') == {
        "styles": ["one", "two"],
        "negative_prompt": "x y",
    }
    lines = parse_lines("a\n\n  b  \n--seed 4")
    assert [(line.number, line.args) for line in lines] == [
        (1, {"prompt": "a"}),
        (3, {"prompt": "b"}),
        (4, {"seed": 4}),
    ]
    with pytest.raises(ValidationError, match="line 1"):
        parse_lines("--width x")


# -- loopback ---------------------------------------------------------------------------------


def test_loopback_loops_and_denoising_progression(client: TestClient) -> None:
    payload = img2img(denoising_strength=0.8, script_name="loopback", script_args=[3, 0.2, "Linear", "None"])
    images, info = post(client, "img2img", payload)
    assert info["index_of_first_image"] == 1  # the loop's grid first
    assert len(images) == 4
    assert images[0].size == (3 * 64, 64)
    strengths = [float(params(t)["Denoising strength"]) for t in info["infotexts"][1:]]
    assert strengths == pytest.approx([0.8, 0.5, 0.2])
    seeds = [params(t)["Seed"] for t in info["infotexts"][1:]]
    assert seeds == [5, 6, 7]
    extra = params(info["infotexts"][1])
    assert extra["Denoising curve"] == "Linear" and float(extra["Final denoising strength"]) == 0.2
    # each loop starts from the one before: the second loop alone, from the first output
    again, _ = post(client, "img2img", img2img(init_images=[b64_png(images[1])], seed=6, denoising_strength=0.5))
    assert np.array_equal(pixels(again[0]), pixels(images[2]))


def test_loopback_interrogation_needs_weights_then_appends_tags(client: TestClient, services: Services) -> None:
    from tests.fixtures import interrogate_models

    for choice, missing in (("CLIP", "BLIP"), ("DeepBooru", "model-resnet_custom_v3.pt")):
        payload = img2img(script_name="loopback", script_args=[2, 0.5, "Linear", choice])
        response = client.post("/sdapi/v1/img2img", json=payload)
        assert response.status_code == 404  # as /interrogate answers missing weights
        assert missing in response.json()["detail"]  # names the file to put in place
    payload = img2img(script_name="loopback", script_args=[2, 0.5, "Wavy", "None"])
    assert "curve" in post_error(client, "img2img", payload)

    interrogate_models.write_deepbooru(services.paths.models_dir)
    try:
        payload = img2img(prompt="a cat", script_name="loopback", script_args=[2, 0.5, "Linear", "DeepBooru"])
        _, info = post(client, "img2img", payload)
        prompts = [t.split("\n", 1)[0] for t in info["infotexts"][1:]]
        assert len(prompts) == 2 and all(p.startswith("a cat, ") and len(p) > len("a cat, ") for p in prompts)
        assert params(info["infotexts"][1])["Append interrogated prompt at each iteration"] == "DeepBooru"
    finally:
        shutil.rmtree(services.paths.models_dir / "torch_deepdanbooru", ignore_errors=True)


def test_loopback_curves() -> None:
    assert denoising_strength(0, 5, 0.8, 0.2, "Linear") == 0.8
    assert denoising_strength(2, 5, 0.8, 0.2, "Linear") == pytest.approx(0.5)
    aggressive = denoising_strength(1, 5, 0.8, 0.2, "Aggressive")
    lazy = denoising_strength(1, 5, 0.8, 0.2, "Lazy")
    linear = denoising_strength(1, 5, 0.8, 0.2, "Linear")
    assert aggressive < linear < lazy  # going down: aggressive moves early, lazy late
    assert denoising_strength(4, 5, 0.8, 0.2, "Lazy") == pytest.approx(0.2)
    assert denoising_strength(0, 1, 0.7, 0.1, "Aggressive") == 0.7


# -- outpainting ------------------------------------------------------------------------------


def test_outpainting_mk2_grows_chosen_sides(client: TestClient) -> None:
    # mask blur 4 (x4 = 16): the engine's blur needs its kernel radius under the 64 px side
    payload = img2img(script_name="outpainting mk2", script_args=[None, 64, 4, ["left", "up"], 1.0, 0.05])
    images, info = post(client, "img2img", payload)
    assert len(images) == 1  # one image: no grid (grid_only_if_multiple)
    out = images[0]
    assert out.size == (128, 128)
    # the init image sits in the bottom-right corner, untouched (both generations were beside
    # it) but for the mask blur's band on its grown edges, where A1111 puts noise too
    assert np.array_equal(pixels(out.crop((68, 68, 128, 128))), pixels(init_image().crop((4, 4, 64, 64))))
    assert np.abs(pixels(out.crop((0, 0, 64, 64))) - pixels(init_image())).mean() > 10
    # mask blur is used x4 on the axes that grow (A1111)
    assert params(info["infotexts"][0])["Mask blur"] == 16

    for args, expected in [
        ([None, 5000, 4, ["left", "right"], 1.0, 0.05], "more than 8192 px per side"),
        ([None, 64, 4, ["north"], 1.0, 0.05], "directions"),
        ([None, 64, -1, ["left"], 1.0, 0.05], "mask blur"),
        ([None, 64, 4, ["left"], 1.0, 3.0], "color variation"),
    ]:
        payload["script_args"] = args
        assert expected in post_error(client, "img2img", payload), args


def test_outpainting_mk2_shares_growth_between_sides(client: TestClient) -> None:
    payload = img2img(script_name="outpainting mk2", script_args=["", 8, 0, ["left", "right"], 1.0, 0.05])
    images, _ = post(client, "img2img", payload)
    assert images[0].size == (128, 64)  # 64 + 8 + 8 rounded up to 128: 32 each side
    assert np.array_equal(pixels(images[0].crop((32, 0, 96, 64))), pixels(init_image()))


def test_poor_mans_outpainting(client: TestClient) -> None:
    payload = img2img(script_name="poor man's outpainting", script_args=[32, 4, "latent nothing", ["right"]])
    images, info = post(client, "img2img", payload)
    assert len(images) == 1
    out = images[0]
    assert out.size == (128, 64)
    # tiles at x = 0, 32, 64 (overlap 32); the first is all init image and is not inpainted
    assert np.array_equal(pixels(out.crop((0, 0, 32, 64))), pixels(init_image().crop((0, 0, 32, 64))))
    text = params(info["infotexts"][0])
    assert text["Mask blur"] == 8  # mask blur x2
    assert "Masked content: latent nothing" in info["infotexts"][0]

    payload["script_args"] = [128, 4, 0, ["right"]]  # pixels >= the 64 px tile
    assert "smaller than the tile" in post_error(client, "img2img", payload)
    payload["script_args"] = [32, 4, 7, ["right"]]
    assert "masked content" in post_error(client, "img2img", payload)
    payload["script_args"] = [32, 4, 1, ["sideways"]]
    assert "directions" in post_error(client, "img2img", payload)


def test_split_growth() -> None:
    assert split_growth(64, 64, 0) == (64, 0)
    assert split_growth(64, 8, 8) == (32, 32)
    assert split_growth(100, 0, 10) == (0, 28)
    assert split_growth(64, 0, 0) == (0, 0)


def test_matched_noise_keeps_the_known_part_and_fills_from_its_colours() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64, 3))
    image[:, :32] = rng.uniform(0.2, 0.4, (64, 32, 3))
    mask = np.zeros((64, 64, 3))
    mask[:, 32:] = 1.0
    out = matched_noise(image.copy(), mask, 1.0, 0.05)
    assert np.array_equal(out[:, :32], image[:, :32])
    filled = out[:, 32:]
    assert filled.min() >= 0.2 - 1e-9 and filled.max() <= 0.4 + 1e-9
    assert filled.std() > 0.01
    assert np.array_equal(out, matched_noise(image.copy(), mask, 1.0, 0.05))  # deterministic


# -- SD upscale -------------------------------------------------------------------------------


def test_sd_upscale_index_batches_and_iterations(client: TestClient) -> None:
    payload = img2img(
        batch_size=2, n_iter=2, script_name="sd upscale", script_args=["", 32, 1, 1.5]
    )  # 1 = Lanczos in A1111's list
    images, info = post(client, "img2img", payload)
    assert [im.size for im in images] == [(96, 96), (96, 96)]
    assert info["all_seeds"] == [5, 6]
    first = params(info["infotexts"][0])
    assert first["SD upscale upscaler"] == "Lanczos" and first["SD upscale overlap"] == 32
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_sd_upscale_bad_arguments(client: TestClient) -> None:
    for args, expected in [
        (["", 8, "NoSuchUpscaler", 2.0], "upscaler not found"),
        (["", 8, 99, 2.0], "out of range"),
        (["", 64, "Lanczos", 2.0], "smaller than the tile"),
        (["", 8, "Lanczos", "big"], "scale factor"),
        (["", 8, "Lanczos", 0], "scale factor"),
    ]:
        payload = img2img(script_name="sd upscale", script_args=args)
        assert expected in post_error(client, "img2img", payload), args


def test_resolve_upscaler() -> None:
    names = ["None", "Lanczos", "Nearest", "4x-Foo"]
    assert resolve_upscaler("lanczos", names) == "Lanczos"
    assert resolve_upscaler("4X-FOO", names) == "4x-Foo"
    assert resolve_upscaler(2, names) == "Nearest"
    assert resolve_upscaler(3.0, names) == "4x-Foo"
    with pytest.raises(ValidationError):
        resolve_upscaler(True, names)


# -- tiles ------------------------------------------------------------------------------------


def _noise_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(("size", "tile", "overlap"), [((128, 128), 64, 8), ((200, 90), 64, 16), ((64, 64), 64, 0)])
def test_tiles_round_trip(size: tuple[int, int], tile: int, overlap: int) -> None:
    image = _noise_image(*size)
    grid = tiles.split_grid(image, tile, tile, overlap)
    xs = [t.x for t in grid.rows[0].tiles]
    ys = [r.y for r in grid.rows]
    assert xs[0] == 0 and xs[-1] + tile == size[0] and ys[0] == 0 and ys[-1] + tile == size[1]
    for a, b in itertools.pairwise(xs):
        assert b - a <= tile - overlap  # neighbours overlap by at least `overlap`
    assert all(t.image.size == (tile, tile) for t in grid.tiles())
    assert np.array_equal(pixels(tiles.combine_grid(grid)), pixels(image))


def test_tiles_blend_overlaps_linearly() -> None:
    grid = tiles.split_grid(Image.new("RGB", (112, 64)), 64, 64, 16)
    assert [t.x for t in grid.tiles()] == [0, 48]
    grid.replace_images([Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (160, 160, 160))])
    row = pixels(tiles.combine_grid(grid))[10, :, 0]
    assert (row[:48] == 0).all() and (row[64:] == 160).all()
    assert list(row[48:64]) == [round(160 * i / 16) for i in range(16)]


def test_tiles_smaller_image_and_bad_overlap() -> None:
    image = _noise_image(40, 30)
    grid = tiles.split_grid(image, 64, 64, 8)
    assert grid.tile_count == 1
    assert np.array_equal(pixels(tiles.combine_grid(grid)), pixels(image))
    with pytest.raises(ValidationError, match="smaller than the tile"):
        tiles.split_grid(image, 64, 64, 64)
