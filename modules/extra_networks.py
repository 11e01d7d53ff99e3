"""A1111's `modules.extra_networks` for extension code (a facade: internal packages never import it).

`ExtraNetwork`, `ExtraNetworkParams`, `parse_prompt(s)` as A1111 has them. The engine applies its
own networks (LoRA, LyCORIS, hypernetworks) itself; a network an extension registers with
`register_extra_network` is kept in `extra_network_registry` (and `activate` / `deactivate` here call
it for code that calls them), but generation does not call it: registering one logs that.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Any

from modules.core.extra_networks import EXTRA_NETWORK_TAG

log = logging.getLogger(__name__)

extra_network_registry: dict[str, Any] = {}
extra_network_aliases: dict[str, Any] = {}


class ExtraNetworkParams:
    def __init__(self, items: list[Any] | None = None) -> None:
        self.items = items or []
        self.positional: list[Any] = []
        self.named: dict[str, str] = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __hash__(self) -> int:
        return hash(tuple(map(str, self.items)))


class ExtraNetwork:
    """Subclass with `activate(p, params_list)` / `deactivate(p)` for `<name:args>` tags."""

    def __init__(self, name: str) -> None:
        self.name = name

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        raise NotImplementedError

    def deactivate(self, p: Any) -> None:
        raise NotImplementedError


def initialize() -> None:
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network
    log.warning(
        "extra network %r registered by an extension: not supported here (the engine applies only its "
        "own LoRA / hypernetwork networks, so <%s:...> tags do nothing)",
        extra_network.name,
        extra_network.name,
    )


def register_extra_network_alias(extra_network: ExtraNetwork, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


def register_default_extra_networks() -> None:
    """A1111 registers its hypernetwork handler here; the engine has its own."""


def lookup_extra_networks(extra_network_data: dict[str, list[ExtraNetworkParams]]) -> dict[Any, list[Any]]:
    res: dict[Any, list[Any]] = {}
    for name, args in list(extra_network_data.items()):
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is None:
            log.info("Skipping unknown extra network: %s", name)
            continue
        res.setdefault(network, []).extend(args)
    return res


def activate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    """Call `activate` of the registered networks (the named ones with their args, the rest with
    none); errors are logged."""
    activated = []
    for network, args in lookup_extra_networks(extra_network_data).items():
        try:
            network.activate(p, args)
            activated.append(network)
        except Exception:
            log.exception("activating extra network %s with arguments %s", network.name, args)
    for name, network in extra_network_registry.items():
        if network in activated:
            continue
        try:
            network.activate(p, [])
        except Exception:
            log.exception("activating extra network %s", name)


def deactivate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    data = lookup_extra_networks(extra_network_data)
    for network in [*data, *(n for n in extra_network_registry.values() if n not in data)]:
        try:
            network.deactivate(p)
        except Exception:
            log.exception("deactivating extra network %s", network.name)


def parse_prompt(prompt: str) -> tuple[str, defaultdict[str, list[ExtraNetworkParams]]]:
    """The prompt without its `<name:args>` tags, and the tags' params by network name."""
    res: defaultdict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def found(m: Any) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return EXTRA_NETWORK_TAG.sub(found, prompt), res


def parse_prompts(prompts: list[str]) -> tuple[list[str], Any]:
    """Every prompt without tags, and the first prompt's tags (what a batch activates)."""
    res: list[str] = []
    extra_data = None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data


def get_user_metadata(filename: str | None, lister: Any = None) -> dict[str, Any]:
    """The `<name>.json` next to a network file (the card's user metadata), or {}."""
    if filename is None:
        return {}
    metadata_filename = os.path.splitext(filename)[0] + ".json"
    try:
        exists = lister.exists(metadata_filename) if lister else os.path.exists(metadata_filename)
        if exists:
            with open(metadata_filename, encoding="utf8") as file:
                data = json.load(file)
                return data if isinstance(data, dict) else {}
    except Exception:
        log.exception("reading extra network user metadata from %s", metadata_filename)
    return {}
