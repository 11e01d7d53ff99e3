"""The extra-networks panel's logic (modules/ui/extra_network_*.py) without a browser: the text a
card toggles in the prompts, the Lora page's filter and names, the cards' HTML, the metadata
editor's checks and saving, previews served as thumbnails, and cards built from fake registries
and a real embeddings database."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import gradio as gr
import pytest
from PIL import Image

from modules.core.hashes import HashCache
from modules.core.option_defaults import default_option_infos
from modules.core.options import Options
from modules.core.results import ModelStatus
from modules.ui import extra_network_cards as ec
from modules.ui import extra_network_pages as ep
from modules.ui import extra_networks as en
from modules.ui.extra_network_cards import Card, card_click, toggle_in_prompt
from tests.fixtures import embedding_files as ef

# -- the texts a card writes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1"), (0.8, "0.8"), (1.25, "1.25"), (0.1 + 0.2, "0.30000000000000004")]
)
def test_weights_are_written_as_a1111s_javascript_writes_numbers(value: float, text: str) -> None:
    assert ec.format_weight(value) == text


def test_lora_tag_uses_the_default_multiplier_then_the_activation_text_and_negative_text() -> None:
    assert ec.lora_texts("x", {}, 1.0) == ("<lora:x:1>", "")
    assert ec.lora_texts("x", {}, 0.7) == ("<lora:x:0.7>", "")
    user = {"activation text": "red style", "negative text": "blurry", "preferred weight": 0.0}
    assert ec.lora_texts("x", user, 0.7) == ("<lora:x:0.7> red style", "(blurry:1)")
    # a preferred weight (non-zero) wins over the default
    assert ec.lora_texts("x", {"preferred weight": 0.45}, 1.0) == ("<lora:x:0.45>", "")
    assert ec.hypernetwork_text("hn", 0.5) == "<hypernet:hn:0.5>"


def test_lora_name_is_the_alias_unless_filename_is_preferred() -> None:
    assert ec.preferred_lora_name("x", "x_alias", "Alias from file") == "x_alias"
    assert ec.preferred_lora_name("x", "x_alias", "Filename") == "x"
    assert ec.preferred_lora_name("x", "", "Alias from file") == "x"


# -- clicking a card: toggle in the prompts ---------------------------------------------------------


def test_a_tag_is_appended_with_the_separator_and_removed_by_a_second_click() -> None:
    once = toggle_in_prompt("a cat", "<lora:x:1>")
    assert once == "a cat <lora:x:1>"
    assert toggle_in_prompt(once, "<lora:x:1>") == "a cat"
    # into an empty prompt without a leading separator, and out again to nothing
    assert toggle_in_prompt("", "<lora:x:1>") == "<lora:x:1>"
    assert toggle_in_prompt("<lora:x:1>", "<lora:x:1>") == ""
    # the separator option
    assert toggle_in_prompt("a cat", "<lora:x:1>", ", ") == "a cat, <lora:x:1>"
    assert toggle_in_prompt("a cat, <lora:x:1>", "<lora:x:1>", ", ") == "a cat"


def test_removal_finds_the_tag_at_any_weight_with_its_activation_text() -> None:
    prompt = "a cat <lora:x:0.5:0.3> red style, on a mat"
    assert toggle_in_prompt(prompt, "<lora:x:1> red style") == "a cat, on a mat"
    # the tag at the start: the separator after it goes
    assert toggle_in_prompt("<lora:x:0.8> a cat", "<lora:x:1>") == "a cat"
    # activation text edited away: only the tag goes
    assert toggle_in_prompt("a <lora:x:1> blue", "<lora:x:1> red style") == "a blue"


def test_removal_leaves_other_networks_alone() -> None:
    prompt = "a <lora:xy:1> <hypernet:x:1> <lora:X:1>"
    # another name, another kind, another case: all kept, so the click adds
    assert toggle_in_prompt(prompt, "<lora:x:1>") == prompt + " <lora:x:1>"


def test_an_embedding_name_is_removed_only_as_a_whole_word() -> None:
    assert toggle_in_prompt("ugly, EasyNegative", "Easy") == "ugly, EasyNegative Easy"
    assert toggle_in_prompt("ugly, Easy, bad", "Easy") == "ugly,, bad"  # the separator before it goes (A1111)
    assert toggle_in_prompt("Easy bad", "Easy") == "bad"
    # regex characters in a name are taken literally
    assert toggle_in_prompt("a xzy", "x.y") == "a xzy x.y"
    assert toggle_in_prompt("a b x+y", "x+y") == "a b"
    # inside emphasis it is still the embedding (A1111 finds it there): removed
    assert toggle_in_prompt("a (x+y:1.2) b", "x+y") == "a (:1.2) b"
    # a network of that name is not the embedding
    assert toggle_in_prompt("a <lora:Easy:1>", "Easy") == "a <lora:Easy:1> Easy"


def test_negative_text_is_removed_at_any_weight() -> None:
    assert toggle_in_prompt("ugly", "(blurry:1)", negative=True) == "ugly (blurry:1)"
    assert toggle_in_prompt("ugly (blurry:1.3)", "(blurry:1)", negative=True) == "ugly"


def test_card_click_routes_texts_to_the_boxes() -> None:
    lora = Card(page=ec.LORA, key="x", name="x", prompt="<lora:x:1> red", negative_prompt="(blurry:1)")
    prompt, negative = card_click(lora, "a cat", "ugly")
    assert (prompt, negative) == ("a cat <lora:x:1> red", "ugly (blurry:1)")
    assert card_click(lora, prompt, negative) == ("a cat", "ugly")
    ti = Card(page=ec.TEXTUAL_INVERSION, key="e", name="e", prompt="EasyNeg", to_active_box=True)
    assert card_click(ti, "a cat", "ugly") == ("a cat EasyNeg", "ugly")
    assert card_click(ti, "a cat", "ugly", negative_box=True) == ("a cat", "ugly EasyNeg")
    hn = Card(page=ec.HYPERNETWORKS, key="h", name="h", prompt="<hypernet:h:1>")
    # only embeddings follow the focused box
    assert card_click(hn, "a", "b", negative_box=True) == ("a <hypernet:h:1>", "b")
    assert card_click(hn, None, None, separator=", ") == ("<hypernet:h:1>", "")  # type: ignore[arg-type]


# -- which LoRAs the page shows, the tab order --------------------------------------------------------


def test_lora_page_shows_networks_for_the_loaded_model_version() -> None:
    def shown(version: str, model: str | None, show_all: bool = False, hide: tuple[str, ...] = ()) -> bool:
        return ec.lora_card_shown(version, model, show_all=show_all, hide_unknown_for=hide)

    assert shown("SD1", "SD1") and not shown("SDXL", "SD1") and not shown("SD1", "SDXL")
    assert shown("SDXL", "SD1", show_all=True)
    assert shown("SDXL", None)  # no model loaded: everything
    assert shown("Unknown", "SD1") and not shown("Unknown", "SD1", hide=("SD1",))
    assert [ec.model_sd_version(x) for x in ("SD 1.x", "SD 2.x inpainting", "SDXL base", "SDXL refiner", None)] == [
        "SD1",
        "SD2",
        "SDXL",
        "SDXL",
        None,
    ]


def test_tab_order_follows_the_option() -> None:
    pages = (ec.TEXTUAL_INVERSION, ec.HYPERNETWORKS, ec.CHECKPOINTS, ec.LORA)
    assert ec.order_pages(pages, "") == list(pages)
    assert ec.order_pages(pages, "lora, checkpoints") == [
        ec.LORA,
        ec.CHECKPOINTS,
        ec.TEXTUAL_INVERSION,
        ec.HYPERNETWORKS,
    ]


# -- HTML ---------------------------------------------------------------------------------------------


def test_card_html_escapes_what_files_say_and_carries_search_and_sort_data() -> None:
    card = Card(
        page=ec.LORA,
        key='x"<b>',
        name="<img src=x onerror=alert(1)>",
        relative="sub/x.safetensors",
        description="<script>bad()</script>",
        search_terms=("sub/x.safetensors", "ABCDEF"),
        created=10.7,
        modified=20.2,
    )
    text = ec.card_html(card, 3, None, ec.CardLook())
    assert "<img src=x" not in text and "<script>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert 'data-key="x&quot;&lt;b&gt;"' in text
    assert 'data-sort-default="3"' in text and 'data-sort-path="sub/x.safetensors"' in text
    assert 'data-sort-date_created="10"' in text and 'data-sort-date_modified="20"' in text
    assert "abcdef" in text  # search terms lowercased
    assert "sdw-en-no-preview" in text
    assert "description" not in ec.card_html(card, 0, None, ec.CardLook(show_description=False)).split("actions")[1]


def test_cards_in_hidden_folders_are_for_searches_only() -> None:
    hidden = Card(page=ec.LORA, key="h", name="h", relative=".trash/h.safetensors")
    assert "search_only" in ec.card_html(hidden, 0, None, ec.CardLook())
    assert "search_only" not in ec.card_html(hidden, 0, None, ec.CardLook(hidden_models="Always"))
    assert ec.card_html(hidden, 0, None, ec.CardLook(hidden_models="Never")) == ""


def test_page_html_has_directory_buttons_or_says_where_files_go() -> None:
    cards = [
        Card(page=ec.LORA, key="a", name="a", relative="styles/anime/a.safetensors"),
        Card(page=ec.LORA, key="b", name="b", relative="b.safetensors"),
    ]
    text = ec.cards_html("txt2img", ec.LORA, cards, lambda c: None, ec.CardLook())
    assert 'id="txt2img_lora_cards"' in text and 'id="txt2img_lora_dirs"' in text
    assert 'data-path="styles"' in text and 'data-path="styles/anime"' in text
    assert text.count('class="card sdw-en-card') == 2
    assert 'data-click="click"' in text
    assert 'data-click="select"' in ec.cards_html("img2img", ec.CHECKPOINTS, cards, lambda c: None, ec.CardLook())
    empty = ec.cards_html("txt2img", ec.LORA, [], lambda c: None, ec.CardLook(), empty_dirs=[Path("/m/Lora")])
    assert "Nothing here" in empty and "<li>/m/Lora</li>" in empty and "sdw-en-dirs" not in empty


def test_controls_have_a1111s_ids_and_the_default_order() -> None:
    text = ec.controls_html("img2img", ec.LORA, sort_field="Date Modified", descending=True, dirs_shown=False)
    for suffix in (
        "extra_search",
        "extra_sort_path",
        "extra_sort_name",
        "extra_sort_date_created",
        "extra_sort_date_modified",
        "extra_sort_dir",
        "extra_tree_view",
        "extra_refresh",
    ):
        assert f'id="img2img_lora_{suffix}"' in text
    assert (
        'data-sortkey="date_modified" title="Sort by date modified" class="sdw-en-control sdw-en-sort sdw-en-enabled"'
        in text
    )
    assert 'data-sortdir="Descending"' in text
    assert 'class="sdw-en-control sdw-en-tree"' in text


# -- the metadata editor ------------------------------------------------------------------------------


def test_editor_values_are_checked() -> None:
    ok = ec.validate_user_metadata(
        ec.LORA,
        {
            "description": "d",
            "notes": "n\nm",
            "sd version": "SDXL",
            "activation text": " red style ",
            "preferred weight": 0.8,
            "negative text": "",
        },
    )
    assert ok == {
        "description": "d",
        "notes": "n\nm",
        "sd version": "SDXL",
        "activation text": "red style",
        "preferred weight": 0.8,
        "negative text": "",
    }
    assert ec.validate_user_metadata(ec.CHECKPOINTS, {"description": "d", "notes": None}) == {
        "description": "d",
        "notes": "",
    }
    for bad in (
        {"sd version": "SD3"},
        {"preferred weight": -0.1},
        {"preferred weight": 2.5},
        {"preferred weight": float("nan")},
        {"preferred weight": "heavy"},
        {"activation text": "two\nlines"},
        {"description": 5},
        {"notes": "nul\x00"},
    ):
        with pytest.raises(gr.Error):
            ec.validate_user_metadata(ec.LORA, bad)


@dataclass
class FakeInfo:
    """What the panel reads of a `NetworkInfo`."""

    name: str
    filename: Path
    relative: str = ""
    alias: str = ""
    sd_version: str = "SD1"
    user_metadata: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    preview: Path | None = None
    description: str = ""
    mtime: float = 0.0
    size: int = 1
    error: str = ""
    shorthash: str | None = "0123456789ab"


class FakeNetworks:
    def __init__(self, loras: list[FakeInfo], hypernetworks: list[FakeInfo] | None = None) -> None:
        self.items = loras
        self.hns = hypernetworks or []
        self.saved: list[tuple[str, dict[str, Any]]] = []
        self.refreshed: list[str] = []
        self.fail = False

    def loras(self) -> list[FakeInfo]:
        return self.items

    def hypernetworks(self) -> list[FakeInfo]:
        return self.hns

    def refresh(self, kind: str | None = None) -> None:
        self.refreshed.append(str(kind))

    def save_user_metadata(self, info: FakeInfo, data: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("read-only file system")
        self.saved.append((info.name, data))


def _services(tmp_path: Path, networks: FakeNetworks | None = None, family: str | None = "SD 1.x") -> Any:
    options = Options(default_option_infos(), None)
    checkpoints = tmp_path / "Stable-diffusion"
    checkpoints.mkdir(exist_ok=True)
    return types.SimpleNamespace(
        options=options,
        engine=types.SimpleNamespace(model_status=lambda: ModelStatus(family=family)),
        registry=types.SimpleNamespace(checkpoints=list, refresh=lambda: None),
        paths=types.SimpleNamespace(
            checkpoint_dirs=(checkpoints,),
            lora_dir=tmp_path / "Lora",
            lycoris_dir=tmp_path / "LyCORIS",
            hypernetwork_dir=tmp_path / "hypernetworks",
            embeddings_dir=tmp_path / "embeddings",
        ),
        networks=networks,
    )


def test_lora_cards_from_the_registry(tmp_path: Path) -> None:
    networks = FakeNetworks(
        [
            FakeInfo("x", tmp_path / "x.safetensors", "x.safetensors", alias="x_alias", description="from file"),
            FakeInfo(
                "y",
                tmp_path / "y.safetensors",
                "y.safetensors",
                user_metadata={"activation text": "blue", "preferred weight": 0.6, "description": "mine"},
            ),
            FakeInfo("xl", tmp_path / "xl.safetensors", "xl.safetensors", sd_version="SDXL"),
            # the user's sd version wins over the file's
            FakeInfo(
                "z", tmp_path / "z.safetensors", "z.safetensors", sd_version="SDXL", user_metadata={"sd version": "SD1"}
            ),
        ]
    )
    services = _services(tmp_path, networks)
    services.options.set("extra_networks_default_multiplier", 0.9)
    cards = {c.key: c for c in ep.lora_cards(services)}
    assert set(cards) == {"x", "y", "z"}
    assert cards["x"].prompt == "<lora:x_alias:0.9>" and cards["x"].description == "from file"
    assert cards["y"].prompt == "<lora:y:0.6> blue" and cards["y"].description == "mine"
    assert "x_alias" in cards["x"].search_terms
    services.options.set("lora_preferred_name", "Filename")
    services.options.set("lora_show_all", True)
    cards = {c.key: c for c in ep.lora_cards(services)}
    assert cards["x"].prompt == "<lora:x:0.9>" and "xl" in cards
    # the panel still works with no registry at all
    assert ep.lora_cards(_services(tmp_path, None)) == []


def test_saving_metadata_goes_through_the_registry_or_next_to_the_file(tmp_path: Path) -> None:
    networks = FakeNetworks([FakeInfo("x", tmp_path / "x.safetensors", user_metadata={"keep": 1})])
    services = _services(tmp_path, networks)
    card = ep.lora_cards(services)[0]
    values = {"description": "d", "notes": "", "sd version": "SD1", "activation text": "red", "preferred weight": 0.5}
    data = ep.save_card_metadata(services, card, values)
    assert networks.saved == [("x", data)]
    assert data["keep"] == 1 and data["activation text"] == "red" and data["preferred weight"] == 0.5
    networks.fail = True
    with pytest.raises(gr.Error, match="read-only"):
        ep.save_card_metadata(services, card, values)
    with pytest.raises(gr.Error):
        ep.save_card_metadata(services, card, {**values, "preferred weight": 9})

    model = tmp_path / "Stable-diffusion" / "m.safetensors"
    model.write_bytes(b"0")
    checkpoint = Card(page=ec.CHECKPOINTS, key="m", name="m", filename=str(model))
    ep.save_card_metadata(services, checkpoint, {"description": "a model", "notes": "n"})
    assert json.loads((model.parent / "m.json").read_text(encoding="utf-8")) == {"description": "a model", "notes": "n"}
    assert ep.read_user_metadata(model) == {"description": "a model", "notes": "n"}


def test_page_cards_finds_a_card_or_says_it_is_gone(tmp_path: Path) -> None:
    services = _services(tmp_path, FakeNetworks([FakeInfo("x", tmp_path / "x.safetensors")]))
    store = en.PageCards()
    store.store("txt2img", ec.LORA, ep.lora_cards(services))
    assert store.find(services, "txt2img", ec.LORA, "x").name == "x"
    # not shown in this tab yet: looked up again
    assert store.find(services, "img2img", ec.LORA, "x").name == "x"
    with pytest.raises(gr.Error):
        store.find(services, "txt2img", ec.LORA, "../../etc/passwd")


# -- files next to a network, previews ----------------------------------------------------------------


def _png(path: Path, size: tuple[int, int] = (600, 900), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_sidecar_files_are_found(tmp_path: Path) -> None:
    model = tmp_path / "x.safetensors"
    model.write_bytes(b"0")
    assert ep.find_preview(model) is None and ep.find_description(model) == ""
    preview = _png(tmp_path / "x.preview.jpeg")
    assert ep.find_preview(model) == preview
    plain = _png(tmp_path / "x.png")
    assert ep.find_preview(model) == plain  # `<stem>.png` first, as A1111
    (tmp_path / "x.description.txt").write_text("described", encoding="utf-8")
    assert ep.find_description(model) == "described"
    (tmp_path / "x.json").write_text("[not a dict]", encoding="utf-8")
    assert ep.read_user_metadata(model) == {}


def test_previews_are_served_as_thumbnails_from_gradios_folder(tmp_path: Path) -> None:
    folder = tmp_path / "gradio"
    card = Card(page=ec.LORA, key="x", name="x", preview=_png(tmp_path / "x.png", (1200, 1800)))
    url = ep.thumbnail_url(card, folder)
    assert url is not None and url.startswith("gradio_api/file=")
    thumb = Path(unquote(url.removeprefix("gradio_api/file=")))
    assert thumb.parent == folder and thumb.suffix == ".webp"
    with Image.open(thumb) as image:
        assert image.size == (512, 768)
    assert ep.thumbnail_url(card, folder) == url  # made once
    # a new version of the preview gets a new thumbnail
    _png(tmp_path / "x.png", (300, 300), (0, 0, 255))
    assert ep.thumbnail_url(card, folder) != url
    # not an image, not readable, not there: no preview
    (tmp_path / "bad.png").write_bytes(b"not a png")
    text = tmp_path / "notes.txt"
    text.write_text("x", encoding="utf-8")
    for preview in (tmp_path / "bad.png", text, tmp_path / "missing.png"):
        assert ep.thumbnail_url(Card(page=ec.LORA, key="b", name="b", preview=preview), folder) is None
    assert ep.thumbnail_url(Card(page=ec.LORA, key="n", name="n"), folder) is None


def test_embedded_cover_image_is_a_preview(tmp_path: Path) -> None:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 96), (0, 200, 0)).save(buffer, format="PNG")
    cover = json.dumps([base64.b64encode(buffer.getvalue()).decode()])
    networks = FakeNetworks([FakeInfo("x", tmp_path / "x.safetensors", metadata={"ssmd_cover_images": cover})])
    card = ep.lora_cards(_services(tmp_path, networks))[0]
    assert card.cover_image is not None
    assert ep.thumbnail_url(card, tmp_path / "gradio") is not None


def test_embedding_cards_list_what_the_loaded_model_can_use(tmp_path: Path) -> None:
    from modules.models.embeddings import EmbeddingDatabase
    from modules.models.families import SD1

    root = tmp_path / "embeddings"
    ef.write_a1111_pt(root / "good.pt", ef.vectors(2, 768))
    ef.write_a1111_pt(root / "sub" / "wide.pt", ef.vectors(1, 1024))  # an SD2 embedding: skipped
    _png(root / "good.preview.png")
    (root / "good.txt").write_text("a good one", encoding="utf-8")
    database = EmbeddingDatabase([root], HashCache(tmp_path / "cache.json"))
    services = _services(tmp_path)
    services.paths.embeddings_dir = root
    services.engine.embeddings = lambda: database.for_model(SD1)
    cards = ep.embedding_cards(services)
    assert [c.key for c in cards] == ["good"]
    good = cards[0]
    assert good.prompt == "good" and good.to_active_box and good.description == "a good one"
    assert good.preview == root / "good.preview.png" and good.relative == "good.pt"
    assert good.shorthash is not None and good.shorthash in good.search_terms
    # no model loaded: none (the engine has no embeddings to offer)
    services.engine.embeddings = lambda: None
    assert ep.embedding_cards(services) == []
