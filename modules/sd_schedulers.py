"""A1111's `modules.sd_schedulers` for extension code (a facade: internal packages never import it):
the schedule table of `modules.engine.samplers` as A1111's `Scheduler` entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules.engine import samplers as engine_samplers


@dataclass
class Scheduler:
    name: str
    label: str
    function: Any = None
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list[str] | None = None


schedulers: list[Scheduler] = [
    Scheduler(s.name, s.label, s.sigmas, s.default_rho, s.need_inner_model, list(s.aliases) or None)
    for s in engine_samplers.list_schedulers()
]
schedulers_map: dict[str, Scheduler] = {**{s.name: s for s in schedulers}, **{s.label: s for s in schedulers}}
