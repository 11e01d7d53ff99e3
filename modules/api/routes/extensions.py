"""/sdapi/v1 routes: installed extensions.

- `GET /extensions`: A1111's list, only extensions with a git remote, each
  `{name, remote, branch, commit_hash, version, commit_date, enabled}`. `commit_date` is the commit
  time in seconds since the epoch as a string: A1111 declares the field `str` (its pydantic 1 turns
  GitPython's int into "1704164645"), so that is what its clients have always received.
- Ours, for headless servers (A1111 has no API for these): `POST /extensions/install`
  `{url, branch, name}`, `POST /extensions/update` `{names}`, `POST /extensions/check-updates`,
  `POST /extensions/enabled` `{disabled, disable_all}`. Each is refused with a 403 (A1111's
  error object) when the server is non-local without `--enable-insecure-extension-access`, and
  nothing is cloned or run. They run git (sync routes: FastAPI's threadpool, not the event loop).
  Changes take effect at the next start of the server (A1111's "Apply and restart UI").
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from modules.api.deps import get_services
from modules.core.errors import UserError
from modules.extensions.manager import Extension, ExtensionManager, InstallerRun
from modules.services import Services

router = APIRouter(tags=["extensions"])


class ExtensionItem(BaseModel):
    """A1111's ExtensionItem."""

    name: str = Field(title="Name", description="Extension name")
    remote: str = Field(title="Remote", description="Extension Repository URL")
    branch: str | None = Field(title="Branch", description="Extension Repository Branch (null when detached)")
    commit_hash: str = Field(title="Commit Hash", description="Extension Repository Commit Hash")
    version: str = Field(title="Version", description="Extension Version")
    commit_date: str | None = Field(title="Commit Date", description="Extension Repository Commit Date")
    enabled: bool = Field(title="Enabled", description="Flag specifying whether this extension is enabled")


class ExtensionStatus(ExtensionItem):
    """An extension after a check for updates (ours)."""

    can_update: bool = False
    status: str = ""


class InstallRequest(BaseModel):
    url: str = Field(description="https:// URL of the extension's git repository")
    branch: str = Field("", description="a branch to clone, or a commit hash to check out; empty: default branch")
    name: str = Field("", description="the folder name under extensions/; empty: the URL's last segment")


class InstallerOutput(BaseModel):
    ok: bool
    returncode: int | None
    output: str
    timed_out: bool = False


class InstallResponse(BaseModel):
    name: str
    commit_hash: str
    message: str
    install_py: InstallerOutput | None = Field(None, description="install.py's run; null when there is none")


class UpdateRequest(BaseModel):
    names: list[str] = Field(description="directory names of the extensions to update")


class UpdateResult(BaseModel):
    name: str
    ok: bool
    old_commit: str
    new_commit: str
    message: str
    install_py: InstallerOutput | None = None


class UpdateResponse(BaseModel):
    results: list[UpdateResult]
    restart_required: bool


class EnabledRequest(BaseModel):
    disabled: list[str] = Field(default_factory=list, description="directory names of the extensions to disable")
    disable_all: str = Field("none", description='"none", "extra" (built-ins only) or "all"')


class EnabledResponse(BaseModel):
    changed: list[str]
    restart_required: bool


def get_manager(services: Services = Depends(get_services)) -> ExtensionManager:
    if services.extensions is None:
        raise UserError("extension management is not available on this server", status_code=503)
    return services.extensions


def _installer(run: InstallerRun | None) -> InstallerOutput | None:
    if run is None:
        return None
    return InstallerOutput(ok=run.ok, returncode=run.returncode, output=run.output, timed_out=run.timed_out)


def _item_fields(e: Extension) -> dict[str, Any]:
    """A1111's fields of one extension (commit_date as the string its pydantic 1 made of the int)."""
    return {
        "name": e.name,
        "remote": e.remote,
        "branch": e.branch,
        "commit_hash": e.commit_hash,
        "version": e.version,
        "commit_date": str(e.commit_date) if e.commit_date is not None else None,
        "enabled": e.enabled,
    }


@router.get("/extensions", response_model=list[ExtensionItem])
def list_extensions(manager: ExtensionManager = Depends(get_manager)) -> list[ExtensionItem]:
    return [ExtensionItem(**_item_fields(e)) for e in manager.installed() if e.remote is not None]


@router.post("/extensions/install", response_model=InstallResponse)
def install_extension(body: InstallRequest, manager: ExtensionManager = Depends(get_manager)) -> InstallResponse:
    result = manager.install_from_url(body.url, body.branch, body.name)
    return InstallResponse(
        name=result.name,
        commit_hash=result.commit_hash,
        message=result.message,
        install_py=_installer(result.installer),
    )


@router.post("/extensions/update", response_model=UpdateResponse)
def update_extensions(body: UpdateRequest, manager: ExtensionManager = Depends(get_manager)) -> UpdateResponse:
    outcomes = manager.update(body.names)
    return UpdateResponse(
        results=[
            UpdateResult(
                name=o.name,
                ok=o.ok,
                old_commit=o.old_commit,
                new_commit=o.new_commit,
                message=o.message,
                install_py=_installer(o.installer),
            )
            for o in outcomes
        ],
        restart_required=any(o.ok and o.new_commit != o.old_commit for o in outcomes),
    )


@router.post("/extensions/check-updates", response_model=list[ExtensionStatus])
def check_updates(manager: ExtensionManager = Depends(get_manager)) -> list[ExtensionStatus]:
    return [
        ExtensionStatus(**_item_fields(e), can_update=e.can_update, status=e.status)
        for e in manager.check_for_updates()
        if e.remote is not None
    ]


@router.post("/extensions/enabled", response_model=EnabledResponse)
def set_enabled(body: EnabledRequest, manager: ExtensionManager = Depends(get_manager)) -> EnabledResponse:
    changed = manager.set_enabled(body.disabled, body.disable_all)
    return EnabledResponse(changed=changed, restart_required=bool(changed))
