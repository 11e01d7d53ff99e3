"""Pickle-based model files load only through the allow-list; malicious ones run nothing (C9, C10)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modules.core.errors import ModelFileError, UnsafeModelFileError
from modules.models.checkpoint_io import read_state_dict
from modules.models.loader import Placement, load_single_file, load_vae_file
from tests.fixtures import pickles

BUILDERS: list[Callable[[Path], tuple[Path, Path]]] = list(pickles.BUILDERS.values())


def test_there_are_malicious_fixtures() -> None:
    assert len(BUILDERS) >= 4


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_malicious_pickles_are_refused_and_run_nothing(
    build: Callable[[Path], tuple[Path, Path]], tmp_path: Path
) -> None:
    path, marker = build(tmp_path)
    assert not marker.exists()
    with pytest.raises(ModelFileError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    with pytest.raises(ModelFileError):
        load_single_file(path, Placement())
    from modules.models.families import SD1

    with pytest.raises(ModelFileError):
        load_vae_file(path, SD1, Placement())
    assert not marker.exists(), "unpickling ran the payload"


def test_refusal_names_the_forbidden_global(tmp_path: Path) -> None:
    path, _ = pickles.write_zip_system_ckpt(tmp_path)
    with pytest.raises(UnsafeModelFileError, match=r"forbidden: .*(posix|os)\.system"):
        read_state_dict(path)


def test_real_style_ckpt_with_lightning_callback_and_numpy_scalar_loads(tiny_models: dict[str, Path]) -> None:
    import zipfile

    with zipfile.ZipFile(tiny_models["sd1-ckpt"]) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"pytorch_lightning.callbacks.model_checkpoint" in pkl and b"numpy" in pkl
    tensors = read_state_dict(tiny_models["sd1-ckpt"])
    assert "model.diffusion_model.input_blocks.0.0.weight" in tensors
