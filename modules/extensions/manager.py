"""Installed extensions: listing, enable/disable, install from a git URL, updates, config-state
backups, and the extension index (A1111's Extensions tab, a1111.md 6.5-6.7).

`ExtensionManager` is built by the composition root from Settings, Paths and Options; the API and
the UI use the same one. Every action that writes (install, update, check for updates, apply the
enabled set, save/restore a config state) is refused with a ForbiddenError when the server is
reachable from the network without `--enable-insecure-extension-access`
(`settings.disable_extension_access`): nothing is cloned, fetched or run. Installs and updates are
written to the audit log (`sdw.extensions.audit`) with their URL and commit, refusals too.

An extension's `install.py` runs only right after it was installed or updated here, never when the
manager is built (the server's start). `requirements.txt` is left alone, as in A1111: an extension's
`install.py` installs what it needs.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from modules.core.atomic import atomic_write_json
from modules.core.errors import ForbiddenError, NotFoundError, UserError, ValidationError
from modules.core.options import Options
from modules.core.paths import Paths
from modules.core.settings import Settings
from modules.extensions.git import (
    GitError,
    GitRunner,
    check_branch,
    check_url,
    is_commit_hash,
    redact_url,
)
from modules.extensions.index import (
    DEFAULT_HIDDEN_TAGS,
    AvailableView,
    ExtensionIndex,
    default_index_url,
    dirname_from_url,
    load_index,
    normalize_git_url,
)

log = logging.getLogger(__name__)
audit = logging.getLogger("sdw.extensions.audit")

DISABLE_ALL_CHOICES = ("none", "extra", "all")
INSTALLER_TIMEOUT_S = 600.0
MAX_OUTPUT_CHARS = 20_000
PRE_UPDATE_BACKUP = "Backup (pre-update)"
PRE_RESTORE_BACKUP = "Backup (pre-restore)"

# one path component: starts with a letter, digit or underscore; then letters, digits and ._+-
_DIRNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}$")
_STATE_NAME = re.compile(r"[^A-Za-z0-9 ._()+-]")

ACCESS_NOTE = (
    "Installing, updating and enabling extensions is disabled because the server is reachable from the "
    "network (--listen, --share, --server-name or --ngrok). Extensions are code that runs on this machine: "
    "start the server with --enable-insecure-extension-access to allow it anyway."
)


def check_dirname(name: str) -> str:
    """`name` if it is one safe directory name (no separators, no `..`, no leading dot, a
    conservative character set); ValidationError otherwise."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("no directory name: give one, or a URL that ends in the repository's name")
    if "\x00" in name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise ValidationError(
            f"not a safe directory name: {name!r} (one folder name, no '/', '\\', '..' or leading '.')"
        )
    if not _DIRNAME.match(name):
        raise ValidationError(
            f"not a safe directory name: {name!r} (letters, digits, '_', '.', '+' and '-' only, at most 100)"
        )
    return name


# --- what the manager reports -------------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    """One installed extension, as the Installed table and `/sdapi/v1/extensions` show it."""

    name: str  # the directory name
    canonical_name: str  # metadata.ini `[Extension] Name=`, else the directory name
    path: Path
    is_builtin: bool
    enabled: bool  # not in the `disabled_extensions` option
    remote: str | None = None
    branch: str | None = None
    commit_hash: str = ""
    commit_date: int | None = None
    version: str = ""  # short commit hash
    can_update: bool = False
    status: str = ""  # "", "latest", "new commits", "behind HEAD", "unknown (remote error)"
    error: str | None = None  # set by the loader (mark_error): shown in the tab
    has_install_py: bool = False
    has_requirements: bool = False


@dataclass(frozen=True)
class InstallerRun:
    """What running an extension's install.py gave."""

    ok: bool
    returncode: int | None
    output: str
    timed_out: bool = False


@dataclass(frozen=True)
class InstallResult:
    name: str
    path: Path
    commit_hash: str
    installer: InstallerRun | None
    message: str


@dataclass(frozen=True)
class UpdateOutcome:
    name: str
    ok: bool
    old_commit: str
    new_commit: str
    message: str
    installer: InstallerRun | None = None


@dataclass(frozen=True)
class ConfigState:
    """A saved `config_states/*.json` (A1111's format)."""

    label: str  # "<name>: YYYY-mm-dd HH:MM:SS", as A1111 lists them
    name: str
    created_at: float
    path: Path
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RestoreReport:
    restored: tuple[str, ...]
    failed: tuple[str, ...]
    not_restored: tuple[str, ...]
    disabled: tuple[str, ...]


# --- the manager --------------------------------------------------------------------------------


PROTECTED_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "accelerate",
    "gradio",
    "gradio-client",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "numpy",
    "pillow",
    "spandrel",
    "open-clip-torch",
)
"""Distributions an extension's install.py may not move (pinned through PIP_CONSTRAINT)."""


class ExtensionManager:
    """Extensions in `paths.extensions_builtin_dir` and `paths.extensions_dir`, and what the
    Extensions tab and the API do with them."""

    def __init__(
        self,
        settings: Settings,
        paths: Paths,
        options: Options,
        *,
        git: GitRunner | None = None,
        python: str | None = None,
        installer_timeout_s: float = INSTALLER_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.options = options
        self.git = git if git is not None else GitRunner(allow_local=not settings.webui_is_non_local)
        self.python = python or sys.executable
        self.installer_timeout_s = installer_timeout_s
        self.default_index_url = default_index_url(environ)
        # set by the composition root when the process runs under something that restarts it
        self.restart_server: Callable[[], None] | None = None
        self.restart_delay_s = 1.0
        self._write_lock = threading.RLock()  # one install/update/restore at a time
        self._state_lock = threading.Lock()
        self._status: dict[str, tuple[bool, str]] = {}
        self._errors: dict[str, str] = {}

    # --- access ---

    @property
    def access_disabled(self) -> bool:
        """True when write actions are refused (non-local without the unlock flag)."""
        return self.settings.disable_extension_access

    @property
    def access_note(self) -> str | None:
        """Why write actions are refused (with the flag that allows them), or None when allowed."""
        return ACCESS_NOTE if self.access_disabled else None

    def check_access(self, action: str) -> None:
        """ForbiddenError (and an audit line) when write actions are refused."""
        if self.access_disabled:
            audit.warning("refused: %s (extension access is disabled: the server is non-local)", action)
            raise ForbiddenError(ACCESS_NOTE)

    # --- listing ---

    def installed(self) -> list[Extension]:
        """Built-in extensions, then the user's, each in name order; git facts read now."""
        disabled = set(self.disabled_names())
        with self._state_lock:
            statuses = dict(self._status)
            errors = dict(self._errors)
        found: list[Extension] = []
        canonical_seen: dict[str, str] = {}
        for base, builtin in ((self.paths.extensions_builtin_dir, True), (self.paths.extensions_dir, False)):
            if not base.is_dir():
                continue
            for child in sorted(base.iterdir(), key=lambda p: p.name):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                canonical = _canonical_name(child)
                other = canonical_seen.get(canonical.lower())
                if other is not None:
                    log.warning(
                        'extension "%s" has the same canonical name "%s" as "%s": it is skipped',
                        child.name,
                        canonical,
                        other,
                    )
                    continue
                canonical_seen[canonical.lower()] = child.name
                found.append(self._describe(child, builtin, canonical, disabled, statuses, errors))
        return found

    def _describe(
        self,
        path: Path,
        builtin: bool,
        canonical: str,
        disabled: set[str],
        statuses: Mapping[str, tuple[bool, str]],
        errors: Mapping[str, str],
    ) -> Extension:
        ext = Extension(
            name=path.name,
            canonical_name=canonical,
            path=path,
            is_builtin=builtin,
            enabled=path.name not in disabled,
            error=errors.get(path.name),
            has_install_py=(path / "install.py").is_file(),
            has_requirements=(path / "requirements.txt").is_file(),
        )
        if builtin:
            return ext
        info = self.git.info(path)
        if info is None:
            return ext
        can_update, status = statuses.get(path.name, (False, ""))
        return replace(
            ext,
            remote=info.remote,
            branch=info.branch,
            commit_hash=info.commit_hash,
            commit_date=info.commit_date,
            version=info.commit_hash[:8],
            can_update=can_update,
            status=status or ("unknown" if info.remote else ""),
        )

    def get(self, name: str) -> Extension:
        for ext in self.installed():
            if ext.name == name:
                return ext
        raise NotFoundError(f"extension not installed: {name}")

    def disabled_names(self) -> list[str]:
        value = self.options.get("disabled_extensions")
        return [str(v) for v in value] if isinstance(value, list) else []

    def disable_all_option(self) -> str:
        value = str(self.options.get("disable_all_extensions"))
        return value if value in DISABLE_ALL_CHOICES else "none"

    def effective_disable_mode(self) -> str:
        """ "all", "extra" or "none": the flags first, then the option."""
        if self.settings.disable_all_extensions or self.disable_all_option() == "all":
            return "all"
        if self.settings.disable_extra_extensions or self.disable_all_option() == "extra":
            return "extra"
        return "none"

    def disabled_reason(self) -> str | None:
        """Why extensions are held back as a whole (A1111's notices), or None."""
        if self.settings.disable_all_extensions:
            return '"--disable-all-extensions" was used, remove it to load all extensions again'
        if self.disable_all_option() != "none":
            return '"Disable all extensions" was set, change it to "none" to load all extensions again'
        if self.settings.disable_extra_extensions:
            return '"--disable-extra-extensions" was used, remove it to load all extensions again'
        return None

    def active(self, extensions: Iterable[Extension] | None = None) -> list[Extension]:
        """The extensions to load: enabled ones, none with "all", only built-ins with "extra"."""
        listed = self.installed() if extensions is None else list(extensions)
        mode = self.effective_disable_mode()
        if mode == "all":
            return []
        if mode == "extra":
            return [e for e in listed if e.enabled and e.is_builtin]
        return [e for e in listed if e.enabled]

    def mark_error(self, name: str, text: str) -> None:
        """Record that loading extension `name` failed (shown in the Installed table)."""
        with self._state_lock:
            self._errors[name] = text

    def clear_error(self, name: str) -> None:
        with self._state_lock:
            self._errors.pop(name, None)

    # --- enable / disable ---

    def set_enabled(self, disabled: Iterable[str], disable_all: str = "none") -> list[str]:
        """Save `disabled_extensions` and `disable_all_extensions` to config.json; the changed keys.
        Takes effect at the next start (A1111's "Apply and restart UI")."""
        self.check_access("apply the enabled extensions")
        if disable_all not in DISABLE_ALL_CHOICES:
            raise ValidationError(f"disable_all must be one of {', '.join(DISABLE_ALL_CHOICES)}, got {disable_all!r}")
        names: list[str] = []
        for name in disabled:
            if not isinstance(name, str) or not name.strip():
                raise ValidationError("disabled extension names must be non-empty strings")
            if name not in names:
                names.append(name)
        with self._write_lock:
            result = self.options.apply_update({"disabled_extensions": names, "disable_all_extensions": disable_all})
            self.options.save()
        log.info("extensions disabled: %s; disable all: %s", ", ".join(names) or "none", disable_all)
        return result.changed

    # --- install ---

    def install_from_url(self, url: str, branch_or_commit: str = "", dirname: str = "") -> InstallResult:
        """Clone `url` into `extensions/<dirname>` (A1111's steps, a1111.md 6.5), then run its
        install.py. `branch_or_commit`: a branch to clone, or a commit hash to check out."""
        self.check_access(f"install {redact_url(url)}")
        url = check_url(url, allow_local=self.git.allow_local)
        name = check_dirname(dirname.strip() if dirname and dirname.strip() else dirname_from_url(url))
        ref = (branch_or_commit or "").strip()
        commit = ref if ref and is_commit_hash(ref) else None
        branch = check_branch(ref) if ref and commit is None else None
        with self._write_lock:
            extensions_dir = self.paths.extensions_dir
            target = extensions_dir / name
            if os.path.lexists(target):
                raise ValidationError(f"extension directory already exists: {target}")
            wanted = normalize_git_url(url)
            for ext in self.installed():
                if ext.remote and normalize_git_url(ext.remote) == wanted:
                    raise ValidationError(f"an extension with this URL is already installed: {ext.name}")
            self.paths.tmp_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.paths.tmp_dir / name
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.git.clone(url, tmp, branch=branch)
                if commit is not None:
                    self.git.checkout_commit(tmp, commit)
                head = self.git.rev_parse(tmp)
                extensions_dir.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(target):
                    raise ValidationError(f"extension directory already exists: {target}")
                _move_dir(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            audit.info(
                "installed extension %s from %s (%s) at commit %s", name, redact_url(url), ref or "default branch", head
            )
            self.clear_error(name)
            installer = self.run_installer(target)
        message = f"Installed into {target}. Restart the server (Installed tab: Apply) to load it."
        if installer is not None and not installer.ok:
            message += " Its install.py failed: see the output."
        return InstallResult(name=name, path=target, commit_hash=head, installer=installer, message=message)

    def _write_constraints(self) -> Path | None:
        """A pip constraints file pinning the installed versions of the packages the app runs on
        (`PROTECTED_PACKAGES`), for extensions' installers: an install.py asking for another torch
        or transformers fails with pip's conflict message instead of breaking the app (seen with
        sd-dynamic-prompts' magicprompt extra, which moves transformers 5 back to 4.x)."""
        lines = []
        for name in PROTECTED_PACKAGES:
            try:
                lines.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        if not lines:
            return None
        try:  # the system's temp dir: the data dir's tmp/ holds clones only; removed after the run
            fd, name = tempfile.mkstemp(prefix="sdw-extension-constraints-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as exc:
            log.warning("cannot write the pip constraints for installers: %s", exc)
            return None
        return Path(name)

    def run_installer(self, path: Path) -> InstallerRun | None:
        """Run `path/install.py` with this Python (cwd = the extension, PYTHONPATH = the repo root);
        None when there is none. Failure and timeout are reported, not raised."""
        script = path / "install.py"
        if not script.is_file():
            return None
        env = dict(os.environ)
        # the code's root (where launch.py and modules/ are), whatever the data dir
        code_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code_root, env.get("PYTHONPATH", "")) if p)
        # pip run by the installer may add packages but not move the ones the app runs on
        constraints = self._write_constraints()
        if constraints is not None:
            env["PIP_CONSTRAINT"] = " ".join(p for p in (str(constraints), env.get("PIP_CONSTRAINT", "")) if p)
        log.info("running install.py of extension %s", path.name)
        try:
            process = subprocess.Popen(
                [self.python, str(script)],
                cwd=path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot run install.py of %s: %s", path.name, exc)
            if constraints is not None:
                constraints.unlink(missing_ok=True)
            return InstallerRun(ok=False, returncode=None, output=str(exc))
        timed_out = False
        try:
            raw, _ = process.communicate(timeout=self.installer_timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                raw, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                raw = b""
        if constraints is not None:
            constraints.unlink(missing_ok=True)
        output = (raw or b"").decode("utf-8", errors="replace")[-MAX_OUTPUT_CHARS:]
        if timed_out:
            output += f"\ninstall.py timed out after {self.installer_timeout_s:g} s and was stopped"
        ok = not timed_out and process.returncode == 0
        if output.strip():
            log.info("install.py of %s:\n%s", path.name, output.strip())
        if not ok:
            log.warning("install.py of extension %s failed (exit code %s)", path.name, process.returncode)
        return InstallerRun(ok=ok, returncode=process.returncode, output=output, timed_out=timed_out)

    # --- updates ---

    def check_for_updates(self, skip: Iterable[str] = ()) -> list[Extension]:
        """`git fetch` each user extension with a remote (except `skip`) and compare HEAD with
        origin/<branch>; the statuses are kept for the Installed table. Returns the new list."""
        self.check_access("check extensions for updates")
        skipped = set(skip)
        with self._write_lock:
            for ext in self.installed():
                if ext.is_builtin or ext.remote is None or ext.name in skipped:
                    continue
                self._set_status(ext.name, *self._check_one(ext))
        return self.installed()

    def _check_one(self, ext: Extension) -> tuple[bool, str]:
        upstream = self.git.upstream_ref(ext.path, ext.branch)
        try:
            before = self._try_rev(ext.path, upstream)
            self.git.fetch(ext.path)
            after = self.git.rev_parse(ext.path, upstream)
            head = self.git.rev_parse(ext.path)
        except UserError as exc:
            log.warning("checking %s for updates failed: %s", ext.name, exc)
            return False, "unknown (remote error)"
        if after == head:
            return False, "latest"
        return True, "new commits" if before != after else "behind HEAD"

    def _try_rev(self, path: Path, ref: str) -> str | None:
        try:
            return self.git.rev_parse(path, ref)
        except GitError:
            return None

    def _set_status(self, name: str, can_update: bool, status: str) -> None:
        with self._state_lock:
            self._status[name] = (can_update, status)

    def update(self, names: Iterable[str]) -> list[UpdateOutcome]:
        """Fetch + `reset --hard origin/<branch>` each named extension, after saving a config-state
        backup; then its install.py when the commit changed. NotFoundError for a name not
        installed, ValidationError for one without a git remote; other failures are reported per
        extension."""
        self.check_access("update extensions")
        return self._update(list(names), skip_dirty=False)

    def update_all(self) -> list[UpdateOutcome]:
        """`--update-all-extensions` at start: update every user extension with a git remote
        (those with uncommitted changes are left alone and logged). The operator asked for it on
        the command line, so the network gate does not apply. Errors are logged, never raised."""
        names = [e.name for e in self.installed() if not e.is_builtin and e.remote is not None]
        if not names:
            return []
        try:
            outcomes = self._update(names, skip_dirty=True)
        except Exception:  # never stop the start-up
            log.exception("--update-all-extensions failed")
            return []
        for outcome in outcomes:
            (log.info if outcome.ok else log.warning)("update of extension %s: %s", outcome.name, outcome.message)
        return outcomes

    def _update(self, names: list[str], *, skip_dirty: bool) -> list[UpdateOutcome]:
        with self._write_lock:
            installed = {e.name: e for e in self.installed()}
            targets: list[Extension] = []
            for name in dict.fromkeys(names):
                ext = installed.get(name)
                if ext is None:
                    raise NotFoundError(f"extension not installed: {name}")
                if ext.is_builtin or ext.remote is None:
                    raise ValidationError(f"extension {name} is not a git checkout with a remote: it cannot be updated")
                targets.append(ext)
            if not targets:
                return []
            self._write_config_state(PRE_UPDATE_BACKUP)
            return [self._update_one(ext, skip_dirty=skip_dirty) for ext in targets]

    def _update_one(self, ext: Extension, *, skip_dirty: bool) -> UpdateOutcome:
        old = ext.commit_hash
        if skip_dirty and self._dirty(ext.path):
            return UpdateOutcome(ext.name, False, old, old, "has uncommitted changes: not updated")
        upstream = self.git.upstream_ref(ext.path, ext.branch)
        try:
            self.git.fetch(ext.path)
            self.git.reset_hard(ext.path, upstream)
            new = self.git.rev_parse(ext.path)
        except UserError as exc:
            audit.warning("update of extension %s from %s failed: %s", ext.name, redact_url(ext.remote), exc)
            return UpdateOutcome(ext.name, False, old, old, str(exc))
        self._set_status(ext.name, False, "latest")
        audit.info("updated extension %s from %s: %s -> %s", ext.name, redact_url(ext.remote), old, new)
        if new == old:
            return UpdateOutcome(ext.name, True, old, new, "already up to date")
        self.clear_error(ext.name)
        installer = self.run_installer(ext.path)
        message = f"updated {old[:8]} -> {new[:8]}"
        if installer is not None and not installer.ok:
            message += " (its install.py failed)"
        return UpdateOutcome(ext.name, True, old, new, message, installer)

    def _dirty(self, path: Path) -> bool:
        try:
            return bool(self.git.run(["status", "--porcelain", "--untracked-files=no"], cwd=path))
        except GitError:
            return True

    # --- config states (Backup/Restore) ---

    def config_state(self) -> dict[str, Any]:
        """A1111's config-state object: created_at, webui (this checkout's git facts), extensions."""
        webui = self.git.info(self.paths.repo_root)
        extensions: dict[str, Any] = {}
        for ext in self.installed():
            extensions[ext.name] = {
                "name": ext.name,
                "path": str(ext.path),
                "enabled": ext.enabled,
                "is_builtin": ext.is_builtin,
                "remote": ext.remote,
                "commit_hash": ext.commit_hash or None,
                "commit_date": ext.commit_date,
                "branch": ext.branch,
                "have_info_from_repo": True,
            }
        return {
            "created_at": datetime.now().timestamp(),
            "webui": {
                "remote": webui.remote if webui else None,
                "commit_hash": webui.commit_hash if webui else None,
                "commit_date": webui.commit_date if webui else None,
                "branch": webui.branch if webui else None,
            },
            "extensions": extensions,
        }

    def save_config_state(self, name: str = "") -> Path:
        """Write the current state to `config_states/<timestamp>_<name>.json`."""
        self.check_access("save a config state")
        with self._write_lock:
            return self._write_config_state(name)

    def _write_config_state(self, name: str) -> Path:
        clean = _STATE_NAME.sub("", os.path.basename(name or "")).strip() or "Config"
        state = self.config_state()
        state["name"] = clean
        folder = self.paths.config_states_dir
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        path = folder / f"{stamp}_{clean}.json"
        n = 1
        while path.exists():
            path = folder / f"{stamp}_{clean}-{n}.json"
            n += 1
        atomic_write_json(path, state, indent=4)
        log.info("saved the extension state to %s", path)
        return path

    def list_config_states(self) -> list[ConfigState]:
        """Saved states, newest first (files that are not config states are skipped)."""
        folder = self.paths.config_states_dir
        if not folder.is_dir():
            return []
        states: list[ConfigState] = []
        for path in folder.glob("*.json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                created = float(data["created_at"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("config state %s is unreadable: %s", path, exc)
                continue
            if not isinstance(data, dict):
                continue
            name = str(data.get("name", "Config"))
            stamp = datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S")
            states.append(ConfigState(f"{name}: {stamp}", name, created, path, data))
        states.sort(key=lambda s: s.created_at, reverse=True)
        return states

    def find_config_state(self, label: str) -> ConfigState:
        for state in self.list_config_states():
            if label in (state.label, state.path.name):
                return state
        raise NotFoundError(f"no saved config state {label!r}")

    def restore_config_state(self, label: str) -> RestoreReport:
        """Restore the extensions part of a saved state: each installed user extension back to its
        commit and enabled flag (one not in the state is disabled). Not restored: this server's own
        version (it is not an A1111 checkout) and extensions of the state that are not installed."""
        self.check_access("restore a config state")
        state = self.find_config_state(label)
        saved = state.data.get("extensions")
        if not isinstance(saved, dict):
            raise ValidationError(f"{state.path.name} holds no extension state")
        restored: list[str] = []
        failed: list[str] = []
        disabled: list[str] = []
        with self._write_lock:
            self._write_config_state(PRE_RESTORE_BACKUP)
            installed = self.installed()
            for ext in installed:
                if ext.is_builtin:
                    continue
                entry = saved.get(ext.name)
                if not isinstance(entry, dict):
                    disabled.append(ext.name)
                    failed.append(f"{ext.name}: not in the saved state, disabled")
                    continue
                if not entry.get("enabled", False):
                    disabled.append(ext.name)
                commit = str(entry.get("commit_hash") or "")
                if not commit or ext.remote is None:
                    continue
                if not is_commit_hash(commit):
                    failed.append(f"{ext.name}: the saved commit {commit[:50]!r} is not a commit hash")
                    continue
                if commit == ext.commit_hash:
                    restored.append(f"{ext.name}: already at {commit[:8]}")
                    continue
                try:
                    self.git.fetch(ext.path)
                    self.git.reset_hard(ext.path, commit)
                except UserError as exc:
                    failed.append(f"{ext.name}: {exc}")
                    continue
                audit.info("restored extension %s to %s (was %s)", ext.name, commit, ext.commit_hash)
                self.run_installer(ext.path)
                restored.append(f"{ext.name}: {ext.commit_hash[:8]} -> {commit[:8]}")
            user_names = {e.name for e in installed if not e.is_builtin}
            keep = [n for n in self.disabled_names() if n not in user_names]
            self.options.apply_update({"disabled_extensions": keep + [n for n in disabled if n not in keep]})
            self.options.save()
        names = {e.name for e in installed}
        missing = sorted(n for n in saved if n not in names)
        not_restored = ["the server's own version (this is not an A1111 checkout)"]
        if missing:
            not_restored.append(
                "extensions in the state that are not installed (not re-installed): " + ", ".join(missing)
            )
        return RestoreReport(tuple(restored), tuple(failed), tuple(not_restored), tuple(disabled))

    # --- the index (Available tab) ---

    def load_index(self, source: str | None = None) -> ExtensionIndex:
        """The index from `source` (default: `WEBUI_EXTENSIONS_INDEX` or A1111's); a local file
        only when the server is local."""
        return load_index(source or self.default_index_url, allow_local=not self.settings.webui_is_non_local)

    def available(
        self,
        index: ExtensionIndex,
        *,
        selected_tags: Iterable[str] = DEFAULT_HIDDEN_TAGS,
        showing_type: str = "hide",
        filtering_type: str = "or",
        order: str | int = "newest first",
        search: str = "",
    ) -> AvailableView:
        """The index's entries as the Available table shows them, installed ones marked."""
        installed = self.installed()
        return index.view(
            installed_names=[e.name for e in installed],
            installed_urls=[e.remote for e in installed if e.remote],
            selected_tags=selected_tags,
            showing_type=showing_type,
            filtering_type=filtering_type,
            order=order,
            search=search,
        )

    # --- restart ---

    @property
    def can_restart(self) -> bool:
        return self.restart_server is not None

    def request_restart(self) -> bool:
        """Ask the server to restart in `restart_delay_s` (so the answer that says so is still
        sent): True, or False when it cannot restart itself."""
        restart = self.restart_server
        if restart is None:
            return False
        log.info("restart requested from the Extensions tab")
        timer = threading.Timer(self.restart_delay_s, restart)
        timer.daemon = True
        timer.start()
        return True


def _canonical_name(path: Path) -> str:
    metadata = path / "metadata.ini"
    if metadata.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(metadata, encoding="utf-8")
            name = parser.get("Extension", "Name", fallback="").strip()
        except (configparser.Error, OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s", metadata, exc)
            name = ""
        if name:
            return name
    return path.name


def _move_dir(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(source), str(target))  # tmp/ and extensions/ on different file systems
