from __future__ import annotations

from pathlib import Path

from modules.core.paths import Paths
from modules.core.settings import parse_settings

A1111_MODEL_FOLDERS = {
    "Stable-diffusion",
    "VAE",
    "VAE-approx",
    "VAE-taesd",
    "Lora",
    "LyCORIS",
    "hypernetworks",
    "ESRGAN",
    "RealESRGAN",
    "DAT",
    "BSRGAN",
    "SwinIR",
    "ScuNET",
    "LDSR",
    "GFPGAN",
    "Codeformer",
    "CLIP",
}


def test_defaults_follow_a1111_layout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    p = Paths.from_settings(parse_settings([]), repo, environ={})
    models = repo / "models"
    assert p.data_dir == repo and p.models_dir == models
    assert p.checkpoint_dirs == (models / "Stable-diffusion",)
    assert p.vae_dirs == (models / "VAE",)
    assert p.lora_dir == models / "Lora"
    assert p.lycoris_dir == models / "LyCORIS"
    assert p.embeddings_dir == repo / "embeddings"  # data root, not models/
    assert p.hypernetwork_dir == models / "hypernetworks"
    assert p.esrgan_dir == models / "ESRGAN"
    assert p.realesrgan_dir == models / "RealESRGAN"
    assert p.codeformer_dir == models / "Codeformer"
    assert p.scunet_dir == models / "ScuNET"
    assert p.vae_approx_dir == models / "VAE-approx"
    assert p.vae_taesd_dir == models / "VAE-taesd"
    assert p.config_file == repo / "config.json"
    assert p.ui_config_file == repo / "ui-config.json"
    assert p.cache_file == repo / "cache.json"
    assert p.styles_files == (repo / "styles.csv",)
    assert p.extensions_dir == repo / "extensions"
    assert p.tmp_dir == repo / "tmp"
    assert p.params_file == repo / "params.txt"
    assert p.outputs_dir == repo / "outputs"
    folders = p.model_folders()
    # plus sd-webui-controlnet's models/ControlNet (ControlNet is built in here)
    assert {name for name in folders if name != "embeddings"} == A1111_MODEL_FOLDERS | {"ControlNet"}
    for name, folder in folders.items():
        if name != "embeddings":
            assert folder == models / name


def test_flags_override_folders(tmp_path: Path) -> None:
    s = parse_settings(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--models-dir",
            str(tmp_path / "m"),
            "--ckpt-dir",
            "/a1111/models/Stable-diffusion",
            "--vae-dir",
            "/a1111/models/VAE",
            "--lora-dir",
            "/a1111/models/Lora",
            "--embeddings-dir",
            "/a1111/embeddings",
            "--esrgan-models-path",
            "/up/esr",
            "--ui-settings-file",
            "/etc/sd/config.json",
            "--styles-file",
            "s1.csv",
            "--styles-file",
            "more/*.csv",
        ]
    )
    p = Paths.from_settings(s, tmp_path / "repo", environ={})
    assert p.data_dir == tmp_path / "data"
    assert p.models_dir == tmp_path / "m"
    assert p.checkpoint_dirs == (tmp_path / "m" / "Stable-diffusion", Path("/a1111/models/Stable-diffusion"))
    assert p.vae_dirs == (tmp_path / "m" / "VAE", Path("/a1111/models/VAE"))
    assert p.lora_dir == Path("/a1111/models/Lora")
    assert p.embeddings_dir == Path("/a1111/embeddings")
    assert p.esrgan_dir == Path("/up/esr")
    assert p.gfpgan_dir == tmp_path / "m" / "GFPGAN"
    assert p.config_file == Path("/etc/sd/config.json")
    assert p.styles_files == (Path("s1.csv"), Path("more/*.csv"))
    assert p.extensions_dir == tmp_path / "data" / "extensions"
    assert p.extensions_builtin_dir == tmp_path / "repo" / "extensions-builtin"


def test_models_dir_defaults_under_data_dir(tmp_path: Path) -> None:
    p = Paths.from_settings(parse_settings(["--data-dir", str(tmp_path)]), Path("/repo"), environ={})
    assert p.models_dir == tmp_path / "models"
    assert p.lora_dir == tmp_path / "models" / "Lora"


def test_cache_file_env_override(tmp_path: Path) -> None:
    p = Paths.from_settings(parse_settings([]), tmp_path, environ={"SD_WEBUI_CACHE_FILE": "/var/cache/sd.json"})
    assert p.cache_file == Path("/var/cache/sd.json")


def test_from_settings_touches_nothing_and_ensure_dirs_creates(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    p = Paths.from_settings(parse_settings([]), repo, environ={})
    assert not repo.exists()
    created = p.ensure_dirs()
    for folder in p.model_folders().values():
        assert folder.is_dir()
    assert p.extensions_dir.is_dir()
    assert set(created) >= set(p.model_folders().values())
    assert p.ensure_dirs() == []  # idempotent


def test_output_path(tmp_path: Path) -> None:
    p = Paths.from_settings(parse_settings(["--data-dir", str(tmp_path)]), Path("/repo"), environ={})
    assert p.output_path("outputs/txt2img-images") == tmp_path / "outputs" / "txt2img-images"
    assert p.output_path("/abs/out") == Path("/abs/out")
