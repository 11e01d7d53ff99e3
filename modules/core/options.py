"""Runtime options (A1111's `config.json`): typed, described, validated, persisted atomically.

`OptionInfo` (in `option_info`) describes one option; `default_option_infos()` (in
`option_defaults`) lists the built-in ones; `Options` holds the values of one `config.json`.
Values stored in the file for unknown keys (extensions not loaded, newer versions) are kept
and written back unchanged.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modules.core.atomic import atomic_write_json
from modules.core.errors import ForbiddenError, NotFoundError, ValidationError
from modules.core.option_defaults import SECTIONS, default_option_infos
from modules.core.option_info import OnChange, OptionInfo

__all__ = ["SECTIONS", "OnChange", "OptionInfo", "Options", "UpdateResult", "default_option_infos"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateResult:
    """What `Options.apply_update` did with each key it was given."""

    changed: list[str]
    unchanged: list[str]
    ignored_unknown: list[str]
    ignored_readonly: list[str]


class Options:
    """The values of one config.json. Thread-safe; callbacks run outside the lock."""

    def __init__(self, infos: Iterable[OptionInfo], path: Path | None) -> None:
        self.path = path
        self._infos: dict[str, OptionInfo] = {}
        for info in infos:
            self._infos[info.key] = info
        self._data: dict[str, object] = {}
        self._callbacks: dict[str, list[OnChange]] = {}
        self._lock = threading.RLock()
        self._frozen_all = False
        self._frozen_sections: frozenset[str] = frozenset()
        self._frozen_keys: frozenset[str] = frozenset()
        self._locked: dict[str, str] = {}  # key -> the flag that locks it (--hide-ui-dir-config)
        self._overlay = threading.local()  # a job's override_settings, on the thread running it

    # --- registry ---

    def add_option(self, info: OptionInfo) -> None:
        """Register an option, or replace its description (e.g. to attach checkpoint choices)."""
        with self._lock:
            self._infos[info.key] = info

    def info(self, key: str) -> OptionInfo:
        """The description of `key`; NotFoundError if unknown."""
        with self._lock:
            try:
                return self._infos[key]
            except KeyError:
                raise NotFoundError(f"unknown setting: {key}") from None

    def infos(self) -> dict[str, OptionInfo]:
        """All option descriptions, in registration order."""
        with self._lock:
            return dict(self._infos)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._infos

    # --- freezing (--freeze-settings, --freeze-settings-in-sections, --freeze-specific-settings) ---

    def freeze(self, *, everything: bool = False, sections: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        """Refuse changes from now on (A1111's freeze flags): to every option (`everything`), to the
        options of `sections` (section ids, e.g. "saving-images"), to the options in `keys`.
        Values the app records with `set_readonly` (e.g. the loaded checkpoint) still change."""
        with self._lock:
            self._frozen_all = self._frozen_all or everything
            self._frozen_sections = self._frozen_sections | {s.strip() for s in sections if s.strip()}
            self._frozen_keys = self._frozen_keys | {k.strip() for k in keys if k.strip()}

    def frozen_reason(self, key: str) -> str | None:
        """Why `key` cannot be changed now (the flag that froze it), or None."""
        with self._lock:
            info = self._infos.get(key)
            if self._frozen_all:
                return "--freeze-settings"
            if info is not None and info.section in self._frozen_sections:
                return f"--freeze-settings-in-sections ({info.section})"
            if key in self._frozen_keys:
                return "--freeze-specific-settings"
            return self._locked.get(key)

    def lock(self, keys: Iterable[str], reason: str) -> None:
        """Refuse changes to `keys` from now on, as a freeze does, naming `reason` (the flag, e.g.
        `--hide-ui-dir-config` for the folder settings)."""
        with self._lock:
            self._locked.update({key: reason for key in keys})

    def _check_not_frozen(self, key: str) -> None:
        reason = self.frozen_reason(key)
        if reason is not None:
            raise ForbiddenError(f"setting {key} cannot be changed: settings are frozen ({reason})")

    # --- reading ---

    def get(self, key: str) -> object:
        """The value (stored, else default). Unknown keys present in the file are returned too.
        On a thread inside `overlaid` (a job running with `override_settings`), the job's value."""
        overlay: dict[str, object] | None = getattr(self._overlay, "values", None)
        if overlay and key in overlay:
            return copy.deepcopy(overlay[key])
        return self._stored(key)

    def _stored(self, key: str) -> object:
        with self._lock:
            if key in self._data:
                return copy.deepcopy(self._data[key])
            info = self._infos.get(key)
            if info is None:
                raise NotFoundError(f"unknown setting: {key}")
            return info.default_value()

    def as_dict(self) -> dict[str, object]:
        """Every known option (defaults filled in) plus unknown keys from the file."""
        with self._lock:
            out: dict[str, object] = {key: info.default_value() for key, info in self._infos.items()}
            out.update(copy.deepcopy(self._data))
            return out

    # --- writing ---

    def set(self, key: str, value: object) -> bool:
        """Validate and set one option; True if the value changed.

        NotFoundError for unknown keys, ValidationError for bad values or read-only keys,
        ForbiddenError for a frozen key given a new value. If an on_change callback raises, the
        old value is restored and the error propagates.
        """
        info = self.info(key)
        if info.readonly:
            raise ValidationError(f"setting {key} is read-only")
        value = info.coerce(value)
        if not _same(value, self._stored(key)):
            self._check_not_frozen(key)
        return self._apply(key, value)

    def set_readonly(self, key: str, value: object, *, notify: bool = False) -> bool:
        """Record a value the app owns or reports (e.g. `sd_checkpoint_hash`, the title of the
        checkpoint that was just loaded); bypasses the read-only flag and dynamic choices.

        on_change callbacks run only with `notify=True`: the app reports state it already
        acted on, so re-running e.g. the checkpoint loader would loop.
        """
        info = self.info(key)
        return self._apply(key, info.coerce(value, check_dynamic_choices=False), notify=notify)

    def update(
        self, values: Mapping[str, object], *, ignore_unknown: bool = True, allow_restricted: bool = False
    ) -> list[str]:
        """Apply a dict of values (e.g. POST /options); returns the changed keys.

        See `apply_update`.
        """
        return self.apply_update(values, ignore_unknown=ignore_unknown, allow_restricted=allow_restricted).changed

    def apply_update(
        self, values: Mapping[str, object], *, ignore_unknown: bool = True, allow_restricted: bool = False
    ) -> UpdateResult:
        """Apply a dict of values; built for full round-trips of `as_dict()`.

        Read-only keys are ignored; unknown keys are ignored (or NotFoundError when
        `ignore_unknown` is false). A `restrict_api` key may only be sent with its current
        value unless `allow_restricted` (else ForbiddenError); so may a frozen key (see `freeze`),
        whatever `allow_restricted` says. Every value is validated before anything is applied;
        then keys are applied one by one with their callbacks.
        """
        unknown: list[str] = []
        readonly: list[str] = []
        unchanged: list[str] = []
        pending: list[tuple[str, object]] = []
        for key, raw in values.items():
            with self._lock:
                info = self._infos.get(key)
            if info is None:
                if not ignore_unknown:
                    raise NotFoundError(f"unknown setting: {key}")
                unknown.append(key)
                continue
            if info.readonly:
                readonly.append(key)
                continue
            current = self._stored(key)
            if info.restrict_api and not allow_restricted:
                if _same(raw, current):
                    unchanged.append(key)
                    continue
                raise ForbiddenError(f"setting {key} cannot be changed through the API")
            value = info.coerce(raw)
            if _same(value, current):
                unchanged.append(key)
            else:
                self._check_not_frozen(key)
                pending.append((key, value))
        changed = [key for key, value in pending if self._apply(key, value)]
        unchanged.extend(key for key, _ in pending if key not in changed)
        if unknown:
            logger.debug("ignored unknown settings: %s", ", ".join(unknown))
        return UpdateResult(changed=changed, unchanged=unchanged, ignored_unknown=unknown, ignored_readonly=readonly)

    # --- per-job overrides (a request's `override_settings`) ---

    def check_overrides(self, values: Mapping[str, object]) -> dict[str, object]:
        """Validate a request's `override_settings` before its job is queued; returns the coerced
        values. An unknown key, a bad value or a new value for a read-only key is a
        ValidationError; a new value for a `restrict_api` key (folders, file-name patterns, the
        request limits) or for a frozen or locked key (`--freeze-settings...`,
        `--hide-ui-dir-config`) is a ForbiddenError: a request may not do what POST /options may
        not. Choices filled in at run time (checkpoints, VAEs) are not checked here: the job
        resolves those names itself."""
        out: dict[str, object] = {}
        for key, raw in values.items():
            with self._lock:
                info = self._infos.get(key)
            if info is None:
                raise ValidationError(f"override_settings: unknown setting {key!r}")
            try:
                value = info.coerce(_from_text(raw, info.type), check_dynamic_choices=False)
            except ValidationError as exc:
                raise ValidationError(f"override_settings: {exc}") from exc
            current = self._stored(key)
            if not _same(value, current):
                if info.readonly:
                    raise ValidationError(f"override_settings: setting {key} is read-only")
                if info.restrict_api:
                    raise ForbiddenError(f"override_settings: setting {key} cannot be changed by a request")
                reason = self.frozen_reason(key)
                if reason is not None:
                    raise ForbiddenError(
                        f"override_settings: setting {key} cannot be changed: settings are frozen ({reason})"
                    )
            out[key] = value
        return out

    @contextmanager
    def overlaid(self, values: Mapping[str, object]) -> Iterator[None]:
        """While inside, `get` on this thread answers `values` first (nested calls stack): a job
        runs with its `override_settings` without changing anyone else's settings (A1111 sets
        them globally for the job and restores them after it)."""
        before: dict[str, object] | None = getattr(self._overlay, "values", None)
        self._overlay.values = {**(before or {}), **values}
        try:
            yield
        finally:
            self._overlay.values = before

    def _apply(self, key: str, value: object, *, notify: bool = True) -> bool:
        with self._lock:
            had_value = key in self._data
            old = self._data[key] if had_value else self._infos[key].default_value()
            if _same(old, value):
                return False
            self._data[key] = value
            callbacks = list(self._callbacks.get(key, ())) if notify else []
        try:
            for callback in callbacks:
                callback(key, copy.deepcopy(value))
        except BaseException:
            with self._lock:
                if self._data.get(key) is value:
                    if had_value:
                        self._data[key] = old
                    else:
                        del self._data[key]
            raise
        return True

    def on_change(self, key: str, callback: OnChange) -> Callable[[], None]:
        """Call `callback(key, value)` after `key` changes; returns an unsubscribe function."""
        with self._lock:
            self._callbacks.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._callbacks.get(key, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return unsubscribe

    # --- persistence ---

    def load(self) -> list[str]:
        """Read `path`; returns warnings. Never raises for a bad file.

        Missing file: defaults. Corrupt JSON or not an object: the file is renamed to
        `<name>.bak-<timestamp>` and defaults are used. A stored value that fails validation
        is dropped (default used). Unknown keys are kept. No callbacks run.
        """
        warnings: list[str] = []
        data: dict[str, object] = {}
        path = self.path
        if path is not None and path.exists():
            loaded = self._read_file(path, warnings)
            with self._lock:
                infos = dict(self._infos)
            for key, value in loaded.items():
                info = infos.get(key)
                if info is None:
                    data[key] = value
                    continue
                try:
                    data[key] = info.coerce(value, check_dynamic_choices=False)
                except ValidationError as exc:
                    warnings.append(f"{path}: bad value ignored, using the default: {exc.message}")
        with self._lock:
            self._data = data
        for message in warnings:
            logger.warning("%s", message)
        return warnings

    @staticmethod
    def _read_file(path: Path, warnings: list[str]) -> dict[str, object]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            warnings.append(f"cannot read {path}: {exc}; using default settings")
            return {}
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 ({exc.reason})"
        else:
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                problem = f"not valid JSON ({exc})"
            else:
                if isinstance(obj, dict):
                    return obj
                problem = f"expected a JSON object, got {type(obj).__name__}"
        backup = _backup_name(path)
        try:
            os.replace(path, backup)
            warnings.append(f"{path} is {problem}; moved it to {backup.name} and started from defaults")
        except OSError as exc:
            warnings.append(f"{path} is {problem}; could not back it up ({exc}); using defaults")
        return {}

    def save(self) -> None:
        """Write the stored values (and preserved unknown keys) to `path` atomically."""
        if self.path is None:
            return
        with self._lock:
            atomic_write_json(self.path, self._data, indent=4)

    def stored(self) -> dict[str, object]:
        """The values that would be written to config.json (set or loaded; no defaults)."""
        with self._lock:
            return copy.deepcopy(self._data)


def _same(a: object, b: object) -> bool:
    """Equality that treats 1 and True as different (JSON does)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    return candidate


def _from_text(raw: object, expected: type) -> object:
    """A number or boolean sent as text ("2", "0.5", "true"), as infotext and scripts give
    `override_settings` values, as that type; anything else unchanged (`coerce` judges it)."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if expected is int and text.lstrip("+-").isdigit():
            return int(text)
        if expected is float:
            return float(text)
    except ValueError:
        return raw
    if expected is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return raw
