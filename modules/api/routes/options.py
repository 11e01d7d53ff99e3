"""/sdapi/v1 routes: options (A1111's config.json) and the command-line flags.

`GET /options` reads a snapshot under the options' own short lock, never a lock a generation job
holds, so it answers while a job runs. `POST /options` takes a full round trip of that dict
(Open WebUI posts the whole object back): unknown and read-only keys are ignored, `restrict_api`
keys are refused (403) unless sent unchanged, and so are frozen keys (--freeze-settings...) and,
with --hide-ui-dir-config, the folder settings (`modules.core.dir_config`). Setting
`sd_model_checkpoint` / `sd_vae` switches the model through the options' callbacks
(`modules.engine.facade.wire_model_options`): a model job on the worker, queued behind a running
generation, and this request answers only once it is loaded; a name that matches nothing is a 404
and the previous model stays active.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Body, Depends

from modules.api.deps import get_services
from modules.core.dir_config import dir_config_locked
from modules.core.errors import ForbiddenError, ModelLoadError, UserError
from modules.services import Services

log = logging.getLogger(__name__)

router = APIRouter(tags=["options"])


@router.get("/options")
def get_options(services: Services = Depends(get_services)) -> dict[str, Any]:
    """Every option with its value (defaults filled in), plus unknown keys kept from config.json."""
    return services.options.as_dict()


@router.post("/options")
def set_options(
    values: dict[str, Any] = Body(..., description="setting key -> value; a full GET /options dict is fine"),
    services: Services = Depends(get_services),
) -> None:
    options = services.options
    hide_dirs = services.settings.hide_ui_dir_config
    for key, value in values.items():
        if dir_config_locked(key, hide_dirs) and key in options and value != options.get(key):
            raise ForbiddenError(f"setting {key} cannot be changed: restricted with --hide-ui-dir-config")
    try:
        result = options.apply_update(values, ignore_unknown=True, allow_restricted=False)
    except ModelLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):  # e.g. a corrupt or unsafe file: the client's to fix
            raise UserError(str(exc), status_code=cause.status_code) from exc
        raise
    if "sd_model_checkpoint" in result.changed:
        # A client may name the checkpoint by any alias ("two", a hash); report the title, as A1111 does.
        selected = services.engine.selected_checkpoint
        if selected is not None:
            options.set_readonly("sd_model_checkpoint", selected)
    if result.ignored_unknown:
        log.debug("POST /options ignored unknown keys: %s", ", ".join(result.ignored_unknown))
    if result.changed:
        try:
            options.save()
        except OSError as exc:
            log.warning("could not save %s: %s", options.path, exc)


@router.get("/cmd-flags")
def get_cmd_flags(services: Services = Depends(get_services)) -> dict[str, Any]:
    """The command-line flags as parsed; secrets (`--api-auth`, `--gradio-auth`, ...) redacted."""
    return services.settings.redacted_dict()
