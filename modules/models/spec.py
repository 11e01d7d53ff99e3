"""What a job asks the model manager for: checkpoint, VAE, clip skip and weight patches."""

from __future__ import annotations

from dataclasses import dataclass

from modules.core.errors import ValidationError
from modules.models.patches import WeightPatch, patch_set_key
from modules.models.registry import CheckpointInfo


@dataclass(frozen=True)
class ModelSpec:
    """Everything that must be in force on the model during one lease.

    - `checkpoint`: any registry alias (name, title, hash, ...) or a `CheckpointInfo`; None keeps
      the active checkpoint (or loads the default one).
    - `vae`: "Automatic" | "None" | a VAE name; None means the manager's default choice (the
      `sd_vae` option). A per-request VAE never changes that default.
    - `clip_skip`: recorded for the engine's text encoder, which reads it from the lease.
    - `patches`: the weight patches in force, in order (an empty tuple = pristine weights).
    """

    checkpoint: str | CheckpointInfo | None = None
    vae: str | None = None
    clip_skip: int = 1
    patches: tuple[WeightPatch, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.patches, tuple):
            object.__setattr__(self, "patches", tuple(self.patches))
        if isinstance(self.clip_skip, bool) or not isinstance(self.clip_skip, int) or self.clip_skip < 1:
            raise ValidationError(f"clip skip must be a whole number of at least 1, not {self.clip_skip!r}")
        for patch in self.patches:
            if not isinstance(patch, WeightPatch):
                raise ValidationError(f"not a weight patch: {patch!r}")

    @property
    def patch_key(self) -> str:
        """Hash of the ordered patch identities ("" when there are none)."""
        return patch_set_key(self.patches)

    @property
    def patch_identities(self) -> tuple[str, ...]:
        return tuple(p.identity for p in self.patches)

    @classmethod
    def of(cls, spec: ModelSpec | str | CheckpointInfo | None) -> ModelSpec:
        """A spec from what `lease` accepts: a spec, a checkpoint alias or info, or None."""
        if isinstance(spec, ModelSpec):
            return spec
        return cls(checkpoint=spec or None)
