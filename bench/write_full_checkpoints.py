"""Write full-size random-weight Stable Diffusion single files for benchmarks.

    venv/bin/python bench/write_full_checkpoints.py --out bench/out [--families sd1 sdxl] [--dtype fp16]
        [--seed 0] [--verify] [--pipeline]

Files are ``<out>/<family>-full-<dtype>.safetensors`` in the real single-file layouts (see
``tests/fixtures/ldm_checkpoints.py``), streamed one tensor at a time (SD 1.5 fp16 ~2.13 GB, SDXL
fp16 ~6.94 GB; peak memory is one tensor). ``--verify`` then loads every component through
diffusers' single-file converters with a strict ``load_state_dict`` and runs a small forward pass
of each; ``--pipeline`` also runs the diffusers pipeline class's ``from_single_file`` with a local
config folder (offline; it holds the whole checkpoint in RAM).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.fixtures import ldm_checkpoints as lc  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB"


def _load_prefixed(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith(prefixes):
                out[key] = fh.get_tensor(key)
    return out


def _strict_assign(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True, assign=True)


def verify_components(path: Path, family: str) -> dict[str, float]:
    """Strict per-component loads with diffusers' converters (on meta-built models, tensors
    adopted from the file), then a finite forward pass of each. Returns seconds per component."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = lc.family_spec(family, "full")
    timings: dict[str, float] = {}

    start = time.perf_counter()
    sd = _load_prefixed(path, (lc.UNET_PREFIX,))
    ucfg = {k: v for k, v in lc.unet_config(family, "full").items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ucfg)
    _strict_assign(unet, sfu.convert_ldm_unet_checkpoint(sd, ucfg))
    del sd
    dtype = unet.conv_in.weight.dtype
    u = spec.unet
    sample = torch.randn(1, u.in_channels, 16, 16, dtype=dtype)
    context = torch.randn(1, 77, u.context_dim, dtype=dtype)
    added: dict[str, torch.Tensor] | None = None
    if u.adm_in_channels is not None:
        assert spec.open_clip is not None
        n_ids = (u.adm_in_channels - spec.open_clip.proj_dim) // lc.SDXL_TIME_EMBED_DIM
        added = {
            "text_embeds": torch.randn(1, spec.open_clip.proj_dim, dtype=dtype),
            "time_ids": torch.full((1, n_ids), 128.0, dtype=dtype),
        }
    with torch.no_grad():
        out = unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all(), "UNet output not finite"
    del unet
    gc.collect()
    timings["unet"] = time.perf_counter() - start

    start = time.perf_counter()
    sd = _load_prefixed(path, (lc.VAE_PREFIX,))
    vcfg = {k: v for k, v in lc.vae_config(family, "full").items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**vcfg)
    _strict_assign(vae, sfu.convert_ldm_vae_checkpoint(sd, vcfg))
    del sd
    vae = vae.float()  # as loaders run the VAE (fp16 SD VAEs overflow)
    with torch.no_grad():
        image = vae.decode(torch.randn(1, 4, 16, 16)).sample
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all(), "VAE output not finite"
    del vae
    timings["vae"] = time.perf_counter() - start

    for sub, kwargs in lc.text_encoder_configs(family, "full").items():
        start = time.perf_counter()
        prefixes = tuple(p for p in (spec.clip_prefix, spec.open_clip_prefix) if p)
        sd = _load_prefixed(path, prefixes)
        cfg = CLIPTextConfig(**{k: v for k, v in kwargs.items() if k != "architectures"})
        cls: Any = CLIPTextModelWithProjection if sub == "text_encoder_2" else CLIPTextModel
        with torch.device("meta"):
            te = cls(cfg)
        if spec.open_clip is not None and (sub == "text_encoder_2" or spec.kind == "sd2"):
            assert spec.open_clip_prefix is not None
            conv = sfu.convert_open_clip_checkpoint(te, sd, prefix=spec.open_clip_prefix)
        else:
            conv = sfu.convert_ldm_clip_checkpoint(sd)
        if not hasattr(te, "text_model"):
            conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
        conv = {k: v for k, v in conv.items() if not k.endswith("position_ids")}
        _strict_assign(te, conv)
        del sd
        text = te.text_model if hasattr(te, "text_model") else te
        text.embeddings.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings).unsqueeze(0), persistent=False
        )
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
        with torch.no_grad():
            hidden = te(ids).last_hidden_state
        assert torch.isfinite(hidden).all(), f"{sub} output not finite"
        del te
        timings[sub] = time.perf_counter() - start
    return timings


def verify_pipeline(path: Path, family: str, config_root: Path) -> float:
    """``<Pipeline>.from_single_file(path, config=<local folder>)`` as diffusers users call it."""
    import diffusers

    start = time.perf_counter()
    cfg_dir = lc.write_config_folder(config_root / family, family, "full")
    cls = getattr(diffusers, lc.model_index(family)["_class_name"])
    pipe = cls.from_single_file(str(path), config=str(cfg_dir), local_files_only=True, torch_dtype=DTYPES.get("fp16"))
    assert pipe.unet.config.in_channels == lc.family_spec(family, "full").unet.in_channels
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            meta = [n for n, p in component.named_parameters() if p.device.type == "meta"]
            assert not meta, f"{name}: parameters never loaded: {meta[:3]}"
    conv_in = _load_prefixed(path, (f"{lc.UNET_PREFIX}input_blocks.0.0.weight",))
    assert torch.equal(pipe.unet.conv_in.weight, next(iter(conv_in.values())).to(pipe.unet.dtype))
    del pipe
    gc.collect()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--families", nargs="+", default=["sd1", "sdxl"], choices=lc.FAMILIES)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify", action="store_true", help="strict per-component diffusers loads + forward")
    parser.add_argument("--pipeline", action="store_true", help="also run the pipeline's from_single_file")
    parser.add_argument("--skip-existing", action="store_true", help="do not rewrite files that exist")
    args = parser.parse_args(argv)

    dtype = DTYPES[args.dtype]
    for family in args.families:
        path = args.out / f"{family}-full-{args.dtype}.safetensors"
        specs = lc.tensor_specs(family, "full")
        expected = lc.tensor_bytes(specs, dtype)
        if args.skip_existing and path.is_file():
            print(f"{family}: exists {path} ({_gb(path.stat().st_size)})", flush=True)
        else:
            start = time.perf_counter()
            lc.write_checkpoint(path, family, "full", dtype=dtype, seed=args.seed)
            took = time.perf_counter() - start
            size = path.stat().st_size
            print(
                f"{family}: wrote {path} {_gb(size)} (tensor data {_gb(expected)}, {len(specs)} tensors) "
                f"in {took:.1f} s ({size / took / 1e6:.0f} MB/s)",
                flush=True,
            )
        if args.verify:
            timings = verify_components(path, family)
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            print(f"{family}: diffusers converters + strict loads + forward OK ({parts})", flush=True)
        if args.pipeline:
            took = verify_pipeline(path, family, args.out / "configs")
            print(f"{family}: {lc.model_index(family)['_class_name']}.from_single_file OK in {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
