"""Command-line flags (AUTOMATIC1111's names and meanings) parsed once into a frozen `Settings`.

`parse_settings(sys.argv[1:], os.environ)` is called by the entry point; nothing else reads
`sys.argv`. Errors raise `SettingsError` (never `SystemExit`, except for `--help`).
Env `COMMANDLINE_ARGS` is shlex-split and appended after argv; env `IGNORE_CMD_ARGS_ERRORS`
turns unknown flags into warnings instead of errors. Warnings (ignored and legacy flags) are
returned in `Settings.warnings` for the caller to log once logging is configured.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from modules.core.errors import SettingsError

REDACTED = "<redacted>"
"""Replaces secret values in `Settings.redacted_dict()`."""

PRECISIONS = ("full", "half", "autocast")
CPU_COMPONENTS = (
    "all",
    "sd",
    "interrogate",
    "gfpgan",
    "esrgan",
    "codeformer",
    "swinir",
    "scunet",
    "bsrgan",
)
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
THEMES = ("light", "dark")
RAY_OUTPUTS = ("replica", "front")

DEFAULT_PORT = 7860
DEFAULT_API_ONLY_PORT = 7861
LOCAL_HOST = "127.0.0.1"
ANY_HOST = "0.0.0.0"

# Flags of A1111 that do nothing any more: accepted for compatibility, reported in `warnings`.
# (flag, takes a value)
LEGACY_FLAGS: tuple[tuple[str, bool], ...] = (
    ("--max-batch-count", True),
    ("--always-batch-cond-uncond", False),
    ("--unload-gfpgan", False),
    ("--deepdanbooru", False),
    ("--show-negative-prompt", False),
    ("--gradio-img2img-tool", True),
    ("--gradio-inpaint-tool", True),
    ("--gradio-queue", False),
    ("--add-stop-route", False),
    ("--ngrok-region", True),
    ("--enable-console-prompts", False),
)
_LEGACY_PREFIX = "legacy__"

_SDPA = "attention uses torch SDPA"
_NOT_WIRED = "not implemented yet: settings stay changeable"
NOT_ACTED_ON_FLAGS: dict[str, str] = {
    "share": "no Gradio share links: nothing is opened to the internet",
    "ngrok": "no ngrok tunnels",
    "ngrok_options": "no ngrok tunnels",
    "disable_tls_verify": "not implemented yet",
    "gradio_allowed_path": "not implemented yet: the UI serves files from its own folders only",
    "config": "model configs come from the checkpoint's tensors (and a <name>.yaml beside it)",
    "lowram": "not implemented yet: weights are loaded into RAM first",
    "xformers_flash_attention": "xformers (when installed) uses its default kernels",
    "opt_split_attention": _SDPA,
    "opt_sub_quad_attention": _SDPA,
    "opt_split_attention_v1": _SDPA,
    "opt_split_attention_invokeai": _SDPA,
    "disable_opt_split_attention": _SDPA,
    "use_ipex": "no Intel XPU support",
    "reinstall_xformers": "the launcher does not install xformers",
    "uv": "the launcher installs with pip",
    "disable_safe_unpickle": "pickled checkpoints always load through an allow-list",
    "allow_code": "there is no custom-code feature",
    "update_check": "no update check",
    "no_gradio_queue": "the Gradio queue is always used",
    "autolaunch": "the server does not open a browser",
    "ui_debug_mode": "not implemented yet (--skip-load-model-at-start starts without a model)",
}
"""Flags accepted (A1111 launch lines keep working) that nothing acts on: `Settings.warnings` says
so at start-up for each one given."""

ALREADY_SO_FLAGS: dict[str, str] = {
    "opt_sdp_attention": _SDPA,
    "skip_torch_cuda_test": "start-up never requires CUDA (no GPU: the CPU is used)",
    "skip_version_check": "no version checks are run",
    "skip_python_version_check": "no version checks are run",
    "do_not_download_clip": "nothing is ever downloaded",
    "no_download_sd_model": "nothing is ever downloaded",
    "disable_console_progressbars": "there are no console progress bars",
}
"""Flags that ask for what happens anyway: nothing reads them, and no warning is needed."""

# Fields whose value is a secret: replaced by REDACTED in `redacted_dict()`.
SECRET_FIELDS = frozenset({"api_auth", "gradio_auth", "ngrok", "ngrok_options"})


Credentials = list[tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every command-line flag, typed. Field names are A1111's `cmd_opts` attribute names."""

    # --- server ---
    listen: bool = False
    port: int | None = None
    server_name: str | None = None
    share: bool = False
    ngrok: str | None = None
    ngrok_options: str | None = None
    subpath: str | None = None
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    disable_tls_verify: bool = False
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = None
    api_log: bool = False
    api_server_stop: bool = False
    timeout_keep_alive: int = 30
    max_body_mb: int = 100  # ours: largest request body, in MB (413 beyond it)
    queue_limit: int = 64  # ours: jobs waiting for the worker (429 + Retry-After beyond it)
    # --- scale-out on Ray Serve (ours; docs/scale-out.md) ---
    ray: bool = False
    ray_address: str | None = None
    ray_replicas: int | None = None  # None: one per GPU of the cluster, else CPU replicas
    ray_replica_cpus: int | None = None  # CPUs (torch threads) per replica; None: 1 with GPUs, else 4
    ray_outputs: str = "replica"
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    gradio_auth: str | None = None
    gradio_auth_path: Path | None = None
    gradio_allowed_path: tuple[Path, ...] = ()
    enable_insecure_extension_access: bool = False
    allow_insecure_listen: bool = False  # ours: serve a non-loopback address without any login
    allowed_hosts: str | None = None  # ours: extra Host header values a loopback-bound server answers
    # --- folders and files ---
    data_dir: Path | None = None
    models_dir: Path | None = None
    ckpt: Path | None = None
    ckpt_dir: Path | None = None
    config: Path | None = None
    vae_dir: Path | None = None
    vae_path: Path | None = None
    lora_dir: Path | None = None
    lyco_dir_backcompat: Path | None = None
    embeddings_dir: Path | None = None
    hypernetwork_dir: Path | None = None
    controlnet_dir: Path | None = None
    controlnet_annotator_models_path: Path | None = None
    esrgan_models_path: Path | None = None
    realesrgan_models_path: Path | None = None
    dat_models_path: Path | None = None
    bsrgan_models_path: Path | None = None
    gfpgan_models_path: Path | None = None
    codeformer_models_path: Path | None = None
    swinir_models_path: Path | None = None
    scunet_models_path: Path | None = None
    ldsr_models_path: Path | None = None
    clip_models_path: Path | None = None
    styles_file: tuple[Path, ...] = ()
    ui_settings_file: Path | None = None
    ui_config_file: Path | None = None
    # --- memory and precision ---
    medvram: bool = False
    medvram_sdxl: bool = False
    lowvram: bool = False
    lowram: bool = False
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    upcast_sampling: bool = False
    # --- attention optimisations ---
    xformers: bool = False
    force_enable_xformers: bool = False
    xformers_flash_attention: bool = False
    opt_sdp_attention: bool = False
    opt_sdp_no_mem_attention: bool = False
    opt_split_attention: bool = False
    opt_sub_quad_attention: bool = False
    opt_split_attention_v1: bool = False
    opt_split_attention_invokeai: bool = False
    disable_opt_split_attention: bool = False
    opt_channelslast: bool = False
    torch_compile: bool = False  # ours: the torch_compile and torch_compile_vae options forced on
    # --- devices ---
    use_cpu: tuple[str, ...] = ()
    use_ipex: bool = False
    device_id: int | None = None
    skip_torch_cuda_test: bool = False
    # --- launcher ---
    skip_prepare_environment: bool = False
    skip_install: bool = False
    reinstall_torch: bool = False
    reinstall_xformers: bool = False
    skip_version_check: bool = False
    skip_python_version_check: bool = False
    uv: bool = False
    test_server: bool = False
    disable_nan_check: bool = False
    do_not_download_clip: bool = False
    no_download_sd_model: bool = False
    # --- safety and locking ---
    no_hashing: bool = False
    disable_safe_unpickle: bool = False
    allow_code: bool = False
    freeze_settings: bool = False
    freeze_settings_in_sections: str | None = None
    freeze_specific_settings: str | None = None
    hide_ui_dir_config: bool = False
    # --- extensions ---
    disable_all_extensions: bool = False
    disable_extra_extensions: bool = False
    update_all_extensions: bool = False
    update_check: bool = False
    # --- UI ---
    no_gradio_queue: bool = False
    theme: str | None = None
    autolaunch: bool = False
    ui_debug_mode: bool = False
    skip_load_model_at_start: bool = False
    no_prompt_history: bool = False
    filenames_max_length: int = 128
    unix_filenames_sanitization: bool = False
    disable_console_progressbars: bool = False
    loglevel: str | None = None
    # --- not a flag: messages produced while parsing (ignored/legacy flags) ---
    warnings: tuple[str, ...] = field(default=(), metadata={"flag": False})
    # --- not ours: flags that extensions' preload.py added (dest -> value; A1111's cmd_opts has them) ---
    extension_flags: Mapping[str, Any] = field(default_factory=dict, metadata={"flag": False})

    def __post_init__(self) -> None:
        if (self.tls_keyfile is None) != (self.tls_certfile is None):
            raise SettingsError("--tls-keyfile and --tls-certfile must be given together (or neither)")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise SettingsError(f"--port must be between 1 and 65535, got {self.port}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        bad_cpu = [c for c in self.use_cpu if c not in CPU_COMPONENTS]
        if bad_cpu:
            raise SettingsError(f"--use-cpu: unknown component(s) {', '.join(bad_cpu)}")

    # --- derived, read-only ---

    @property
    def webui_is_non_local(self) -> bool:
        """True when the server is reachable from other machines (A1111's definition)."""
        return bool(self.share or self.listen or self.ngrok or self.server_name)

    @property
    def disable_extension_access(self) -> bool:
        """Extension install/update is refused: non-local without --enable-insecure-extension-access."""
        return self.webui_is_non_local and not self.enable_insecure_extension_access

    @property
    def bind_host(self) -> str:
        """Host to bind: --server-name if given, else 0.0.0.0 with --listen, else 127.0.0.1."""
        if self.server_name:
            return self.server_name
        return ANY_HOST if self.listen else LOCAL_HOST

    @property
    def effective_port(self) -> int:
        """--port, else 7861 with --nowebui, else 7860."""
        if self.port is not None:
            return self.port
        return DEFAULT_API_ONLY_PORT if self.nowebui else DEFAULT_PORT

    @property
    def api_enabled(self) -> bool:
        """`/sdapi/v1` is mounted: --api, or API-only mode (--nowebui)."""
        return self.api or self.nowebui

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """--cors-allow-origins split on commas (empty entries dropped)."""
        if not self.cors_allow_origins:
            return ()
        return tuple(o.strip() for o in self.cors_allow_origins.split(",") if o.strip())

    def cpu_for(self, component: str) -> bool:
        """True when --use-cpu names `component` (e.g. "sd", "esrgan") or "all"."""
        return "all" in self.use_cpu or component.lower() in self.use_cpu

    def gradio_credentials(self) -> Credentials:
        """UI logins from --gradio-auth plus the lines of --gradio-auth-path (read now)."""
        creds = parse_credentials(self.gradio_auth, "--gradio-auth") if self.gradio_auth else []
        if self.gradio_auth_path is not None:
            creds.extend(read_credentials_file(self.gradio_auth_path, "--gradio-auth-path"))
        return creds

    def api_credentials(self) -> Credentials:
        """HTTP Basic logins for the API from --api-auth."""
        return parse_credentials(self.api_auth, "--api-auth") if self.api_auth else []

    def redacted_dict(self) -> dict[str, Any]:
        """The flags as JSON-ready values, secrets replaced by `REDACTED` (for /cmd-flags)."""
        out: dict[str, Any] = {}
        for f in flag_fields():
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                out[f.name] = REDACTED
            else:
                out[f.name] = _jsonable(value)
        return out


def flag_fields() -> list[dataclasses.Field[Any]]:
    """The `Settings` fields that are command-line flags (everything but `warnings`)."""
    return [f for f in dataclasses.fields(Settings) if f.metadata.get("flag", True)]


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# --- credentials ---


def parse_credentials(text: str, flag: str) -> Credentials:
    """Parse "user:pass,user2:pass2" (passwords may contain ':'); SettingsError names `flag`."""
    creds: Credentials = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"{flag}: expected 'user:password' entries separated by commas")
        creds.append((user, password))
    if not creds:
        raise SettingsError(f"{flag}: expected at least one 'user:password' entry")
    return creds


def read_credentials_file(path: Path, flag: str) -> Credentials:
    """Read credentials from a file: one or more comma-separated 'user:pass' per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from exc
    creds: Credentials = []
    for line in text.splitlines():
        if line.strip():
            creds.extend(parse_credentials(line, flag))
    return creds


# --- argument types (each raises ArgumentTypeError -> "argument --flag: message") ---


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (expected an integer 1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 1-65535")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    convert.__name__ = "int"
    return convert


def _path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def _credentials_flag(flag: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        try:
            parse_credentials(text, flag)
        except SettingsError:
            raise argparse.ArgumentTypeError("expected 'user:password' entries separated by commas") from None
        return text

    convert.__name__ = "credentials"
    return convert


def _loglevel(text: str) -> str:
    value = text.strip().upper()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return value


# --- the parser ---


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises SettingsError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"invalid command line: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser. Every dest is a `Settings` field (legacy flags excepted)."""
    p = _Parser(
        prog="webui.py",
        description="Stable Diffusion web UI and A1111-compatible REST server.",
        allow_abbrev=False,
    )

    def flag(name: str, help_text: str) -> None:
        p.add_argument(name, action="store_true", help=help_text)

    def path(name: str, help_text: str, **kw: Any) -> None:
        p.add_argument(name, type=_path, default=None, metavar="PATH", help=help_text, **kw)

    # server
    flag("--listen", "bind 0.0.0.0 (makes the server non-local: disables extension installs)")
    p.add_argument("--port", type=_port, default=None, help="server port (default 7860, 7861 with --nowebui)")
    p.add_argument("--server-name", default=None, help="host name or address to bind")
    flag("--share", "create a Gradio public share link")
    p.add_argument("--ngrok", default=None, help="ngrok auth token (opens a tunnel)")
    p.add_argument("--ngrok-options", default=None, help="ngrok options as JSON")
    p.add_argument("--subpath", default=None, help="root path when served behind a reverse proxy")
    path("--tls-keyfile", "TLS private key file (needs --tls-certfile)")
    path("--tls-certfile", "TLS certificate file (needs --tls-keyfile)")
    flag("--disable-tls-verify", "accept self-signed certificates")
    flag("--api", "serve the REST API under /sdapi/v1 next to the UI")
    flag("--nowebui", "serve the API only, no web UI")
    p.add_argument("--api-auth", type=_credentials_flag("--api-auth"), default=None, help="API logins 'u:p,u2:p2'")
    flag("--api-log", "log every API request")
    flag("--api-server-stop", "expose the server-kill/restart/stop API routes")
    p.add_argument("--timeout-keep-alive", type=_int_at_least(1), default=30, help="HTTP keep-alive seconds")
    p.add_argument(
        "--max-body-mb",
        type=_int_at_least(1),
        default=100,
        help="largest HTTP request body in MB; larger ones get 413 before they are read (ours)",
    )
    p.add_argument(
        "--queue-limit",
        type=_int_at_least(1),
        default=64,
        help="jobs that may wait for the worker; more get 429 with Retry-After (ours)",
    )
    flag("--ray", "run generation on Ray Serve worker replicas behind this server (ours; pip install .[ray])")
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (e.g. 10.0.0.1:6379 or auto); default: start a local one (ours)",
    )
    p.add_argument(
        "--ray-replicas",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="worker replicas; default one per GPU of the cluster, else CPU replicas (ours)",
    )
    p.add_argument(
        "--ray-replica-cpus",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="CPUs (and torch threads) each replica reserves; default 1 with GPUs, else 4 (ours)",
    )
    p.add_argument(
        "--ray-outputs",
        choices=RAY_OUTPUTS,
        default="replica",
        help="where images are saved with --ray: 'replica' (each worker saves to the output folders "
        "its flags name: a shared folder) or 'front' (this server saves what comes back) (ours)",
    )
    p.add_argument("--cors-allow-origins", default=None, help="comma-separated CORS origins")
    p.add_argument("--cors-allow-origins-regex", default=None, help="CORS origin regular expression")
    p.add_argument("--gradio-auth", type=_credentials_flag("--gradio-auth"), default=None, help="UI logins 'u:p,u2:p2'")
    path("--gradio-auth-path", "file with UI logins, 'u:p' entries per line")
    p.add_argument(
        "--gradio-allowed-path",
        type=_path,
        action="append",
        default=None,
        metavar="PATH",
        help="extra folder the UI may serve files from (repeatable)",
    )
    flag("--enable-insecure-extension-access", "allow extension installs even when the server is non-local")
    flag(
        "--allow-insecure-listen",
        "serve a non-loopback address (--listen, --server-name) without --api-auth/--gradio-auth; "
        "without it such a start is refused (ours)",
    )
    p.add_argument(
        "--allowed-hosts",
        default=None,
        metavar="HOSTS",
        help="comma-separated Host header names a loopback-bound server answers besides localhost, "
        "127.0.0.1 and [::1] (e.g. a reverse proxy's name; '*' turns the check off) (ours)",
    )

    # folders and files
    path("--data-dir", "base folder for models, outputs, extensions and settings (default: the install)")
    path("--models-dir", "base folder of all model folders (default: <data-dir>/models)")
    path("--ckpt", "checkpoint to add to the list and load")
    path("--ckpt-dir", "extra checkpoint folder")
    path("--config", "default model config (.yaml)")
    path("--vae-dir", "extra VAE folder")
    path("--vae-path", "VAE to always use (disables the VAE setting)")
    path("--lora-dir", "LoRA folder (default models/Lora)")
    path("--lyco-dir-backcompat", "old LyCORIS folder (default models/LyCORIS)")
    path("--embeddings-dir", "textual inversion folder (default <data-dir>/embeddings)")
    path("--hypernetwork-dir", "hypernetwork folder (default models/hypernetworks)")
    path("--controlnet-dir", "extra ControlNet model folder (besides models/ControlNet)")
    path(
        "--controlnet-annotator-models-path",
        "ControlNet preprocessor weights (default models/ControlNetAnnotators; nothing is downloaded)",
    )
    for name, folder in (
        ("esrgan", "ESRGAN"),
        ("realesrgan", "RealESRGAN"),
        ("dat", "DAT"),
        ("bsrgan", "BSRGAN"),
        ("gfpgan", "GFPGAN"),
        ("codeformer", "Codeformer"),
        ("swinir", "SwinIR"),
        ("scunet", "ScuNET"),
        ("ldsr", "LDSR"),
        ("clip", "CLIP"),
    ):
        path(f"--{name}-models-path", f"{folder} model folder (default models/{folder})")
    p.add_argument(
        "--styles-file",
        type=_path,
        action="append",
        default=None,
        metavar="PATH",
        help="styles CSV file or glob (repeatable; default <data-dir>/styles.csv)",
    )
    path("--ui-settings-file", "settings file (default <data-dir>/config.json)")
    path("--ui-config-file", "UI defaults file (default <data-dir>/ui-config.json)")

    # memory and precision
    flag("--medvram", "keep only the active model part on the GPU")
    flag("--medvram-sdxl", "--medvram for SDXL models only")
    flag("--lowvram", "offload aggressively, module by module")
    flag("--lowram", "load checkpoint weights straight to VRAM")
    flag("--no-half", "keep the model in fp32")
    flag("--no-half-vae", "keep the VAE in fp32")
    p.add_argument("--precision", choices=PRECISIONS, default="autocast", help="evaluation precision")
    flag("--upcast-sampling", "upcast during sampling (an alternative to --no-half)")

    # attention
    flag("--xformers", "use xformers attention")
    flag("--force-enable-xformers", "use xformers even if it looks unsupported")
    flag("--xformers-flash-attention", "xformers with flash attention")
    flag("--opt-sdp-attention", "prefer PyTorch scaled-dot-product attention")
    flag("--opt-sdp-no-mem-attention", "SDP attention without the memory-efficient kernel (deterministic)")
    flag("--opt-split-attention", "prefer split attention")
    flag("--opt-sub-quad-attention", "prefer sub-quadratic attention")
    flag("--opt-split-attention-v1", "prefer the old split attention")
    flag("--opt-split-attention-invokeai", "prefer InvokeAI's split attention")
    flag("--disable-opt-split-attention", "no cross-attention optimisation")
    flag("--opt-channelslast", "channels-last memory format")
    flag("--torch-compile", "torch.compile the UNet and the VAE decoder (the torch_compile options on)")

    # devices
    p.add_argument(
        "--use-cpu",
        nargs="+",
        type=str.lower,
        choices=CPU_COMPONENTS,
        default=None,
        metavar="COMPONENT",
        help=f"run these components on the CPU: {', '.join(CPU_COMPONENTS)}",
    )
    flag("--use-ipex", "use Intel XPU")
    p.add_argument("--device-id", type=_int_at_least(0), default=None, help="CUDA device index")
    flag("--skip-torch-cuda-test", "start even without a usable CUDA device")

    # launcher
    flag("--skip-prepare-environment", "launcher: do not prepare the environment")
    flag("--skip-install", "launcher: do not install packages")
    flag("--reinstall-torch", "launcher: reinstall torch")
    flag("--reinstall-xformers", "launcher: reinstall xformers")
    flag("--skip-version-check", "do not check the torch version")
    flag("--skip-python-version-check", "do not check the Python version")
    flag("--uv", "launcher: install with uv instead of pip")
    flag("--test-server", "CI mode: implies --api --skip-torch-cuda-test --disable-nan-check")
    flag("--disable-nan-check", "do not fail on NaN latents/images")
    flag("--do-not-download-clip", "never download CLIP")
    flag("--no-download-sd-model", "never download a default checkpoint")

    # safety
    flag("--no-hashing", "do not compute sha256 of checkpoints")
    flag("--disable-safe-unpickle", "allow arbitrary pickles in .ckpt/.pt files (dangerous)")
    flag("--allow-code", "allow running custom code (dangerous)")
    flag("--freeze-settings", "make all settings read-only")
    p.add_argument("--freeze-settings-in-sections", default=None, help="comma-separated settings sections to freeze")
    p.add_argument("--freeze-specific-settings", default=None, help="comma-separated settings keys to freeze")
    flag("--hide-ui-dir-config", "hide directory settings; they cannot be changed from UI or API")

    # extensions
    flag("--disable-all-extensions", "load no extensions")
    flag("--disable-extra-extensions", "load only built-in extensions")
    flag("--update-all-extensions", "git-update all extensions at start")
    flag("--update-check", "check for a newer version at start")

    # UI
    flag("--no-gradio-queue", "plain HTTP requests instead of the Gradio queue")
    p.add_argument("--theme", choices=THEMES, default=None, help="UI theme")
    flag("--autolaunch", "open the browser at start")
    flag("--ui-debug-mode", "start the UI without loading a model")
    flag("--skip-load-model-at-start", "do not load a checkpoint at start")
    flag("--no-prompt-history", "do not write params.txt")
    p.add_argument(
        "--filenames-max-length",
        type=_int_at_least(1),
        default=128,
        help="maximum length of output file names",
    )
    flag("--unix-filenames-sanitization", "only remove '/' and NUL from file names")
    flag("--disable-console-progressbars", "no progress bars on the console")
    p.add_argument("--loglevel", type=_loglevel, default=None, help=f"log level: {', '.join(LOG_LEVELS)}")

    # legacy: accepted, ignored
    for name, takes_value in LEGACY_FLAGS:
        dest = _LEGACY_PREFIX + name.lstrip("-").replace("-", "_")
        if takes_value:
            p.add_argument(name, dest=dest, default=None, help=argparse.SUPPRESS)
        else:
            p.add_argument(name, dest=dest, action="store_true", help=argparse.SUPPRESS)
    return p


def split_env_args(environ: Mapping[str, str]) -> list[str]:
    """`COMMANDLINE_ARGS` split like a shell would."""
    text = environ.get("COMMANDLINE_ARGS", "")
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise SettingsError(f"COMMANDLINE_ARGS cannot be split: {exc}") from exc


def _is_true_env(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def not_acted_on_warnings(values: Mapping[str, object]) -> list[str]:
    """ "--flag: accepted, not acted on (why)" for each flag of `NOT_ACTED_ON_FLAGS` given a value
    other than its default."""
    defaults = {f.name: f.default for f in flag_fields()}
    return [
        f"--{name.replace('_', '-')}: accepted, not acted on ({reason})"
        for name, reason in NOT_ACTED_ON_FLAGS.items()
        if values.get(name, defaults[name]) != defaults[name]
    ]


def parse_settings(
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    preloads: Sequence[Callable[[argparse.ArgumentParser], None]] = (),
    known_only: bool = False,
) -> Settings:
    """Parse `argv` (without the program name) plus env COMMANDLINE_ARGS into `Settings`.

    `preloads` are extensions' `preload(parser)` functions: the flags they add are parsed too and
    land in `Settings.extension_flags`. `known_only` skips flags nobody knows (the first pass that
    finds the extensions, before their flags exist)."""
    env: Mapping[str, str] = environ if environ is not None else {}
    args = [*argv, *split_env_args(env)]
    parser = build_parser()
    ours = {action.dest for action in parser._actions}
    for preload in preloads:
        preload(parser)
    warnings: list[str] = []
    if known_only:
        namespace, _unknown = parser.parse_known_args(args)
    elif _is_true_env(env.get("IGNORE_CMD_ARGS_ERRORS")):
        namespace, unknown = parser.parse_known_args(args)
        if unknown:
            warnings.append(f"ignored unknown command-line arguments: {' '.join(unknown)}")
    else:
        namespace = parser.parse_args(args)
    values = vars(namespace)
    extension_flags = {k: values.pop(k) for k in list(values) if k not in ours}

    for name, _ in LEGACY_FLAGS:
        dest = _LEGACY_PREFIX + name.lstrip("-").replace("-", "_")
        if values.pop(dest, None) not in (None, False):
            warnings.append(f"{name} does nothing any more and is ignored")

    if values["test_server"]:
        values.update(api=True, skip_torch_cuda_test=True, disable_nan_check=True)
    for key in ("use_cpu", "styles_file", "gradio_allowed_path"):
        values[key] = tuple(values[key] or ())
    warnings.extend(not_acted_on_warnings(values))
    if not values["ray"]:
        ray_defaults = {"ray_address": None, "ray_replicas": None, "ray_replica_cpus": None, "ray_outputs": "replica"}
        warnings.extend(
            f"--{name.replace('_', '-')}: accepted, not acted on (only with --ray)"
            for name, default in ray_defaults.items()
            if values[name] != default
        )

    return Settings(**values, warnings=tuple(warnings), extension_flags=extension_flags)
