"""Loud non-support: options marked implemented are read somewhere (and unimplemented ones are not),
flags nothing acts on are reported at start-up (and the others are read somewhere), and the
freeze flags' Options.freeze refuses changes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from modules.core.errors import ForbiddenError
from modules.core.option_defaults import NOT_ACTED_ON, default_option_infos, unimplemented_options
from modules.core.options import Options
from modules.core.settings import (
    ALREADY_SO_FLAGS,
    NOT_ACTED_ON_FLAGS,
    Settings,
    flag_fields,
    not_acted_on_warnings,
    parse_settings,
)
from tests.source_ast import parse_source

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"
# These only describe keys (the option registry, the infotext field table); they read nothing.
DESCRIBERS = {"core/option_defaults.py", "core/option_info.py", "core/options.py", "core/fields.py"}
# A key string that appears in code for another reason than reading the option.
NOT_A_READ = {
    "sigma_min": "engine/samplers.py: diffusers' final_sigmas_type value",
    "disable_all_extensions": "core/settings.py: the flag of the same name",
    "ddim_discretize": "extensions/processing_api.py: A1111's p field of that name, reported as not acted on",
}


def _sources() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in MODULES.rglob("*"):
        rel = path.relative_to(MODULES).as_posix()
        if path.suffix in (".py", ".js") and rel not in DESCRIBERS:
            out[rel] = path.read_text(encoding="utf-8")
    return out


_TEMPLATE = re.compile(r"""f["']([\w{}.]*\{[^"']*)["']""")


def _templates(texts: dict[str, str]) -> list[re.Pattern[str]]:
    """f-string keys such as f"outdir_{kind}_samples" as regular expressions (a literal word part on
    both ends, so f"{w}x{h}" or f"save_{name}" do not count as reading every key that fits)."""
    patterns = []
    for text in texts.values():
        for template in _TEMPLATE.findall(text):
            parts = re.split(r"\{[^}]*\}", template)
            if len(parts) > 1 and len(parts[0]) >= 3 and len(parts[-1]) >= 3:
                patterns.append(re.compile(r"\w+".join(re.escape(p) for p in parts)))
    return patterns


def _mentioned(key: str, texts: dict[str, str], templates: list[re.Pattern[str]]) -> bool:
    quoted = re.compile(rf"""["']{re.escape(key)}["']""")
    return any(quoted.search(t) for t in texts.values()) or any(p.fullmatch(key) for p in templates)


def test_implemented_options_are_read_outside_the_registry() -> None:
    texts = _sources()
    templates = _templates(texts)
    unread = [i.key for i in default_option_infos() if i.implemented and not _mentioned(i.key, texts, templates)]
    assert unread == [], f"marked implemented, but no module outside the registry mentions them: {unread}"


def test_unimplemented_options_are_not_read_anywhere() -> None:
    texts = _sources()
    read = [
        key for key in unimplemented_options() if key not in NOT_A_READ and _mentioned(key, texts, _templates(texts))
    ]
    assert read == [], f"something reads these: mark them implemented (remove them from NOT_ACTED_ON): {read}"


def test_every_unimplemented_option_has_a_reason_and_exists() -> None:
    infos = {i.key: i for i in default_option_infos()}
    for reason, keys in NOT_ACTED_ON.items():
        assert reason and keys
        for key in keys:
            assert key in infos, key
            assert infos[key].note == reason
    assert len(unimplemented_options()) == sum(len(k) for k in NOT_ACTED_ON.values())


# -- flags ---------------------------------------------------------------------------------------


def _settings_members_using() -> dict[str, set[str]]:
    """Settings property/method name -> the flag fields it reads (`self.<field>`)."""
    tree = parse_source(MODULES / "core" / "settings.py")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: dict[str, set[str]] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
            out[node.name] = {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
            }
    return out


def _read_outside_settings(name: str, texts: dict[str, str], members: dict[str, set[str]]) -> bool:
    flag = "--" + name.replace("_", "-")
    uses = [rf"\.{name}\b", rf"{re.escape(flag)}\b"] + [rf"\.{m}\b" for m, fields in members.items() if name in fields]
    return any(re.search(u, t) for u in uses for t in texts.values())


def test_flags_nothing_acts_on_are_declared_and_the_rest_are_read() -> None:
    names = {f.name for f in flag_fields()}
    assert set(NOT_ACTED_ON_FLAGS) <= names and set(ALREADY_SO_FLAGS) <= names
    assert not set(NOT_ACTED_ON_FLAGS) & set(ALREADY_SO_FLAGS)
    texts = {k: v for k, v in _sources().items() if k != "core/settings.py"}
    texts["webui.sh"] = (ROOT / "webui.sh").read_text(encoding="utf-8")
    members = _settings_members_using()
    consumed_while_parsing = {"test_server"}  # implies --api and the two below
    unread = [
        name
        for name in sorted(names - set(NOT_ACTED_ON_FLAGS) - set(ALREADY_SO_FLAGS) - consumed_while_parsing)
        if not _read_outside_settings(name, texts, members)
    ]
    assert unread == [], f"flags nothing reads: declare them in NOT_ACTED_ON_FLAGS: {unread}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--opt-split-attention"], "--opt-split-attention: accepted, not acted on (attention uses torch SDPA)"),
        (["--gradio-allowed-path", "/tmp"], "--gradio-allowed-path: accepted, not acted on ("),
    ],
)
def test_a_flag_nothing_acts_on_is_reported_at_start_up(argv: list[str], expected: str) -> None:
    warnings = parse_settings(argv, {}).warnings
    assert len(warnings) == 1 and warnings[0].startswith(expected), warnings


def test_each_declared_flag_warns_and_plain_or_already_so_flags_do_not() -> None:
    assert parse_settings([], {}).warnings == ()
    assert parse_settings(["--opt-sdp-attention", "--skip-torch-cuda-test", "--api", "--no-half"], {}).warnings == ()
    for acted_on in ("--medvram", "--medvram-sdxl", "--lowvram", "--upcast-sampling", "--no-half-vae"):
        assert parse_settings([acted_on], {}).warnings == (), acted_on
    defaults = {f.name: f.default for f in flag_fields()}
    for name in NOT_ACTED_ON_FLAGS:
        default = defaults[name]
        value: object = True if default is False else ("/x",) if default == () else "x"
        settings = Settings(**{**defaults, name: value})
        assert not_acted_on_warnings(vars(settings)) == [
            f"--{name.replace('_', '-')}: accepted, not acted on ({NOT_ACTED_ON_FLAGS[name]})"
        ]


# -- freezing ------------------------------------------------------------------------------------


def _options(tmp_path: Path) -> Options:
    return Options(default_option_infos(), tmp_path / "config.json")


def test_freeze_everything_refuses_changes_but_not_same_values_or_app_state(tmp_path: Path) -> None:
    options = _options(tmp_path)
    options.set("jpeg_quality", 90)
    options.freeze(everything=True)
    with pytest.raises(
        ForbiddenError, match=r"jpeg_quality cannot be changed: settings are frozen \(--freeze-settings\)"
    ):
        options.set("jpeg_quality", 70)
    with pytest.raises(ForbiddenError):
        options.apply_update({"jpeg_quality": 70, "samples_format": "jpg"}, allow_restricted=True)
    assert options.get("samples_format") == "png"  # nothing applied
    assert options.set("jpeg_quality", 90) is False  # the same value is no change
    assert options.apply_update(options.as_dict()).changed == []  # a full round trip (clients do it)
    assert options.set_readonly("sd_checkpoint_hash", "abc") is True  # what the app records still changes
    assert options.frozen_reason("jpeg_quality") == "--freeze-settings"
    assert options.get("jpeg_quality") == 90


def test_freeze_sections_and_specific_keys(tmp_path: Path) -> None:
    options = _options(tmp_path)
    options.freeze(sections=["saving-images"], keys=[" CLIP_stop_at_last_layers ", ""])
    with pytest.raises(ForbiddenError, match=r"--freeze-settings-in-sections \(saving-images\)"):
        options.set("jpeg_quality", 70)
    with pytest.raises(ForbiddenError, match="--freeze-specific-settings"):
        options.apply_update({"CLIP_stop_at_last_layers": 2})
    assert options.apply_update({"emphasis": "No norm"}).changed == ["emphasis"]
    assert options.frozen_reason("emphasis") is None
