"""A1111's `modules.sd_samplers` for extension code (a facade: internal packages never import it):
the sampler table of `modules.engine.samplers` as A1111's `SamplerData` entries."""

from __future__ import annotations

from typing import Any, NamedTuple

from modules.core.errors import NotFoundError
from modules.engine import samplers as engine_samplers


class SamplerData(NamedTuple):
    """A1111's sampler entry; `constructor` is None: samplers are run by the engine."""

    name: str
    constructor: Any
    aliases: list[str]
    options: dict[str, Any]


all_samplers: list[SamplerData] = [
    SamplerData(s.name, None, list(s.aliases), dict(s.options)) for s in engine_samplers.list_samplers()
]
all_samplers_map: dict[str, SamplerData] = {s.name: s for s in all_samplers}
samplers: list[SamplerData] = list(all_samplers)
samplers_for_img2img: list[SamplerData] = list(all_samplers)
samplers_map: dict[str, str] = {}
for _sampler in all_samplers:
    samplers_map[_sampler.name.lower()] = _sampler.name
    for _alias in _sampler.aliases:
        samplers_map[_alias.lower()] = _sampler.name


def set_samplers() -> None:
    """A1111 rebuilds its lists here; they are fixed in this engine."""


def find_sampler_config(name: str | None) -> SamplerData | None:
    return all_samplers_map.get(name) if name is not None else all_samplers[0]


def visible_sampler_names() -> list[str]:
    """Every sampler: the UI shows them all here (the option to hide some is not acted on)."""
    return [s.name for s in samplers]


def visible_samplers() -> list[SamplerData]:
    return list(samplers)


def get_sampler_and_scheduler(sampler_name: str | None, scheduler_name: str | None, *, status: bool = False) -> Any:
    """(sampler name, schedule label) for a sampler / schedule pair, legacy "X Karras" names split;
    with `status`, also whether the name was understood."""
    try:
        sampler, schedule = engine_samplers.sampler_and_schedule_labels(sampler_name, scheduler_name)
        ok = True
    except NotFoundError:
        sampler, schedule, ok = all_samplers[0].name, "Automatic", False
    return (sampler, schedule, ok) if status else (sampler, schedule)


def get_sampler_from_infotext(d: dict[str, Any]) -> str:
    return str(get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[0])


def get_scheduler_from_infotext(d: dict[str, Any]) -> str:
    return str(get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[1])


def create_sampler(name: str, model: Any) -> Any:
    raise NotImplementedError("samplers run inside the engine here; set p.sampler_name and call process_images(p)")
