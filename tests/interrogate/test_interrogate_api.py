"""POST /sdapi/v1/interrogate: A1111's `{"caption": ...}` with fixture weights in the A1111 model
folders; A1111's 404s for an unknown model and a missing image; a 404 naming the file and folder
when the weights are not there. No network."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modules.app import build_services, create_app
from modules.core.settings import parse_settings
from modules.engine.interrogation import Interrogator
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs
from tests.interrogate.conftest import Weights, copy_weights

TAGS = "1girl, back\\\\slash, hat \\(object\\), long hair, smile, solo"


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE = _b64(Image.new("RGB", (40, 30), (90, 90, 200)))


def _app(data: Path) -> tuple[Services, FastAPI]:
    services = build_services(parse_settings(["--data-dir", str(data), "--nowebui"], {}), data, {})
    assert isinstance(services.engine.interrogator, Interrogator)  # the composition root wires it
    app = create_app(services)
    return services, app


@pytest.fixture(scope="module")
def client(weights: Weights, module_tmp: ModuleTempDirs) -> Iterator[TestClient]:
    data = copy_weights(weights, module_tmp.mktemp("api-data"), "torch_deepdanbooru", "BLIP", "CLIP", "interrogate")
    services, app = _app(data)
    with TestClient(app) as test_client:
        yield test_client
    services.worker.shutdown()


@pytest.fixture(scope="module")
def bare_client(module_tmp: ModuleTempDirs) -> Iterator[tuple[TestClient, Path]]:
    data = module_tmp.mktemp("api-bare")
    services, app = _app(data)
    with TestClient(app) as test_client:
        yield test_client, data
    services.worker.shutdown()


def test_deepdanbooru_answers_a1111s_shape(client: TestClient, no_network: None) -> None:
    response = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": "deepdanbooru"})
    assert response.status_code == 200, response.text
    assert response.json() == {"caption": TAGS}


def test_clip_is_the_default_model(client: TestClient, no_network: None) -> None:
    response = client.post("/sdapi/v1/interrogate", json={"image": f"data:image/png;base64,{IMAGE}"})
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    assert set(response.json()) == {"caption"}
    assert caption.count(", ") >= 6 and caption.endswith(("impressionism", "cubism", "surrealism"))


def test_unknown_model_and_missing_image_are_a1111s_404s(client: TestClient) -> None:
    response = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": "wd14-vit"})
    assert response.status_code == 404
    assert response.json()["detail"] == "Model not found" and set(response.json()) >= {"error", "detail"}
    for body in ({"model": "clip"}, {"image": None}, {"image": "  "}):
        response = client.post("/sdapi/v1/interrogate", json=body)
        assert response.status_code == 404 and response.json()["detail"] == "Image not found"


def test_missing_weights_are_a_clear_404(bare_client: tuple[TestClient, Path], no_network: None) -> None:
    client, data = bare_client
    response = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": "deepdanbooru"})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "model-resnet_custom_v3.pt" in detail and str(data / "models" / "torch_deepdanbooru") in detail
    response = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": "clip"})
    assert response.status_code == 404
    assert "model_base_caption_capfilt_large.pth" in response.json()["detail"]
    assert str(data / "models" / "BLIP") in response.json()["detail"]


def test_a_bad_image_is_a_validation_error(client: TestClient) -> None:
    response = client.post("/sdapi/v1/interrogate", json={"image": "bm90IGFuIGltYWdl", "model": "deepdanbooru"})
    assert 400 <= response.status_code < 500 and response.status_code != 404


def test_weights_put_in_place_later_are_found(bare_client: tuple[TestClient, Path], weights: Weights) -> None:
    client, data = bare_client
    target = data / "models" / "torch_deepdanbooru"
    shutil.copytree(weights.models / "torch_deepdanbooru", target, dirs_exist_ok=True)
    try:
        response = client.post("/sdapi/v1/interrogate", json={"image": IMAGE, "model": "deepdanbooru"})
        assert response.status_code == 200 and response.json() == {"caption": TAGS}
    finally:
        shutil.rmtree(target)
