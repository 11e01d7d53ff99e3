"""The benchmarks' command lines parse as the GPU script calls them (no bench is run here)."""

from __future__ import annotations

import pytest

from bench import bench_switch, bench_txt2img


def test_the_txt2img_matrix_flags_select_the_cells() -> None:
    args = bench_txt2img.build_parser().parse_args(
        ["--families", "sd1", "sdxl", "--batches", "1", "4", "--modes", "eager", "compiled", "--steps", "20"]
    )
    assert (args.families, args.batches, args.modes, args.steps) == (["sd1", "sdxl"], [1, 4], ["eager", "compiled"], 20)
    defaults = bench_txt2img.build_parser().parse_args([])
    assert (defaults.families, defaults.batches, defaults.modes, defaults.steps) == (["sd1"], [1], ["eager"], 4)
    assert bench_txt2img.default_size("sdxl", cuda=True) == 1024
    assert bench_txt2img.default_size("sd1", cuda=True) == 512
    assert bench_txt2img.default_size("sdxl", cuda=False) == 256
    with pytest.raises(SystemExit):
        bench_txt2img.build_parser().parse_args(["--modes", "fast"])


def test_the_switch_bench_flags() -> None:
    args = bench_switch.build_parser().parse_args(["--families", "sd1", "--repeats", "3", "--smoke"])
    assert (args.families, args.repeats, args.smoke) == (["sd1"], 3, True)
