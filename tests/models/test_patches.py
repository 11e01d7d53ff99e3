"""Weight patches through `lease(spec)`: exact deltas, bit-exact restore, no work for an unchanged
set, unpatched before parking, per-lease VAE."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.core.errors import ValidationError
from modules.core.hashes import HashCache
from modules.models.loader import Placement, StableDiffusionModel, load_single_file
from modules.models.manager import ModelManager
from modules.models.patches import AddDelta, WeightPatcher, namespace
from modules.models.registry import ModelRegistry
from modules.models.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("no_network")
BIG = 1 << 40

UNET = "unet.conv_in.weight"
VAE_W = "vae.decoder.conv_out.weight"


def _manager(tree: dict[str, Path]) -> ModelManager:
    registry = ModelRegistry([tree["sd"]], [tree["vae_dir"]], HashCache(tree["cache"]))
    return ModelManager(registry, Placement(), cache_bytes=BIG, background_hashing=False)


def _weights(model: StableDiffusionModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of unet, text encoder(s) and the VAE in use, by namespaced name."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in namespace(model).items():
        for name, tensor in module.state_dict().items():
            out[f"{prefix}.{name}"] = tensor
    return out


def _te_name(model: StableDiffusionModel) -> str:
    name = next(n for n, _ in model.text_encoders[0].named_parameters() if n.endswith("q_proj.weight"))
    return f"text_encoder.{name}"


def _delta(model: StableDiffusionModel, name: str, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    shape = _weights(model)[name].shape
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(dtype) * 0.1


def _assert_same_as_file(model: StableDiffusionModel, path: Path) -> None:
    fresh = _weights(load_single_file(path, Placement()))
    current = _weights(model)
    assert current.keys() == fresh.keys()
    different = [k for k in fresh if not torch.equal(current[k], fresh[k])]
    assert different == [], f"not bit-identical to the file: {different[:5]}"


def test_a_patch_changes_exactly_the_named_weights_by_the_delta(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    before = {k: v.clone() for k, v in _weights(model).items()}
    te = _te_name(model)
    d1 = {UNET: _delta(model, UNET, 1), te: _delta(model, te, 2, torch.float16), VAE_W: _delta(model, VAE_W, 3)}
    d2 = {UNET: _delta(model, UNET, 4)}
    spec = ModelSpec("one", patches=(AddDelta("a", d1), AddDelta("b", d2)))
    with m.lease(spec) as leased:
        assert leased is model
        assert m.leased_spec is not None and m.leased_spec.patch_identities == ("a", "b")
        after = _weights(model)
        expected = {UNET: d1[UNET] + d2[UNET], te: d1[te].float(), VAE_W: d1[VAE_W]}
        for name, tensor in after.items():
            if name in expected:
                torch.testing.assert_close(tensor, before[name] + expected[name], rtol=0, atol=1e-6)
                assert tensor.dtype == before[name].dtype
            else:
                assert torch.equal(tensor, before[name]), name
    assert m.status().patches == ("a", "b")
    assert m.leased_spec is None


@pytest.mark.parametrize("checkpoint", ["one.safetensors", "xl.safetensors"])
def test_after_a_lease_without_the_patch_every_tensor_is_bit_identical_to_the_file(
    tree: dict[str, Path], checkpoint: str
) -> None:
    m = _manager(tree)
    m.load(checkpoint)
    model = m.active.model  # type: ignore[union-attr]
    names = [UNET, VAE_W, _te_name(model)]
    if len(model.text_encoders) > 1:
        te2 = next(n for n, _ in model.text_encoders[1].named_parameters() if n.endswith("fc1.weight"))
        names.append(f"text_encoder_2.{te2}")
    patch = AddDelta("all", {n: _delta(model, n, i) for i, n in enumerate(names)})
    with m.lease(ModelSpec(checkpoint, patches=(patch,))):
        assert not torch.equal(
            _weights(model)[UNET], load_single_file(tree[checkpoint], Placement()).unet.conv_in.weight
        )
    with m.lease(checkpoint) as leased:
        assert leased is model and m.patcher is not None and m.patcher.is_pristine
        _assert_same_as_file(model, tree[checkpoint])


def test_an_unchanged_patch_set_does_no_work_and_a_new_set_redoes_only_what_changed(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    te = _te_name(model)
    a = {UNET: _delta(model, UNET, 1), te: _delta(model, te, 2)}
    b = {VAE_W: _delta(model, VAE_W, 3)}
    with m.lease(ModelSpec(patches=(AddDelta("a", a),))):
        pass
    stats = m.patcher.stats  # type: ignore[union-attr]
    assert (stats.applied, stats.skipped, stats.patched_tensors) == (1, 0, 2)
    unet_tensor = model.unet.conv_in.weight.data_ptr()
    # an equal set (new objects, same identities) costs nothing
    with m.lease(ModelSpec(patches=(AddDelta("a", dict(a)),))):
        pass
    assert (stats.applied, stats.skipped, stats.patched_tensors, stats.restored_tensors) == (1, 1, 2, 0)
    assert model.unet.conv_in.weight.data_ptr() == unet_tensor  # not rewritten
    # a + b: a's tensors are kept as they are, only b's weight is written
    with m.lease(ModelSpec(patches=(AddDelta("a", a), AddDelta("b", b)))):
        pass
    assert (stats.applied, stats.patched_tensors, stats.kept_tensors, stats.restored_tensors) == (2, 3, 2, 0)
    assert model.unet.conv_in.weight.data_ptr() == unet_tensor  # not rewritten
    # b alone: only a's two weights are restored
    with m.lease(ModelSpec(patches=(AddDelta("b", b),))):
        pass
    assert (stats.applied, stats.patched_tensors, stats.kept_tensors, stats.restored_tensors) == (3, 3, 3, 2)
    with m.lease(ModelSpec()):
        pass
    assert stats.restored_tensors == 3 and m.patcher.is_pristine  # type: ignore[union-attr]
    _assert_same_as_file(model, tree["one.safetensors"])


def test_restore_reuses_the_original_tensor_and_never_writes_the_file(tree: dict[str, Path]) -> None:
    file_hash = hashlib.sha256(tree["one.safetensors"].read_bytes()).hexdigest()
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    original = model.unet.conv_in.weight.data
    pointer = original.data_ptr()
    with m.lease(ModelSpec(patches=(AddDelta("x", {UNET: torch.ones_like(original)}),))):
        assert model.unet.conv_in.weight.data_ptr() != pointer
    with m.lease(ModelSpec()):
        assert model.unet.conv_in.weight.data_ptr() == pointer  # the pristine tensor itself, no copy
    assert hashlib.sha256(tree["one.safetensors"].read_bytes()).hexdigest() == file_hash


def test_parked_model_is_unpatched_and_comes_back_pristine(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    with m.lease(ModelSpec("one", patches=(AddDelta("p", {UNET: _delta(model, UNET, 7)}),))):
        pass
    with m.lease("two"):
        assert m.status().cached == (str(tree["one.safetensors"]),)
        _assert_same_as_file(model, tree["one.safetensors"])  # parked: already unpatched
    with m.lease("one") as back:
        assert back is model  # from the RAM cache
        assert m.patcher is not None and m.patcher.is_pristine and m.patcher.stats.applied == 0
        _assert_same_as_file(model, tree["one.safetensors"])
    # unload parks too
    with m.lease(ModelSpec("one", patches=(AddDelta("p", {UNET: _delta(model, UNET, 7)}),))):
        pass
    m.unload()
    _assert_same_as_file(model, tree["one.safetensors"])


def test_a_bad_patch_is_refused_and_leaves_the_model_pristine(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    good = AddDelta("good", {UNET: _delta(model, UNET, 1)})
    with m.lease(ModelSpec(patches=(good,))):
        pass
    bad_name = AddDelta("bad-name", {"unet.no.such.weight": torch.zeros(3)})
    with (
        pytest.raises(ValidationError, match=r"bad-name.*unet\.no\.such\.weight"),
        m.lease(ModelSpec(patches=(good, bad_name))),
    ):
        pytest.fail("the lease must not start")
    _assert_same_as_file(model, tree["one.safetensors"])
    bad_prefix = AddDelta("bad-prefix", {"model.diffusion_model.x": torch.zeros(3)})
    with pytest.raises(ValidationError, match="bad-prefix"), m.lease(ModelSpec(patches=(bad_prefix,))):
        pass
    bad_shape = AddDelta("bad-shape", {UNET: torch.zeros(2, 2)})
    with pytest.raises(ValidationError, match=r"bad-shape.*shape"), m.lease(ModelSpec(patches=(good, bad_shape))):
        pass
    _assert_same_as_file(model, tree["one.safetensors"])
    with m.lease(ModelSpec(patches=(good,))):  # and it still works afterwards
        assert not m.patcher.is_pristine  # type: ignore[union-attr]


def test_a_per_lease_vae_is_in_force_only_in_its_lease(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    baked = model.vae.decoder.conv_out.weight.clone()
    file_weight = load_file(str(tree["vae"]))["decoder.conv_out.weight"]
    vae_key = f"vae:{tree['vae']}:sd1"
    with m.lease(ModelSpec("one", vae="vae-tiny.safetensors")) as leased:
        assert leased.vae_source == tree["vae"]
        assert torch.equal(leased.vae.decoder.conv_out.weight, file_weight)
        assert m.leased_spec is not None and m.leased_spec.vae == "vae-tiny.safetensors"
        assert m.vae_choice == "Automatic"
        assert any(h.key == vae_key and h.pinned for h in m.status().held)
    assert m.vae_choice == "Automatic"
    with m.lease(ModelSpec("one")) as leased:
        assert leased.vae_source is None and torch.equal(leased.vae.decoder.conv_out.weight, baked)
        assert m.leased_spec is not None and m.leased_spec.vae == "Automatic"
        assert any(h.key == vae_key and not h.pinned for h in m.status().held)  # kept for reuse
    # the default choice is what set_vae changes; a lease naming no VAE follows it
    m.set_vae("vae-tiny.safetensors")
    with m.lease(ModelSpec("one")) as leased:
        assert leased.vae_source == tree["vae"]
    with m.lease(ModelSpec("one", vae="None")) as leased:
        assert leased.vae_source is None
    assert m.vae_choice == "vae-tiny.safetensors"


def test_vae_patches_follow_the_vae_in_use_and_are_undone_on_both(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    baked_vae = model.vae
    patch = AddDelta("v", {VAE_W: torch.full_like(model.vae.decoder.conv_out.weight, 0.5)})
    with m.lease(ModelSpec(patches=(patch,))):
        pass
    with m.lease(ModelSpec(vae="vae-tiny.safetensors", patches=(patch,))) as leased:
        separate = leased.vae
        file_weight = load_file(str(tree["vae"]))["decoder.conv_out.weight"]
        torch.testing.assert_close(separate.decoder.conv_out.weight, file_weight + 0.5, rtol=0, atol=1e-6)
    with m.lease(ModelSpec()):
        pass
    assert torch.equal(separate.decoder.conv_out.weight, file_weight)
    assert model.vae is baked_vae
    _assert_same_as_file(model, tree["one.safetensors"])


def test_a_nested_lease_puts_the_outer_spec_back(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    delta = _delta(model, UNET, 5)
    before = model.unet.conv_in.weight.clone()
    outer = ModelSpec("one", clip_skip=2, patches=(AddDelta("outer", {UNET: delta}),))
    with m.lease(outer):
        with m.lease(ModelSpec("one")):
            assert torch.equal(model.unet.conv_in.weight, before)
            assert m.leased_spec is not None and m.leased_spec.clip_skip == 1
        torch.testing.assert_close(model.unet.conv_in.weight, before + delta, rtol=0, atol=1e-6)
        assert m.leased_spec is not None and m.leased_spec.clip_skip == 2


def test_spec_validation_and_coercion() -> None:
    assert ModelSpec.of("one") == ModelSpec(checkpoint="one")
    assert ModelSpec.of(None) == ModelSpec()
    spec = ModelSpec(patches=[AddDelta("a", {})])  # type: ignore[arg-type]
    assert isinstance(spec.patches, tuple) and spec.patch_key and ModelSpec().patch_key == ""
    assert ModelSpec(patches=(AddDelta("a", {}),)) == spec  # equal identities, equal specs
    with pytest.raises(ValidationError):
        ModelSpec(clip_skip=0)
    with pytest.raises(ValidationError):
        ModelSpec(patches=("lora",))  # type: ignore[arg-type]


def test_patcher_alone_on_a_model(tree: dict[str, Path]) -> None:
    model = load_single_file(tree["one.safetensors"], Placement())
    patcher = WeightPatcher(model)
    assert patcher.apply(()) is False and patcher.stats.skipped == 1  # nothing to do on a pristine model
    assert patcher.apply([AddDelta("a", {UNET: torch.ones_like(model.unet.conv_in.weight)})]) is True
    assert patcher.touched == (UNET,)
    assert patcher.restore() == 1 and patcher.is_pristine
    _assert_same_as_file(model, tree["one.safetensors"])


class _LowRank:
    """A `Delta` that fuses `up @ down` into the sum, and a patch whose delta reads the pristine
    weight (as DoRA does)."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor) -> None:
        self.up, self.down = up, down
        self.shape = (up.shape[0], down.shape[1])

    def add_to(self, total: torch.Tensor) -> None:
        total.addmm_(self.up, self.down)


class _FromOriginal:
    identity = "scaled-by-original"

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[torch.Tensor] = []

    def deltas(self, model: StableDiffusionModel, original):  # type: ignore[no-untyped-def]
        pristine = original(self.name)
        self.seen.append(pristine)
        yield self.name, pristine * 0.5


def test_a_delta_object_adds_itself_and_a_patch_sees_the_pristine_weight(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    te = _te_name(model)
    pristine = model.text_encoders[0].get_parameter(te.partition(".")[2]).detach().clone()
    up = torch.randn(pristine.shape[0], 2, generator=torch.Generator().manual_seed(3))
    down = torch.randn(2, pristine.shape[1], generator=torch.Generator().manual_seed(4))
    low = AddDelta("low-rank", {te: _LowRank(up, down)})  # type: ignore[dict-item]
    with m.lease(ModelSpec("one", patches=(low,))):
        assert torch.equal(_weights(model)[te], pristine + up @ down)
    scaled = _FromOriginal(te)
    with m.lease(ModelSpec("one", patches=(low, scaled))):
        # the second patch saw the pristine weight, not the one the first patch left
        assert torch.equal(scaled.seen[-1], pristine)
        expected = (pristine.clone() + up @ down) + pristine * 0.5
        assert torch.allclose(_weights(model)[te], expected, atol=1e-6)
    with m.lease("one"):
        assert torch.equal(_weights(model)[te], pristine)


def test_a_patched_float32_weight_is_refilled_in_its_own_tensor_on_a_change_of_set(tree: dict[str, Path]) -> None:
    m = _manager(tree)
    m.load("one")
    model = m.active.model  # type: ignore[union-attr]
    pristine = model.unet.conv_in.weight.detach().clone()
    first, second = _delta(model, UNET, 1), _delta(model, UNET, 2)
    with m.lease(ModelSpec("one", patches=(AddDelta("a", {UNET: first}),))):
        tensor = model.unet.conv_in.weight.data
        assert tensor.dtype == torch.float32
    with m.lease(ModelSpec("one", patches=(AddDelta("b", {UNET: second}),))):
        assert model.unet.conv_in.weight.data.data_ptr() == tensor.data_ptr()  # no fresh memory
        assert torch.equal(model.unet.conv_in.weight, pristine + second)
    assert m.patcher is not None and m.patcher.stats.refilled_tensors == 1
    with m.lease("one"):
        assert torch.equal(model.unet.conv_in.weight, pristine)
