from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from modules.core.errors import ForbiddenError, NotFoundError, ValidationError
from modules.core.options import SECTIONS, OptionInfo, Options, default_option_infos


def make(tmp_path: Path) -> Options:
    opts = Options(default_option_infos(), tmp_path / "config.json")
    opts.load()
    return opts


def test_builtin_set_is_consistent() -> None:
    infos = default_option_infos()
    keys = [i.key for i in infos]
    assert len(keys) == len(set(keys))
    for info in infos:
        assert info.section in SECTIONS, info.key
        assert info.coerce(info.default) == info.default, info.key  # defaults pass their own rules
        assert info.label


def test_a1111_defaults() -> None:
    d = Options(default_option_infos(), None).as_dict()
    expected = {
        "sd_model_checkpoint": "",
        "sd_vae": "Automatic",
        "sd_vae_overrides_per_model_preferences": True,
        "sd_checkpoint_cache": 0,
        "sd_checkpoints_limit": 1,
        "sd_checkpoint_hash": "",
        "CLIP_stop_at_last_layers": 1,
        "samples_save": True,
        "samples_format": "png",
        "samples_filename_pattern": "",
        "save_to_dirs": True,
        "grid_save_to_dirs": True,
        "directories_filename_pattern": "[date]",
        "outdir_samples": "",
        "outdir_txt2img_samples": "outputs/txt2img-images",
        "outdir_img2img_samples": "outputs/img2img-images",
        "outdir_extras_samples": "outputs/extras-images",
        "outdir_txt2img_grids": "outputs/txt2img-grids",
        "outdir_img2img_grids": "outputs/img2img-grids",
        "outdir_save": "log/images",
        "outdir_init_images": "outputs/init-images",
        "jpeg_quality": 80,
        "enable_pnginfo": True,
        "save_txt": False,
        "quicksettings_list": ["sd_model_checkpoint"],
        "disabled_extensions": [],
        "disable_all_extensions": "none",
        "show_progress_every_n_steps": 10,
        "live_previews_enable": True,
        "eta_noise_seed_delta": 0,
        "emphasis": "Original",
        "comma_padding_backtrack": 20,
        "infotext_styles": "Apply if any",
        "return_grid": True,
    }
    for key, value in expected.items():
        assert d[key] == value, key


def test_our_keys_are_documented() -> None:
    infos = {i.key: i for i in default_option_infos()}
    assert infos["sd_checkpoint_cache_bytes"].default == 4 * 1024**3
    assert infos["sd_checkpoint_cache_bytes"].comment
    pred = infos["sd2_default_prediction"]
    assert pred.default == "v_prediction"
    assert set(pred.choice_list() or []) == {"epsilon", "v_prediction"}
    assert "v-prediction" in pred.comment
    assert infos["sd_checkpoint_hash"].readonly
    for key in ("outdir_samples", "outdir_txt2img_samples", "temp_dir", "api_enable_requests"):
        assert infos[key].restrict_api, key


def test_set_and_get_with_validation(tmp_path: Path) -> None:
    opts = make(tmp_path)
    assert opts.set("CLIP_stop_at_last_layers", 2) is True
    assert opts.set("CLIP_stop_at_last_layers", 2) is False
    assert opts.get("CLIP_stop_at_last_layers") == 2
    assert opts.set("CLIP_stop_at_last_layers", 3.0) is True  # integral float -> int
    assert opts.get("CLIP_stop_at_last_layers") == 3 and isinstance(opts.get("CLIP_stop_at_last_layers"), int)
    opts.set("s_noise", 1)  # int -> float
    assert opts.get("s_noise") == 1.0 and isinstance(opts.get("s_noise"), float)

    bad_values = [
        ("CLIP_stop_at_last_layers", 13),  # range
        ("CLIP_stop_at_last_layers", 0),
        ("CLIP_stop_at_last_layers", 2.5),  # not integral
        ("CLIP_stop_at_last_layers", "2"),  # no str -> int guessing
        ("samples_save", "yes"),
        ("emphasis", "Loud"),  # choices
        ("quicksettings_list", "sd_model_checkpoint"),  # list expected
        ("jpeg_quality", True),  # bool is not an int here
        ("s_noise", float("nan")),
    ]
    for key, value in bad_values:
        with pytest.raises(ValidationError) as excinfo:
            opts.set(key, value)
        assert key in str(excinfo.value)
    with pytest.raises(NotFoundError):
        opts.set("no_such_option", 1)
    with pytest.raises(NotFoundError):
        opts.get("no_such_option")


def test_readonly_key(tmp_path: Path) -> None:
    opts = make(tmp_path)
    with pytest.raises(ValidationError):
        opts.set("sd_checkpoint_hash", "abc")
    assert opts.set_readonly("sd_checkpoint_hash", "abc") is True
    assert opts.get("sd_checkpoint_hash") == "abc"


def test_set_readonly_does_not_rerun_callbacks_unless_asked(tmp_path: Path) -> None:
    """The app reports the loaded checkpoint's title; its loader callback must not fire again."""
    opts = make(tmp_path)
    loads: list[object] = []
    opts.on_change("sd_model_checkpoint", lambda key, value: loads.append(value))
    opts.set("sd_model_checkpoint", "model")
    assert opts.set_readonly("sd_model_checkpoint", "model.safetensors [0123456789]") is True
    assert loads == ["model"]
    assert opts.get("sd_model_checkpoint") == "model.safetensors [0123456789]"
    opts.set_readonly("sd_model_checkpoint", "other.safetensors", notify=True)
    assert loads == ["model", "other.safetensors"]


def test_round_trip_with_unknown_keys_preserved(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"CLIP_stop_at_last_layers": 2, "some_extension_key": {"nested": [1, 2]}, "sd_vae": "x.pt"}),
        encoding="utf-8",
    )
    opts = Options(default_option_infos(), path)
    assert opts.load() == []
    assert opts.get("some_extension_key") == {"nested": [1, 2]}
    assert opts.as_dict()["some_extension_key"] == {"nested": [1, 2]}
    opts.set("samples_format", "jpg")
    opts.save()

    again = Options(default_option_infos(), path)
    again.load()
    assert again.get("CLIP_stop_at_last_layers") == 2
    assert again.get("samples_format") == "jpg"
    assert again.get("sd_vae") == "x.pt"
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored["some_extension_key"] == {"nested": [1, 2]}
    assert "jpeg_quality" not in stored  # defaults are not written unless set


def test_missing_file_is_defaults(tmp_path: Path) -> None:
    opts = make(tmp_path)
    assert opts.get("samples_format") == "png"
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe garbage", "[" * 100000])
def test_corrupt_config_is_backed_up(tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content.encode("latin-1"))
    opts = Options(default_option_infos(), path)
    warnings = opts.load()
    assert warnings and "config.json" in warnings[0]
    backups = list(tmp_path.glob("config.json.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == content.encode("latin-1")
    assert opts.get("samples_format") == "png"
    assert any(r.levelname == "WARNING" for r in caplog.records)
    opts.set("samples_format", "webp")
    opts.save()
    assert json.loads(path.read_text())["samples_format"] == "webp"


def test_bad_stored_value_falls_back_to_default(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"CLIP_stop_at_last_layers": "two", "jpeg_quality": 90}))
    opts = Options(default_option_infos(), path)
    warnings = opts.load()
    assert len(warnings) == 1 and "CLIP_stop_at_last_layers" in warnings[0]
    assert opts.get("CLIP_stop_at_last_layers") == 1
    assert opts.get("jpeg_quality") == 90


def test_update_full_round_trip_like_open_webui(tmp_path: Path) -> None:
    opts = make(tmp_path)
    opts.set_readonly("sd_checkpoint_hash", "deadbeef")
    body = opts.as_dict()
    body["sd_model_checkpoint"] = "model.safetensors [0123456789]"
    body["sd_checkpoint_hash"] = "stale-value-from-client"
    body["some_key_from_a_newer_server"] = 5
    changed = opts.update(body)
    assert changed == ["sd_model_checkpoint"]
    assert opts.get("sd_checkpoint_hash") == "deadbeef"
    result = opts.apply_update(body)
    assert result.changed == []
    assert result.ignored_unknown == ["some_key_from_a_newer_server"]
    assert result.ignored_readonly == ["sd_checkpoint_hash"]


def test_update_refuses_changing_restricted_keys(tmp_path: Path) -> None:
    opts = make(tmp_path)
    with pytest.raises(ForbiddenError, match="outdir_samples"):
        opts.update({"samples_format": "jpg", "outdir_samples": "/etc"})
    assert opts.get("samples_format") == "png"  # nothing applied
    assert opts.get("outdir_samples") == ""
    assert opts.update({"outdir_samples": "/data/out"}, allow_restricted=True) == ["outdir_samples"]


def test_update_is_all_or_nothing_on_validation_error(tmp_path: Path) -> None:
    opts = make(tmp_path)
    with pytest.raises(ValidationError, match="jpeg_quality"):
        opts.update({"samples_format": "jpg", "jpeg_quality": 1000})
    assert opts.get("samples_format") == "png"
    with pytest.raises(NotFoundError):
        opts.update({"nope": 1}, ignore_unknown=False)


def test_on_change_callbacks_and_revert_on_failure(tmp_path: Path) -> None:
    opts = make(tmp_path)
    seen: list[tuple[str, object]] = []
    unsubscribe = opts.on_change("sd_vae", lambda key, value: seen.append((key, value)))
    opts.set("sd_vae", "a.pt")
    opts.set("sd_vae", "a.pt")  # unchanged: no callback
    opts.update({"sd_vae": "b.pt"})
    assert seen == [("sd_vae", "a.pt"), ("sd_vae", "b.pt")]
    unsubscribe()
    opts.set("sd_vae", "c.pt")
    assert len(seen) == 2

    def refuse(key: str, value: object) -> None:
        raise RuntimeError("cannot load that VAE")

    opts.on_change("sd_vae", refuse)
    with pytest.raises(RuntimeError):
        opts.set("sd_vae", "broken.pt")
    assert opts.get("sd_vae") == "c.pt"


def test_callable_choices_and_validator(tmp_path: Path) -> None:
    available = ["a.safetensors [1111111111]", "b.safetensors [2222222222]"]

    def resolve(value: object) -> object:
        for title in available:
            if isinstance(value, str) and title.startswith(value):
                return title
        return value

    opts = make(tmp_path)
    base = opts.info("sd_model_checkpoint")
    opts.add_option(
        OptionInfo(
            key=base.key,
            default=base.default,
            label=base.label,
            section=base.section,
            type=str,
            choices=lambda: available,
            validator=resolve,
        )
    )
    assert opts.set("sd_model_checkpoint", "b.safetensors")
    assert opts.get("sd_model_checkpoint") == "b.safetensors [2222222222]"
    with pytest.raises(ValidationError):
        opts.set("sd_model_checkpoint", "missing.ckpt")


def test_list_choices_check_items(tmp_path: Path) -> None:
    opts = make(tmp_path)
    opts.set("lora_hide_unknown_for_versions", ["SD1", "SDXL"])
    with pytest.raises(ValidationError):
        opts.set("lora_hide_unknown_for_versions", ["SD9"])


def test_returned_values_are_copies(tmp_path: Path) -> None:
    opts = make(tmp_path)
    value = opts.get("quicksettings_list")
    assert isinstance(value, list)
    value.append("oops")
    assert opts.get("quicksettings_list") == ["sd_model_checkpoint"]
    d = opts.as_dict()
    d["quicksettings_list"].append("oops")  # type: ignore[attr-defined]
    assert opts.get("quicksettings_list") == ["sd_model_checkpoint"]


def test_concurrent_sets_and_saves(tmp_path: Path) -> None:
    opts = make(tmp_path)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                opts.set("jpeg_quality", 1 + (n * 50 + i) % 100)
                opts.save()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = json.loads((tmp_path / "config.json").read_text())
    assert 1 <= stored["jpeg_quality"] <= 100


def test_option_info_rejects_bad_definitions() -> None:
    with pytest.raises(TypeError):
        OptionInfo(key="k", default={}, label="k", section="ui", type=dict)
    with pytest.raises(ValidationError):
        OptionInfo(key="k", default="x", label="k", section="ui", type=int)


def test_overlaid_values_are_seen_on_that_thread_only_and_stack(tmp_path: Path) -> None:
    options = Options(default_option_infos(), tmp_path / "config.json")
    seen: list[object] = []
    with options.overlaid({"jpeg_quality": 50}):
        assert options.get("jpeg_quality") == 50
        other = threading.Thread(target=lambda: seen.append(options.get("jpeg_quality")))
        other.start()
        other.join()
        with options.overlaid({"samples_format": "jpg"}):
            assert (options.get("jpeg_quality"), options.get("samples_format")) == (50, "jpg")
        assert options.get("samples_format") == "png"
        assert options.set("jpeg_quality", 50) is True  # compared with the stored value, not the overlay
        assert options.as_dict()["jpeg_quality"] == 50
    assert seen == [80]  # another thread sees the stored value
    assert options.get("jpeg_quality") == 50


def test_check_overrides_coerces_and_refuses_like_post_options(tmp_path: Path) -> None:
    options = Options(default_option_infos(), tmp_path / "config.json")
    assert options.check_overrides({"jpeg_quality": "60", "CLIP_stop_at_last_layers": 2}) == {
        "jpeg_quality": 60,
        "CLIP_stop_at_last_layers": 2,
    }
    with pytest.raises(ValidationError, match="unknown setting 'nope'"):
        options.check_overrides({"nope": 1})
    with pytest.raises(ValidationError, match="read-only"):
        options.check_overrides({"sd_checkpoint_hash": "abc"})
    with pytest.raises(ForbiddenError, match="cannot be changed by a request"):
        options.check_overrides({"max_prompt_length": 10**9})
    options.lock(["save_images_add_number"], "--hide-ui-dir-config")
    with pytest.raises(ForbiddenError, match=r"frozen \(--hide-ui-dir-config\)"):
        options.check_overrides({"save_images_add_number": False})
    assert options.check_overrides({"save_images_add_number": True, "max_prompt_length": 20_000})  # unchanged: fine
