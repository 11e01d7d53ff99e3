"""The training routes' contract: A1111's create/train replies and errors, our LoRA route and the
status route, and the generation policy while a run holds the worker. (Runs that really train are
in tests/training and the route round trips at the end of this file.)"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modules.services import Services

API_CHECKPOINTS = {"sd1": "sd1.safetensors"}


def _block_worker(services: Services) -> threading.Event:
    """Hold the worker with a job that waits for the returned event."""
    release = threading.Event()
    started = threading.Event()

    def hold(_ctx: Any) -> None:
        started.set()
        release.wait(30)

    services.worker.submit(hold, description="hold")
    assert started.wait(10)
    return release


def test_train_embedding_with_an_unknown_key_says_so_in_a1111_text_and_status(client: TestClient) -> None:
    r = client.post("/sdapi/v1/train/embedding", json={"embedding_name": "x", "id_task": 0, "bogus": 1})
    assert r.status_code == 422
    body = r.json()
    assert body["info"].startswith("train embedding complete: filename:  error: ")
    assert "unexpected keyword argument 'bogus'" in body["info"]
    assert body["error"] and body["detail"]  # A1111's error shape too


def test_train_hypernetwork_needs_an_existing_dataset_directory(client: TestClient, tmp_path: Path) -> None:
    r = client.post(
        "/sdapi/v1/train/hypernetwork",
        json={"hypernetwork_name": "h", "data_root": str(tmp_path / "missing"), "steps": 1},
    )
    assert r.status_code == 400
    assert "does not exist" in r.json()["detail"]
    assert r.json()["info"].startswith("train embedding complete: filename:  error: ")


def test_a_value_of_the_wrong_type_is_a_422_naming_the_field(client: TestClient, tmp_path: Path) -> None:
    r = client.post(
        "/sdapi/v1/train/embedding",
        json={"embedding_name": "x", "data_root": str(tmp_path), "batch_size": "many"},
    )
    assert r.status_code == 422
    assert "batch_size" in r.json()["errors"]


def test_lora_route_validates_before_queueing(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/sdapi/v1/train/lora", json={"name": "l"})
    assert r.status_code == 422 and "data_root" in r.json()["errors"]
    r = client.post("/sdapi/v1/train/lora", json={"name": "l", "data_root": str(tmp_path), "resolution": "32"})
    assert r.status_code == 422 and "resolution" in r.json()["errors"]


def test_status_is_404_for_an_unknown_run(client: TestClient) -> None:
    r = client.get("/sdapi/v1/train/status", params={"task_id": "task(nope)"})
    assert r.status_code == 404


def test_refuse_policy_answers_409_while_a_run_waits_and_queues_again_after(
    client: TestClient, api_services: Services, tmp_path: Path
) -> None:
    from modules.engine.training.service import POLICY_OPTION, POLICY_REFUSE, POLICY_WAIT

    release = _block_worker(api_services)
    try:
        r = client.post("/sdapi/v1/train/lora", json={"name": "queued", "data_root": str(tmp_path), "wait": False})
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        status = client.get("/sdapi/v1/train/status", params={"task_id": task_id}).json()
        assert status["state"] == "running" and status["kind"] == "lora" and status["name"] == "queued"
        api_services.options.set(POLICY_OPTION, POLICY_REFUSE)
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
        assert r.status_code == 409
        assert "training run" in r.json()["detail"]
        api_services.engine.interrupt(task_id)  # cancels the queued run
    finally:
        release.set()
        api_services.options.set(POLICY_OPTION, POLICY_WAIT)
    api_services.worker.submit(lambda _ctx: None).future.result(30)  # the queue has drained
    assert not api_services.engine.training_busy()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 200


@pytest.mark.parametrize("body", [{"name": ""}, {"name": "../evil"}])
def test_create_embedding_refuses_bad_names(client: TestClient, body: dict[str, Any]) -> None:
    r = client.post("/sdapi/v1/create/embedding", json=body)
    assert 400 <= r.status_code < 500
    assert r.json()["info"].startswith("create embedding error: ")


# -- round trips that really create and train (tiny model, a few steps) -----------------------------


def test_create_embedding_and_hypernetwork_answer_a1111_texts_and_are_listed(client: TestClient) -> None:
    r = client.post(
        "/sdapi/v1/create/embedding", json={"name": "apitoken", "num_vectors_per_token": 2, "init_text": "cat"}
    )
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert info.startswith("create embedding filename: ")
    path = Path(info[27:])  # what A1111 clients slice
    assert path.is_file() and path.stem == "apitoken"
    assert "apitoken" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    again = client.post("/sdapi/v1/create/embedding", json={"name": "apitoken"})
    assert again.status_code == 409 and again.json()["info"].startswith("create embedding error: ")

    r = client.post(
        "/sdapi/v1/create/hypernetwork",
        json={"name": "apihn", "enable_sizes": [768, 320], "layer_structure": "1, 1.5, 1", "activation_func": "relu"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["info"].startswith("create hypernetwork filename: ")
    assert Path(r.json()["info"][len("create hypernetwork filename: ") :]).is_file()
    assert "apihn" in [h["name"] for h in client.get("/sdapi/v1/hypernetworks").json()]


def test_train_embedding_and_lora_through_the_api(client: TestClient, tmp_path: Path) -> None:
    from tests.fixtures.training_data import SMALL_BUCKETS, make_training_set

    flat = tmp_path / "flat"
    make_training_set(tmp_path / "kohya", repeats=1)
    shutil.copytree(next((tmp_path / "kohya").iterdir()), flat)
    assert client.post("/sdapi/v1/create/embedding", json={"name": "apitrained"}).status_code == 200
    r = client.post(
        "/sdapi/v1/train/embedding",
        json={
            "id_task": 0,
            "embedding_name": "apitrained",
            "learn_rate": "0.01",
            "data_root": str(flat),
            "log_directory": str(tmp_path / "log"),
            "training_width": 64,
            "training_height": 64,
            "steps": 2,
            "create_image_every": 0,
            "save_embedding_every": 0,
            "template_filename": "subject_filewords.txt",
            "preview_sampler_index": 0,  # an older client's field
        },
    )
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert info.startswith("train embedding complete: filename: ") and info.endswith(" error: None"), info
    status = client.get("/sdapi/v1/train/status").json()
    assert status["kind"] == "embedding" and status["state"] == "done" and status["step"] == 2
    assert len(status["losses"]) == 2

    r = client.post(
        "/sdapi/v1/train/lora",
        json={
            "name": "apilora",
            "data_root": str(tmp_path / "kohya"),
            "max_train_steps": 2,
            "network_dim": 2,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_BUCKETS.items()},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "lora" and body["steps_done"] == 2 and not body["interrupted"]
    assert Path(body["filename"]).is_file()
    assert "apilora" in [item["name"] for item in client.get("/sdapi/v1/loras").json()]
