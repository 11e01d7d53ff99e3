"""/sdapi/v1 training routes: A1111's create/train calls and our LoRA training.

A1111's four routes take a JSON object passed as keyword arguments and answer `{"info": str}`:
`create embedding filename: <path>` (clients slice `info[27:]` for the path, so the prefix is
byte-exact), `create hypernetwork filename: <path>`, and `train embedding complete: filename:
<path> error: <error>` for BOTH train calls (A1111's hypernetwork route says "embedding" too;
kept, since clients match that text). The train calls are synchronous and long; clients poll
`/sdapi/v1/progress` (its `textinfo` carries `loss: <value>`) and may `/interrupt`, which stops
the run after saving it.

Where A1111 answers 200 with the error inside `info` (a wrong key, a bad value, a failed run),
we answer a 4xx in A1111's error shape and still put A1111's `info` text in the body, so a
client reading `info` sees the same message and one checking the status sees the failure.

Ours: `POST /train/lora` (kohya's option names; `"wait": false` returns the task id at once) and
`GET /train/status` (a run's step, losses, samples and state).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modules.api.deps import get_services
from modules.api.errors import error_response
from modules.core.errors import NotFoundError, UserError
from modules.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    LoraTrainRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
    TrainResult,
)
from modules.engine.samplers import list_samplers
from modules.services import Services

router = APIRouter(tags=["training"])

CREATE_EMBEDDING_PREFIX = "create embedding filename: "
CREATE_HYPERNETWORK_PREFIX = "create hypernetwork filename: "
_IGNORED_KEYS = frozenset({"id_task"})  # A1111's task id argument (clients send 0)


def _fail(status: int, error: str, message: str, info: str, body: Any = "") -> JSONResponse:
    """A1111's error shape with its `info` text added."""
    return error_response(status, error, message, body, extra={"info": info})


def _kwargs(cls: type, body: Mapping[str, Any], what: str, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body as keyword arguments of `cls`; an unknown key is a TypeError-style user error
    (as calling A1111's function with it would be)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in body.items():
        key = (renames or {}).get(key, key)
        if key in _IGNORED_KEYS:
            continue
        if key not in names:
            raise UserError(f"{what}() got an unexpected keyword argument '{key}'", status_code=422)
        out[key] = value
    return out


def _coerce(cls: type, kwargs: dict[str, Any]) -> Any:
    """Build the dataclass, converting JSON values to the field types (numbers given as strings,
    lists for tuples); a value that does not convert is a 422 naming the field."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    converted: dict[str, Any] = {}
    for key, value in kwargs.items():
        kind = str(types[key])
        try:
            converted[key] = _convert(kind, value)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{key}: {exc}", status_code=422) from exc
    try:
        return cls(**converted)
    except TypeError as exc:  # a required field missing
        raise UserError(str(exc).replace("__init__", cls.__name__), status_code=422) from exc


def _convert(kind: str, value: Any) -> Any:
    if value is None and "None" in kind:
        return None
    base = kind.replace(" | None", "")
    if base == "bool":
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off", ""):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        return bool(value)
    if base == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"not a whole number: {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        return float(value)
    if base == "str":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # A1111's learn_rate may come as a number
        if not isinstance(value, str):
            raise ValueError(f"not a string: {value!r}")
        return value
    if base.startswith("tuple[int, int]"):
        return _resolution(value)
    if base.startswith("tuple[int"):
        return tuple(int(v) for v in _listish(value))
    if base.startswith("tuple[float"):
        return tuple(float(v) for v in _listish(value))
    return value


def _listish(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in re.split(r"[,\s]+", value.strip()) if v]
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"not a list: {value!r}")


def _resolution(value: Any) -> tuple[int, int]:
    """kohya's `--resolution`: "512" or "512,768" (width, height); also a number or a list."""
    parts = [value] if isinstance(value, int | float) else _listish(value)
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"a resolution is 'size' or 'width,height', not {value!r}")
    width, height = (int(p) for p in parts)
    if width < 64 or height < 64:
        raise ValueError(f"the resolution must be at least 64x64, not {width}x{height}")
    return width, height


def _sampler_from_index(body: dict[str, Any]) -> None:
    """Older clients send `preview_sampler_index` (A1111's sampler list order)."""
    if "preview_sampler_index" in body:
        index = body.pop("preview_sampler_index")
        samplers = list_samplers()
        if "preview_sampler_name" not in body:
            try:
                body["preview_sampler_name"] = samplers[int(index)].name
            except (ValueError, TypeError, IndexError) as exc:
                raise UserError(f"preview_sampler_index {index!r} names no sampler", status_code=422) from exc


# -- create ------------------------------------------------------------------------------------


@router.post("/create/embedding")
async def create_embedding(body: dict[str, Any] = Body(...), services: Services = Depends(get_services)) -> Any:
    try:
        request = _coerce(CreateEmbeddingRequest, _kwargs(CreateEmbeddingRequest, body, "create_embedding"))
        result = await run_in_threadpool(services.engine.create_embedding, request)
    except UserError as exc:
        return _fail(exc.status_code, type(exc).__name__, exc.message, f"create embedding error: {exc.message}")
    return {"info": f"{CREATE_EMBEDDING_PREFIX}{result.filename}"}


@router.post("/create/hypernetwork")
async def create_hypernetwork(body: dict[str, Any] = Body(...), services: Services = Depends(get_services)) -> Any:
    try:
        args = _kwargs(CreateHypernetworkRequest, body, "create_hypernetwork")
        for key in ("layer_structure", "dropout_structure", "activation_func", "weight_init"):
            if args.get(key) is None:
                args.pop(key, None)  # A1111's None = the default
        request = _coerce(CreateHypernetworkRequest, args)
        result = await run_in_threadpool(services.engine.create_hypernetwork, request)
    except UserError as exc:
        return _fail(exc.status_code, type(exc).__name__, exc.message, f"create hypernetwork error: {exc.message}")
    return {"info": f"{CREATE_HYPERNETWORK_PREFIX}{result.filename}"}


# -- train -------------------------------------------------------------------------------------


def _train_info(filename: str, error: object) -> str:
    return f"train embedding complete: filename: {filename} error: {error}"


async def _train(services: Services, cls: type, body: dict[str, Any], what: str) -> Any:
    try:
        body = dict(body)
        _sampler_from_index(body)
        request = _coerce(cls, _kwargs(cls, body, what))
        handle = services.engine.submit(request)
    except UserError as exc:
        return _fail(exc.status_code, type(exc).__name__, exc.message, _train_info("", f"{type(exc).__name__}: {exc}"))
    try:
        result: TrainResult = await asyncio.wrap_future(handle.future)
    except UserError as exc:
        return _fail(exc.status_code, type(exc).__name__, exc.message, _train_info("", exc.message))
    except Exception as exc:  # the run failed: say so with A1111's text, as a server error
        return _fail(500, type(exc).__name__, str(exc), _train_info("", f"{type(exc).__name__}: {exc}"))
    return {"info": _train_info(result.filename, None)}


@router.post("/train/embedding")
async def train_embedding(body: dict[str, Any] = Body(...), services: Services = Depends(get_services)) -> Any:
    return await _train(services, TrainEmbeddingRequest, body, "train_embedding")


@router.post("/train/hypernetwork")
async def train_hypernetwork(body: dict[str, Any] = Body(...), services: Services = Depends(get_services)) -> Any:
    return await _train(services, TrainHypernetworkRequest, body, "train_hypernetwork")


@router.post("/train/lora")
async def train_lora(body: dict[str, Any] = Body(...), services: Services = Depends(get_services)) -> Any:
    """Ours: kohya's option names (see `LoraTrainRequest`). Waits for the run unless `"wait": false`;
    answers the result (file, steps, last loss, samples, warnings, skipped images)."""
    body = dict(body)
    wait = body.pop("wait", True)
    request = _coerce(LoraTrainRequest, _kwargs(LoraTrainRequest, body, "train_lora"))
    handle = services.engine.submit(request)
    if not wait:
        return {"task_id": handle.id, "info": f"training {request.name} queued"}
    result: TrainResult = await asyncio.wrap_future(handle.future)
    return {"task_id": handle.id, **dataclasses.asdict(result)}


@router.get("/train/status")
def train_status(task_id: str | None = Query(None), services: Services = Depends(get_services)) -> Any:
    """A training run's progress: state, step / max_steps, epoch, learning rate, mean loss, the loss
    history, samples (step, file), saved files, warnings; the latest run without `task_id` (state
    "idle" before any run)."""
    status = services.engine.training_status(task_id)
    if status is None:
        if task_id:
            raise NotFoundError("no such training run")
        return {"state": "idle", "step": 0, "max_steps": 0, "losses": [], "samples": [], "saved": [], "warnings": []}
    return status
