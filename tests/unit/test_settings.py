from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from modules.core.errors import SettingsError
from modules.core.settings import (
    REDACTED,
    Settings,
    build_parser,
    flag_fields,
    parse_settings,
)


def test_defaults() -> None:
    s = parse_settings([])
    assert s == Settings()
    assert s.bind_host == "127.0.0.1"
    assert s.effective_port == 7860
    assert not s.webui_is_non_local
    assert not s.disable_extension_access
    assert not s.api_enabled
    assert s.precision == "autocast"
    assert s.timeout_keep_alive == 30
    assert s.filenames_max_length == 128
    assert s.use_cpu == ()
    assert s.styles_file == ()
    assert s.warnings == ()


def test_parser_defaults_match_dataclass_defaults() -> None:
    """Every flag dest is a Settings field with the same default (legacy flags excepted)."""
    parser = build_parser()
    dests = {a.dest: a.default for a in parser._actions if a.dest != "help" and not a.dest.startswith("legacy__")}
    fields = {f.name: f.default for f in flag_fields()}
    assert set(dests) == set(fields)
    for name, default in dests.items():
        expected = fields[name]
        if expected == ():  # repeatable flags: argparse default None becomes an empty tuple
            assert default is None, name
        else:
            assert default == expected, name


def test_settings_is_frozen() -> None:
    s = parse_settings(["--listen"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.listen = False  # type: ignore[misc]


def test_typical_flags_parse() -> None:
    s = parse_settings(
        [
            "--listen",
            "--port",
            "9000",
            "--api",
            "--xformers",
            "--medvram-sdxl",
            "--precision",
            "full",
            "--no-half",
            "--use-cpu",
            "SD",
            "esrgan",
            "--data-dir",
            "/srv/sd",
            "--ckpt-dir",
            "rel/ckpts",
            "--styles-file",
            "a.csv",
            "--styles-file",
            "b/*.csv",
            "--device-id",
            "1",
            "--loglevel",
            "debug",
            "--theme",
            "dark",
        ]
    )
    assert s.listen and s.api and s.xformers and s.medvram_sdxl and s.no_half
    assert s.port == 9000 and s.effective_port == 9000
    assert s.precision == "full"
    assert s.use_cpu == ("sd", "esrgan")
    assert s.cpu_for("sd") and s.cpu_for("esrgan") and not s.cpu_for("gfpgan")
    assert s.data_dir == Path("/srv/sd")
    assert s.ckpt_dir == Path("rel/ckpts")  # kept as given, not resolved
    assert s.styles_file == (Path("a.csv"), Path("b/*.csv"))
    assert s.device_id == 1
    assert s.loglevel == "DEBUG"
    assert s.theme == "dark"


def test_use_cpu_all() -> None:
    s = parse_settings(["--use-cpu", "all"])
    assert s.cpu_for("sd") and s.cpu_for("interrogate") and s.cpu_for("anything")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--port", "abc"], "--port"),
        (["--port", "70000"], "--port"),
        (["--port", "0"], "--port"),
        (["--precision", "foo"], "--precision"),
        (["--use-cpu", "bogus"], "--use-cpu"),
        (["--gradio-auth", "justauser"], "--gradio-auth"),
        (["--gradio-auth", "user:"], "--gradio-auth"),
        (["--api-auth", ":pw"], "--api-auth"),
        (["--timeout-keep-alive", "x"], "--timeout-keep-alive"),
        (["--device-id", "-1"], "--device-id"),
        (["--loglevel", "loud"], "--loglevel"),
        (["--data-dir", ""], "--data-dir"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--port"], "--port"),
    ],
)
def test_bad_flags_raise_settings_error_naming_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        parse_settings(argv)
    assert flag in str(excinfo.value)


def test_no_abbreviations() -> None:
    with pytest.raises(SettingsError):
        parse_settings(["--lis"])


def test_tls_needs_both_files() -> None:
    with pytest.raises(SettingsError, match="--tls-certfile"):
        parse_settings(["--tls-keyfile", "k.pem"])
    s = parse_settings(["--tls-keyfile", "k.pem", "--tls-certfile", "c.pem"])
    assert s.tls_keyfile == Path("k.pem") and s.tls_certfile == Path("c.pem")


def test_commandline_args_env_is_appended() -> None:
    s = parse_settings(["--api"], {"COMMANDLINE_ARGS": "--listen --port 7870 --ckpt-dir 'my models/sd'"})
    assert s.api and s.listen and s.port == 7870
    assert s.ckpt_dir == Path("my models/sd")
    # appended after argv: the env value wins for a repeated single-value flag
    s2 = parse_settings(["--port", "1234"], {"COMMANDLINE_ARGS": "--port 4321"})
    assert s2.port == 4321


def test_commandline_args_errors_are_settings_errors() -> None:
    with pytest.raises(SettingsError, match="COMMANDLINE_ARGS"):
        parse_settings([], {"COMMANDLINE_ARGS": "--ckpt 'unterminated"})
    with pytest.raises(SettingsError, match="--bogus"):
        parse_settings([], {"COMMANDLINE_ARGS": "--bogus"})


def test_ignore_cmd_args_errors_turns_unknown_flags_into_warnings() -> None:
    s = parse_settings(["--api", "--bogus", "--other"], {"IGNORE_CMD_ARGS_ERRORS": "1"})
    assert s.api
    assert any("--bogus" in w and "--other" in w for w in s.warnings)
    # bad values are still errors
    with pytest.raises(SettingsError, match="--port"):
        parse_settings(["--port", "abc"], {"IGNORE_CMD_ARGS_ERRORS": "1"})


def test_legacy_flags_are_accepted_and_reported() -> None:
    s = parse_settings(
        [
            "--max-batch-count",
            "16",
            "--always-batch-cond-uncond",
            "--unload-gfpgan",
            "--deepdanbooru",
            "--show-negative-prompt",
            "--gradio-img2img-tool",
            "color-sketch",
            "--gradio-inpaint-tool",
            "sketch",
            "--gradio-queue",
            "--add-stop-route",
            "--ngrok-region",
            "us",
            "--enable-console-prompts",
        ]
    )
    assert s == Settings(warnings=s.warnings)
    assert len(s.warnings) == 11
    assert not any(k.startswith("legacy") for k in s.redacted_dict())


def test_non_local_and_extension_access() -> None:
    for argv in (["--listen"], ["--share"], ["--server-name", "box.lan"], ["--ngrok", "tok"]):
        s = parse_settings(argv)
        assert s.webui_is_non_local, argv
        assert s.disable_extension_access, argv
    s = parse_settings(["--listen", "--enable-insecure-extension-access"])
    assert s.webui_is_non_local and not s.disable_extension_access


def test_bind_host_and_port() -> None:
    assert parse_settings(["--listen"]).bind_host == "0.0.0.0"
    assert parse_settings(["--server-name", "10.0.0.5"]).bind_host == "10.0.0.5"
    assert parse_settings(["--listen", "--server-name", "10.0.0.5"]).bind_host == "10.0.0.5"
    api_only = parse_settings(["--nowebui"])
    assert api_only.effective_port == 7861 and api_only.api_enabled
    assert parse_settings(["--nowebui", "--port", "8000"]).effective_port == 8000


def test_test_server_implies_ci_flags() -> None:
    s = parse_settings(["--test-server"])
    assert s.api and s.skip_torch_cuda_test and s.disable_nan_check


def test_credentials(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("carol:pw3\n\n dave:p:w:4 , erin:pw5\n", encoding="utf-8")
    s = parse_settings(
        ["--gradio-auth", "alice:pw1,bob:pw2", "--gradio-auth-path", str(auth_file), "--api-auth", "api:secret"]
    )
    assert s.gradio_credentials() == [
        ("alice", "pw1"),
        ("bob", "pw2"),
        ("carol", "pw3"),
        ("dave", "p:w:4"),
        ("erin", "pw5"),
    ]
    assert s.api_credentials() == [("api", "secret")]
    assert parse_settings([]).api_credentials() == []
    assert parse_settings([]).gradio_credentials() == []


def test_credentials_file_problems_raise_settings_error(tmp_path: Path) -> None:
    missing = parse_settings(["--gradio-auth-path", str(tmp_path / "nope.txt")])
    with pytest.raises(SettingsError, match="--gradio-auth-path"):
        missing.gradio_credentials()
    bad = tmp_path / "bad.txt"
    bad.write_text("no-colon-here\n")
    with pytest.raises(SettingsError, match="--gradio-auth-path"):
        parse_settings(["--gradio-auth-path", str(bad)]).gradio_credentials()


def test_redacted_dict_hides_secrets() -> None:
    s = parse_settings(
        [
            "--api-auth",
            "api:topsecret",
            "--gradio-auth",
            "u:hunter2",
            "--ngrok",
            "ngroktoken",
            "--ngrok-options",
            '{"authtoken": "x"}',
            "--tls-keyfile",
            "/etc/key.pem",
            "--tls-certfile",
            "/etc/cert.pem",
            "--ckpt-dir",
            "/models",
            "--use-cpu",
            "sd",
        ]
    )
    d = s.redacted_dict()
    dumped = json.dumps(d)  # JSON-ready
    for secret in ("topsecret", "hunter2", "ngroktoken", "authtoken"):
        assert secret not in dumped
    assert d["api_auth"] == d["gradio_auth"] == d["ngrok"] == d["ngrok_options"] == REDACTED
    assert d["tls_keyfile"] == "/etc/key.pem"  # a path, its contents are never read
    assert d["ckpt_dir"] == "/models"
    assert d["use_cpu"] == ["sd"]
    assert "warnings" not in d
    unset = parse_settings([]).redacted_dict()
    assert unset["api_auth"] is None


def test_cors_origins() -> None:
    s = parse_settings(["--cors-allow-origins", "http://a.example, http://b.example,"])
    assert s.cors_origins == ("http://a.example", "http://b.example")
    assert parse_settings([]).cors_origins == ()


def test_help_exits_normally(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_settings(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "--listen" in out and "--max-batch-count" not in out


@pytest.mark.parametrize(
    "flag",
    [
        "--listen",
        "--share",
        "--api",
        "--nowebui",
        "--api-log",
        "--api-server-stop",
        "--enable-insecure-extension-access",
        "--medvram",
        "--medvram-sdxl",
        "--lowvram",
        "--lowram",
        "--no-half",
        "--no-half-vae",
        "--upcast-sampling",
        "--xformers",
        "--force-enable-xformers",
        "--opt-sdp-attention",
        "--opt-sdp-no-mem-attention",
        "--opt-split-attention",
        "--opt-sub-quad-attention",
        "--disable-opt-split-attention",
        "--opt-channelslast",
        "--skip-torch-cuda-test",
        "--skip-prepare-environment",
        "--skip-install",
        "--reinstall-torch",
        "--skip-version-check",
        "--skip-python-version-check",
        "--no-hashing",
        "--disable-safe-unpickle",
        "--allow-code",
        "--freeze-settings",
        "--hide-ui-dir-config",
        "--disable-all-extensions",
        "--disable-extra-extensions",
        "--no-gradio-queue",
        "--autolaunch",
        "--skip-load-model-at-start",
        "--no-prompt-history",
        "--unix-filenames-sanitization",
        "--disable-tls-verify",
        "--disable-nan-check",
        "--test-server",
    ],
)
def test_boolean_flags_exist(flag: str) -> None:
    s = parse_settings([flag])
    assert getattr(s, flag.lstrip("-").replace("-", "_")) is True


@pytest.mark.parametrize(
    "flag",
    [
        "--server-name",
        "--subpath",
        "--cors-allow-origins",
        "--cors-allow-origins-regex",
        "--data-dir",
        "--models-dir",
        "--ckpt",
        "--ckpt-dir",
        "--config",
        "--vae-dir",
        "--vae-path",
        "--lora-dir",
        "--lyco-dir-backcompat",
        "--embeddings-dir",
        "--hypernetwork-dir",
        "--esrgan-models-path",
        "--realesrgan-models-path",
        "--dat-models-path",
        "--bsrgan-models-path",
        "--gfpgan-models-path",
        "--codeformer-models-path",
        "--swinir-models-path",
        "--scunet-models-path",
        "--ldsr-models-path",
        "--clip-models-path",
        "--ui-settings-file",
        "--ui-config-file",
        "--gradio-auth-path",
    ],
)
def test_value_flags_exist(flag: str) -> None:
    s = parse_settings([flag, "some/value"])
    value = getattr(s, flag.lstrip("-").replace("-", "_"))
    assert str(value) == "some/value"


def test_core_imports_only_the_standard_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import modules.core.atomic, modules.core.settings, modules.core.paths, modules.core.options\n"
        "import modules.core.hashes, modules.core.safetensors_header, modules.core.errors\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'gradio', 'fastapi', 'numpy', 'pydantic')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
