"""The extra-network pages' cards, built from the registries (LoRA / hypernetwork registry,
embeddings through the engine, checkpoints): files next to a network (previews, descriptions,
user metadata), preview thumbnails written into Gradio's upload folder (the browser never names a
path on the server), refresh, and saving a card's user metadata."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import html
import io
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import gradio as gr
from PIL import Image, ImageOps

from modules.core.atomic import atomic_write_json
from modules.core.errors import SdWebuiError
from modules.ui.extra_network_cards import (
    CHECKPOINTS,
    HYPERNETWORKS,
    LORA,
    SD_VERSIONS,
    TEXTUAL_INVERSION,
    Card,
    CardLook,
    hypernetwork_text,
    lora_card_shown,
    lora_texts,
    model_sd_version,
    preferred_lora_name,
    validate_user_metadata,
)

if TYPE_CHECKING:
    from modules.services import Services

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
THUMBNAIL_BOX = (512, 768)  # cards are 2:3; twice their size on screen
THUMBNAIL_DIR = "sdw-extra-networks"
FILE_ROUTE = "gradio_api/file="  # relative to the page, so a root path in front still works

# -- files next to a network ----------------------------------------------------------------------


def find_preview(path: Path) -> Path | None:
    """`<stem>.<ext>` or `<stem>.preview.<ext>` for the preview image types (A1111's order)."""
    base = path.with_suffix("") if not path.is_dir() else path
    for suffix in PREVIEW_SUFFIXES:
        for candidate in (Path(f"{base}{suffix}"), Path(f"{base}.preview{suffix}")):
            if candidate != path and candidate.is_file():
                return candidate
    return None


def find_description(path: Path) -> str:
    base = path.with_suffix("") if not path.is_dir() else path
    for candidate in (Path(f"{base}.txt"), Path(f"{base}.description.txt")):
        with contextlib.suppress(OSError):
            return candidate.read_text(encoding="utf-8", errors="replace")
    return ""


def user_metadata_path(path: Path) -> Path:
    base = path.with_suffix("") if not path.is_dir() else path
    return Path(f"{base}.json")


def read_user_metadata(path: Path) -> dict[str, Any]:
    """`<stem>.json` next to the file, {} when absent or unreadable."""
    try:
        data = json.loads(user_metadata_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _times(path: Path) -> tuple[float, float, int | None]:
    """(created, modified, size) of a file; zeros when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return 0.0, 0.0, None
    created = float(getattr(st, "st_birthtime", st.st_ctime))
    return created, float(st.st_mtime), st.st_size


def _cover_image(metadata: Mapping[str, Any]) -> bytes | None:
    raw = metadata.get("ssmd_cover_images")
    if not raw:
        return None
    try:
        images = json.loads(raw) if isinstance(raw, str) else raw
        first = next((i for i in images if i), None) if isinstance(images, list) else None
        return base64.b64decode(first, validate=False) if isinstance(first, str) else None
    except (ValueError, TypeError, binascii.Error):
        return None


# -- previews: thumbnails in Gradio's upload folder -----------------------------------------------

_thumb_lock = threading.Lock()


def thumbnail_dir() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve() / THUMBNAIL_DIR


def _write_thumbnail(source: Path | bytes, target: Path) -> bool:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.seek(0)
            picture = ImageOps.exif_transpose(image) or image
            picture.thumbnail(THUMBNAIL_BOX)
            has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
            picture = picture.convert("RGBA" if has_alpha else "RGB")
            buffer = io.BytesIO()
            picture.save(buffer, format="WEBP", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        log.warning("preview %s could not be read: %s", source if isinstance(source, Path) else "(embedded)", exc)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    return True


def thumbnail_url(card: Card, folder: Path | None = None) -> str | None:
    """The URL of `card`'s preview as a thumbnail Gradio serves (made once per file version), or
    None when it has none or it cannot be read."""
    folder = folder or thumbnail_dir()
    source: Path | bytes
    if card.preview is not None:
        if card.preview.suffix.lower() not in PREVIEW_SUFFIXES:
            return None
        try:
            st = card.preview.stat()
        except OSError:
            return None
        stamp = f"{card.preview.resolve()}\0{st.st_mtime_ns}\0{st.st_size}".encode()
        source = card.preview
    elif card.cover_image:
        stamp = card.cover_image
        source = card.cover_image
    else:
        return None
    target = folder / f"{hashlib.sha256(stamp).hexdigest()[:40]}.webp"
    if not target.is_file():
        with _thumb_lock:
            if not target.is_file() and not _write_thumbnail(source, target):
                return None
    return FILE_ROUTE + quote(str(target))


# -- the pages: cards from the registries -------------------------------------------------------


def options_of(services: Services) -> Any:
    return services.options


def _networks(services: Services) -> Any:
    """`services.networks` (the LoRA / hypernetwork registry), None if this build has none."""
    return getattr(services, "networks", None)


def _network_common(page: str, info: Any) -> dict[str, Any]:
    filename = Path(str(info.filename))
    created, modified, size = _times(filename)
    user_metadata = dict(getattr(info, "user_metadata", None) or {})
    metadata = dict(getattr(info, "metadata", None) or {})
    description = str(user_metadata.get("description") or getattr(info, "description", "") or "")
    relative = str(getattr(info, "relative", "") or filename.name)
    shorthash = getattr(info, "shorthash", None)
    alias = str(getattr(info, "alias", "") or "")
    terms = tuple(t for t in (relative, alias if alias != info.name else "", shorthash or "") if t)
    mtime = getattr(info, "mtime", None)
    return {
        "page": page,
        "key": str(info.name),
        "name": str(info.name),
        "filename": str(filename),
        "relative": relative,
        "description": description,
        "preview": getattr(info, "preview", None),
        "search_terms": terms,
        "shorthash": shorthash,
        "size": getattr(info, "size", None) or size,
        "created": created,
        "modified": float(mtime) if mtime else modified,
        "error": str(getattr(info, "error", "") or ""),
        "user_metadata": user_metadata,
        "metadata": metadata,
        "source": info,
    }


def lora_cards(services: Services, *, filtered: bool = True) -> list[Card]:
    registry = _networks(services)
    if registry is None:
        return []
    infos = list(registry.loras())
    options = options_of(services)
    preference = str(options.get("lora_preferred_name"))
    multiplier = float(options.get("extra_networks_default_multiplier"))
    show_all = bool(options.get("lora_show_all")) or not filtered
    hide_unknown: Sequence[str] = options.get("lora_hide_unknown_for_versions") or ()
    model_version = model_sd_version(services.engine.model_status().family)
    cards = []
    for info in infos:
        common = _network_common(LORA, info)
        user = common["user_metadata"]
        sd_version = str(user.get("sd version") or "")
        if sd_version not in SD_VERSIONS:
            sd_version = str(getattr(info, "sd_version", "") or "Unknown")
        if not lora_card_shown(sd_version, model_version, show_all=show_all, hide_unknown_for=hide_unknown):
            continue
        tag_name = preferred_lora_name(str(info.name), str(getattr(info, "alias", "") or ""), preference)
        prompt, negative = lora_texts(tag_name, user, multiplier)
        cover = _cover_image(common["metadata"]) if common["preview"] is None else None
        cards.append(Card(**common, prompt=prompt, negative_prompt=negative, sd_version=sd_version, cover_image=cover))
    return cards


def hypernetwork_cards(services: Services) -> list[Card]:
    registry = _networks(services)
    if registry is None:
        return []
    multiplier = float(options_of(services).get("extra_networks_default_multiplier"))
    return [
        Card(**_network_common(HYPERNETWORKS, info), prompt=hypernetwork_text(str(info.name), multiplier))
        for info in registry.hypernetworks()
    ]


def embedding_cards(services: Services) -> list[Card]:
    """The embeddings the loaded model can use (A1111 lists its loaded ones; none before a model
    is loaded). Embeddings bundled in LoRAs have no file and no card."""
    found = services.engine.embeddings()
    if found is None:
        return []
    roots = [Path(services.paths.embeddings_dir)]
    cards = []
    for name, embedding in found.loaded.items():
        filename = getattr(embedding, "filename", None)
        if filename is None:
            continue
        path = Path(filename)
        created, modified, size = _times(path)
        user = read_user_metadata(path)
        relative = _relative(path, roots)
        shorthash = embedding.shorthash() if callable(getattr(embedding, "shorthash", None)) else None
        vectors = getattr(embedding, "vector_count", None)
        cards.append(
            Card(
                page=TEXTUAL_INVERSION,
                key=str(name),
                name=str(name),
                filename=str(path),
                relative=relative,
                description=str(user.get("description") or find_description(path)),
                preview=find_preview(path) if path.suffix.lower() not in PREVIEW_SUFFIXES else path,
                prompt=str(name),
                to_active_box=True,
                search_terms=tuple(t for t in (relative, shorthash or "") if t),
                shorthash=shorthash,
                size=size,
                created=created,
                modified=modified,
                user_metadata=user,
                metadata={"Vectors": vectors} if vectors else {},
                source=embedding,
            )
        )
    return cards


def _relative(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        with contextlib.suppress(ValueError):
            return path.relative_to(root).as_posix()
    return path.name


def checkpoint_cards(services: Services) -> list[Card]:
    roots = list(services.paths.checkpoint_dirs)
    cards = []
    for info in services.registry.checkpoints():
        path = Path(info.filename)
        created, modified, size = _times(path)
        user = read_user_metadata(path)
        cards.append(
            Card(
                page=CHECKPOINTS,
                key=info.title,
                name=info.name if info.is_folder else info.name.rsplit(".", 1)[0],
                filename=str(path),
                relative=_relative(path, roots),
                description=str(user.get("description") or find_description(path)),
                preview=find_preview(path),
                checkpoint=info.title,
                search_terms=tuple(t for t in (info.name, info.sha256 or "") if t),
                shorthash=info.shorthash,
                size=None if info.is_folder else size,
                created=created,
                modified=modified,
                user_metadata=user,
                source=info,
            )
        )
    return cards


def page_cards(services: Services, page: str) -> list[Card]:
    if page == LORA:
        return lora_cards(services)
    if page == HYPERNETWORKS:
        return hypernetwork_cards(services)
    if page == TEXTUAL_INVERSION:
        return embedding_cards(services)
    return checkpoint_cards(services)


def page_dirs(services: Services, page: str) -> list[Path]:
    """The folders a page's files come from (shown when it has none)."""
    paths = services.paths
    if page == CHECKPOINTS:
        return list(paths.checkpoint_dirs)
    if page == TEXTUAL_INVERSION:
        return [paths.embeddings_dir]
    if page == LORA:
        return [paths.lora_dir, paths.lycoris_dir]
    return [paths.hypernetwork_dir]


def refresh_page(services: Services, page: str) -> None:
    """🔄: rescan the page's registry."""
    if page == CHECKPOINTS:
        services.registry.refresh()
    elif page == TEXTUAL_INVERSION:
        services.engine.refresh_embeddings()
    else:
        registry = _networks(services)
        if registry is not None:
            registry.refresh("lora" if page == LORA else "hypernetwork")


def card_look(services: Services) -> CardLook:
    options = options_of(services)
    return CardLook(
        width=int(options.get("extra_networks_card_width") or 0),
        height=int(options.get("extra_networks_card_height") or 0),
        text_scale=float(options.get("extra_networks_card_text_scale") or 1.0),
        show_description=bool(options.get("extra_networks_card_show_desc")),
        hidden_models=str(options.get("extra_networks_hidden_models")),
        dirs_shown=bool(options.get("extra_networks_tree_view_default_enabled")),
    )


def save_card_metadata(services: Services, card: Card, values: Mapping[str, Any]) -> dict[str, Any]:
    """Write the editor's values into the card's user metadata (`<stem>.json`): through the
    network registry for LoRAs and hypernetworks, next to the file for the others. -> the data."""
    data = {**card.user_metadata, **validate_user_metadata(card.page, values)}
    try:
        if card.page in (LORA, HYPERNETWORKS):
            registry = _networks(services)
            if registry is None:
                raise gr.Error("There is no network registry to save to.")
            registry.save_user_metadata(card.source, data)
        else:
            if not card.filename:
                raise gr.Error(f"{card.name} has no file to keep metadata next to.")
            atomic_write_json(user_metadata_path(Path(card.filename)), data)
    except (OSError, SdWebuiError) as exc:
        raise gr.Error(f"Could not save the metadata of {html.escape(card.name)}: {html.escape(str(exc))}") from exc
    return data
