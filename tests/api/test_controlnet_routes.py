"""The /controlnet routes (modules.api.routes.controlnet) on a small app with a fake provider:
the extension's shapes (scripts/api.py @56cec5b2), its 422 texts, image decoding, auth."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from modules.api.errors import install_error_handlers
from modules.api.routes import controlnet
from modules.api.security import AuthMiddleware
from modules.core.controlnet import PreprocessorInfo, Slider
from modules.core.errors import NotFoundError

CANNY = PreprocessorInfo(
    "canny",
    tags=("Canny",),
    slider_1=Slider("Low Threshold", 100, 1, 255, 1),
    slider_2=Slider("High Threshold", 200, 1, 255, 1),
)
PREPROCESSORS = (
    PreprocessorInfo("none", tags=("InstructP2P",)),
    CANNY,
    PreprocessorInfo("invert", label="invert (from white bg & black line)", tags=("Canny", "Lineart"), resolution=None),
    PreprocessorInfo(
        "inpaint_only", tags=("Inpaint",), model_free=False, resolution=None, accepts_mask=True, requires_mask=True
    ),
    PreprocessorInfo("depth_midas", tags=("Depth",)),
)
MODELS = ["control_v11p_sd15_canny [d14c016b]", "control_v11f1p_sd15_depth [cfd03158]"]


@dataclass
class FakeProvider:
    models: list[str] = field(default_factory=lambda: list(MODELS))
    count: int = 3
    refreshed: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def list_models(self) -> list[str]:
        return list(self.models)

    def refresh_models(self) -> None:
        self.refreshed += 1

    def preprocessors(self) -> Sequence[PreprocessorInfo]:
        return PREPROCESSORS

    def unit_count(self) -> int:
        return self.count

    def run_preprocessor(
        self,
        module: str,
        image: Image.Image,
        *,
        mask: Image.Image | None,
        resolution: int,
        threshold_a: float,
        threshold_b: float,
        low_vram: bool,
    ) -> Image.Image:
        if module == "depth_midas":
            raise NotFoundError("depth_midas needs dpt_hybrid-midas-501f0c75.pt in models/ControlNetAnnotators/midas")
        self.calls.append(
            {
                "module": module,
                "mode": image.mode,
                "size": image.size,
                "pixel": image.getpixel((0, 0)),
                "mask": None if mask is None else (mask.mode, mask.getpixel((0, 0))),
                "resolution": resolution,
                "threshold_a": threshold_a,
                "threshold_b": threshold_b,
                "low_vram": low_vram,
            }
        )
        return ImageOps.invert(image)


def make_app(provider: FakeProvider | None) -> FastAPI:
    app = FastAPI()
    app.state.services = SimpleNamespace(options={"samples_format": "png"}, controlnet=provider)
    install_error_handlers(app)
    app.include_router(controlnet.router)
    return app


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def client(provider: FakeProvider) -> TestClient:
    return TestClient(make_app(provider))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


RED = Image.new("RGB", (24, 16), (200, 10, 30))


# -- listings ----------------------------------------------------------------------------------


def test_version_is_the_extensions_api_version(client: TestClient) -> None:
    response = client.get("/controlnet/version")
    assert response.status_code == 200
    assert response.json() == {"version": 3}


def test_model_list_rescans_unless_told_not_to(client: TestClient, provider: FakeProvider) -> None:
    assert client.get("/controlnet/model_list").json() == {"model_list": MODELS}
    assert provider.refreshed == 1
    assert client.get("/controlnet/model_list?update=false").json() == {"model_list": MODELS}
    assert provider.refreshed == 1
    client.get("/controlnet/model_list?update=true")
    assert provider.refreshed == 2


def test_module_list_names_and_details(client: TestClient) -> None:
    body = client.get("/controlnet/module_list").json()
    assert body["module_list"] == ["none", "canny", "invert", "inpaint_only", "depth_midas"]
    assert body["module_detail"]["canny"] == {
        "model_free": False,
        "sliders": [
            {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    assert body["module_detail"]["invert"] == {"model_free": False, "sliders": []}
    aliased = client.get("/controlnet/module_list?alias_names=true").json()
    assert aliased["module_list"][2] == "invert (from white bg & black line)"
    assert set(aliased["module_detail"]) == set(aliased["module_list"])


def test_control_types_shape(client: TestClient) -> None:
    body = client.get("/controlnet/control_types").json()
    assert list(body) == ["control_types"]
    types = body["control_types"]
    assert list(types) == ["All", "Canny", "Depth", "Inpaint", "InstructP2P", "Lineart"]
    assert types["Canny"] == {
        "module_list": ["none", "canny", "invert (from white bg & black line)"],
        "model_list": ["None", "control_v11p_sd15_canny [d14c016b]"],
        "default_option": "canny",
        "default_model": "control_v11p_sd15_canny [d14c016b]",
    }
    assert types["All"]["model_list"] == ["None", *MODELS]


def test_settings_unit_count(client: TestClient, provider: FakeProvider) -> None:
    provider.count = 4
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 4}


def test_no_provider_is_a_503() -> None:
    response = TestClient(make_app(None)).get("/controlnet/model_list")
    assert response.status_code == 503
    assert response.json()["detail"] == "ControlNet is not available"


# -- detect ------------------------------------------------------------------------------------


def test_detect_runs_the_preprocessor_with_the_slider_defaults(client: TestClient, provider: FakeProvider) -> None:
    response = client.post(
        "/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [png_b64(RED)]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["info", "images"] and body["info"] == "Success"
    assert len(body["images"]) == 1
    out = decode(body["images"][0])
    assert out.format == "PNG" and out.size == (24, 16) and out.getpixel((0, 0)) == (55, 245, 225)
    assert provider.calls == [
        {
            "module": "canny",
            "mode": "RGB",
            "size": (24, 16),
            "pixel": (200, 10, 30),
            "mask": None,
            "resolution": 512,
            "threshold_a": 100,
            "threshold_b": 200,
            "low_vram": False,
        }
    ]


def test_detect_as_webuiapi_sends_it(client: TestClient, provider: FakeProvider) -> None:
    """webuiapi's controlnet_detect: data URLs under `controlnet_images`, res 512, thresholds 64."""
    images = ["data:image/png;base64," + png_b64(RED), "data:image/png;base64," + png_b64(RED.resize((8, 8)))]
    response = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_images": images,
            "controlnet_processor_res": 512,
            "controlnet_threshold_a": 64,
            "controlnet_threshold_b": 64,
        },
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2
    assert [(c["size"], c["threshold_a"], c["threshold_b"]) for c in provider.calls] == [
        ((24, 16), 64.0, 64.0),
        ((8, 8), 64.0, 64.0),
    ]


def test_detect_by_label_and_hidden_sliders(client: TestClient, provider: FakeProvider) -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent: white, as the extension's HWC3
    response = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "invert (from white bg & black line)",
            "controlnet_input_images": [png_b64(rgba)],
            "controlnet_processor_res": 300,
            "controlnet_threshold_a": 7,
            "low_vram": True,
        },
    )
    assert response.status_code == 200, response.text
    (call,) = provider.calls
    assert (call["module"], call["mode"], call["pixel"]) == ("invert", "RGB", (255, 255, 255))
    assert (call["resolution"], call["threshold_a"], call["threshold_b"], call["low_vram"]) == (300, 0.5, 0.5, True)


def test_detect_masks_reach_a_preprocessor_that_takes_them(client: TestClient, provider: FakeProvider) -> None:
    mask = Image.new("RGB", (24, 16), (77, 0, 0))
    response = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "inpaint_only",
            "controlnet_input_images": [png_b64(RED)],
            "controlnet_masks": [png_b64(mask)],
        },
    )
    assert response.status_code == 200, response.text
    assert provider.calls[0]["mask"] == ("L", 77)
    assert provider.calls[0]["resolution"] == 512  # no resolution slider: a placeholder it does not read
    # A mask for a preprocessor that takes none is left out.
    provider.calls.clear()
    client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_input_images": [png_b64(RED)],
            "controlnet_masks": [png_b64(mask)],
        },
    )
    assert provider.calls[0]["mask"] is None


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"controlnet_module": "nope", "controlnet_input_images": ["x"]}, "Module not available"),
        ({"controlnet_module": "canny"}, "No image selected"),
        ({"controlnet_module": "canny", "controlnet_input_images": []}, "No image selected"),
        (
            {"controlnet_module": "inpaint_only", "controlnet_input_images": ["x"]},
            "Preprocessor inpaint_only requires `controlnet_masks` param.",
        ),
    ],
)
def test_detect_422s_are_the_extensions(
    client: TestClient, provider: FakeProvider, body: dict[str, Any], detail: str
) -> None:
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "HTTPException"
    assert payload["detail"] == [{"loc": ["body"], "msg": detail, "type": "value_error"}]
    assert payload["errors"] == detail
    assert provider.calls == []


def test_detect_bad_images_and_bodies(client: TestClient, provider: FakeProvider) -> None:
    response = client.post(
        "/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [png_b64(RED), "aGVsbG8="]}
    )
    assert response.status_code == 422
    assert response.json()["errors"].startswith("controlnet_input_images[1]: not a readable image")
    assert provider.calls == []  # every image is decoded before anything runs
    response = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": "abc"})
    assert response.status_code == 422
    assert response.json()["error"] == "RequestValidationError"


def test_detect_missing_weights_is_the_providers_404(client: TestClient) -> None:
    response = client.post(
        "/controlnet/detect", json={"controlnet_module": "depth_midas", "controlnet_input_images": [png_b64(RED)]}
    )
    assert response.status_code == 404
    assert "models/ControlNetAnnotators/midas" in response.json()["detail"]


# -- security ----------------------------------------------------------------------------------


def test_the_app_wide_auth_covers_the_controlnet_routes(provider: FakeProvider) -> None:
    app = make_app(provider)
    app.add_middleware(AuthMiddleware, api_credentials=(("api", "secret"),), ui_credentials=())
    client = TestClient(app)
    for method, path in (("GET", "/controlnet/model_list"), ("POST", "/controlnet/detect")):
        assert client.request(method, path, json={}).status_code == 401
    assert client.get("/controlnet/version", auth=("api", "wrong")).status_code == 401
    assert client.get("/controlnet/version", auth=("api", "secret")).json() == {"version": 3}
    assert provider.refreshed == 0 and provider.calls == []
