"""Where things live on disk: A1111's folder layout under `--data-dir` / `--models-dir`.

`Paths.from_settings` only computes paths; `ensure_dirs()` creates the standard folders and is
called by the app at start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modules.core.settings import Settings

logger = logging.getLogger(__name__)

CACHE_FILE_ENV = "SD_WEBUI_CACHE_FILE"


@dataclass(frozen=True, kw_only=True)
class Paths:
    """Resolved folder and file locations (paths are as given, not made absolute)."""

    repo_root: Path
    data_dir: Path
    models_dir: Path
    # models
    checkpoint_dir: Path
    checkpoint_dirs: tuple[Path, ...]
    vae_dir: Path
    vae_dirs: tuple[Path, ...]
    lora_dir: Path
    lycoris_dir: Path
    embeddings_dir: Path
    hypernetwork_dir: Path
    controlnet_dir: Path
    controlnet_dirs: tuple[Path, ...]  # models/ControlNet, --controlnet-dir, the extension's models folder
    controlnet_annotator_dir: Path
    esrgan_dir: Path
    realesrgan_dir: Path
    dat_dir: Path
    bsrgan_dir: Path
    swinir_dir: Path
    scunet_dir: Path
    ldsr_dir: Path
    gfpgan_dir: Path
    codeformer_dir: Path
    clip_dir: Path
    vae_approx_dir: Path
    vae_taesd_dir: Path
    # data
    outputs_dir: Path
    config_file: Path
    ui_config_file: Path
    cache_file: Path
    styles_files: tuple[Path, ...]
    extensions_dir: Path
    extensions_builtin_dir: Path
    config_states_dir: Path
    tmp_dir: Path
    params_file: Path
    user_css_file: Path

    @classmethod
    def from_settings(cls, settings: Settings, repo_root: Path, environ: Mapping[str, str] | None = None) -> Paths:
        """Compute every location from the flags; `environ` defaults to `os.environ`."""
        env = os.environ if environ is None else environ
        data = settings.data_dir if settings.data_dir is not None else repo_root
        models = settings.models_dir if settings.models_dir is not None else data / "models"

        def pick(flag: Path | None, default: Path) -> Path:
            return flag if flag is not None else default

        checkpoint_dir = models / "Stable-diffusion"
        vae_dir = models / "VAE"
        cache_env = env.get(CACHE_FILE_ENV)
        return cls(
            repo_root=repo_root,
            data_dir=data,
            models_dir=models,
            checkpoint_dir=checkpoint_dir,
            checkpoint_dirs=_unique(checkpoint_dir, settings.ckpt_dir),
            vae_dir=vae_dir,
            vae_dirs=_unique(vae_dir, settings.vae_dir),
            lora_dir=pick(settings.lora_dir, models / "Lora"),
            lycoris_dir=pick(settings.lyco_dir_backcompat, models / "LyCORIS"),
            embeddings_dir=pick(settings.embeddings_dir, data / "embeddings"),
            hypernetwork_dir=pick(settings.hypernetwork_dir, models / "hypernetworks"),
            controlnet_dir=models / "ControlNet",
            controlnet_dirs=tuple(
                dict.fromkeys(
                    p
                    for p in (
                        models / "ControlNet",
                        settings.controlnet_dir,
                        data / "extensions" / "sd-webui-controlnet" / "models",  # the extension's folder
                    )
                    if p is not None
                )
            ),
            controlnet_annotator_dir=pick(settings.controlnet_annotator_models_path, models / "ControlNetAnnotators"),
            esrgan_dir=pick(settings.esrgan_models_path, models / "ESRGAN"),
            realesrgan_dir=pick(settings.realesrgan_models_path, models / "RealESRGAN"),
            dat_dir=pick(settings.dat_models_path, models / "DAT"),
            bsrgan_dir=pick(settings.bsrgan_models_path, models / "BSRGAN"),
            swinir_dir=pick(settings.swinir_models_path, models / "SwinIR"),
            scunet_dir=pick(settings.scunet_models_path, models / "ScuNET"),
            ldsr_dir=pick(settings.ldsr_models_path, models / "LDSR"),
            gfpgan_dir=pick(settings.gfpgan_models_path, models / "GFPGAN"),
            codeformer_dir=pick(settings.codeformer_models_path, models / "Codeformer"),
            clip_dir=pick(settings.clip_models_path, models / "CLIP"),
            vae_approx_dir=models / "VAE-approx",
            vae_taesd_dir=models / "VAE-taesd",
            outputs_dir=data / "outputs",
            config_file=pick(settings.ui_settings_file, data / "config.json"),
            ui_config_file=pick(settings.ui_config_file, data / "ui-config.json"),
            cache_file=Path(cache_env) if cache_env else data / "cache.json",
            styles_files=settings.styles_file or (data / "styles.csv",),
            extensions_dir=data / "extensions",
            extensions_builtin_dir=repo_root / "extensions-builtin",
            config_states_dir=data / "config_states",
            tmp_dir=data / "tmp",
            params_file=data / "params.txt",
            user_css_file=data / "user.css",
        )

    def model_folders(self) -> dict[str, Path]:
        """A1111 folder name -> folder, for every model type."""
        return {
            "Stable-diffusion": self.checkpoint_dir,
            "VAE": self.vae_dir,
            "VAE-approx": self.vae_approx_dir,
            "VAE-taesd": self.vae_taesd_dir,
            "Lora": self.lora_dir,
            "LyCORIS": self.lycoris_dir,
            "embeddings": self.embeddings_dir,
            "hypernetworks": self.hypernetwork_dir,
            "ControlNet": self.controlnet_dir,
            "ESRGAN": self.esrgan_dir,
            "RealESRGAN": self.realesrgan_dir,
            "DAT": self.dat_dir,
            "BSRGAN": self.bsrgan_dir,
            "SwinIR": self.swinir_dir,
            "ScuNET": self.scunet_dir,
            "LDSR": self.ldsr_dir,
            "GFPGAN": self.gfpgan_dir,
            "Codeformer": self.codeformer_dir,
            "CLIP": self.clip_dir,
        }

    def output_path(self, value: str | Path) -> Path:
        """An `outdir_*` setting value as a path: relative values are under the data dir."""
        path = Path(value)
        return path if path.is_absolute() else self.data_dir / path

    def ensure_dirs(self) -> list[Path]:
        """Create the model folders, `extensions/` and `tmp/` if missing; returns those created.

        A folder that cannot be created is logged, not raised: the app can run without it.
        """
        created: list[Path] = []
        for folder in (*self.model_folders().values(), self.extensions_dir, self.tmp_dir):
            if folder.is_dir():
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                logger.warning("cannot create folder %s: %s", folder, exc)
                continue
            created.append(folder)
        return created


def _unique(first: Path, extra: Path | None) -> tuple[Path, ...]:
    if extra is None or extra == first:
        return (first,)
    return (first, extra)
