"""--ray on a real local Ray cluster (2 CPUs, 2 replicas of one torch thread each) with tiny SD1
checkpoints: the front serves the usual app through uvicorn and the routes reach the replicas.

One cluster for the module (starting it and building two engines is most of its time); the
cluster is shut down at the end, so no Ray process outlives the module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from modules.core.requests import Txt2ImgRequest
from modules.services import Services
from tests.fixtures.module_tmp import ModuleTempDirs

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

from modules.serve.messages import APP_NAME, DEPLOYMENT_NAME, NAMESPACE  # noqa: E402

CHECKPOINTS = {"a.safetensors": 0, "b.safetensors": 1, "c.safetensors": 2}  # tiny SD1, different seeds
QUEUE_LIMIT = 2
REPLICA_PREFIX = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
LONG = 400  # steps of a job that is still running when the test acts on it


@dataclass
class Cluster:
    services: Services
    url: str

    @property
    def engine(self) -> Any:
        return self.services.engine

    @property
    def board(self) -> Any:
        return self.engine._board

    def state(self, task_id: str) -> Any:
        return ray.get(self.board.get.remote(task_id))


def _wait(what: str, condition: Callable[[], bool], limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(module_tmp: ModuleTempDirs) -> Iterator[Cluster]:
    import uvicorn
    from ray import serve

    from modules.app import build_services, create_app
    from modules.core.settings import parse_settings
    from tests.fixtures.ldm_checkpoints import write_checkpoint

    root = module_tmp.mktemp("ray-data")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name, seed in CHECKPOINTS.items():
        write_checkpoint(folder / name, "sd1", seed=seed)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace=NAMESPACE)
    server: uvicorn.Server | None = None
    try:
        flags = ["--data-dir", str(root), "--api", "--nowebui", "--ray", "--ray-replicas", "2"]
        flags += ["--ray-replica-cpus", "1", "--queue-limit", str(QUEUE_LIMIT)]
        services = build_services(parse_settings(flags, {}), root, {})
        services.registry.refresh()
        services.engine.switch_model("a.safetensors")
        server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, name="ray-front-uvicorn", daemon=True)
        thread.start()
        _wait("uvicorn", lambda: server is not None and server.started, 30)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Cluster(services, f"http://127.0.0.1:{port}")
    finally:
        if server is not None:
            server.should_exit = True
        serve.shutdown()
        ray.shutdown()


def _replica_names() -> set[str]:
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(REPLICA_PREFIX)
    }


def _router_knows(cluster: Cluster, *model_ids: str) -> bool:
    """Whether the front's Serve router has heard which replica holds each model id (replicas push
    their model ids to the controller, which tells the routers a moment later)."""
    try:
        router = cluster.engine._deployment._router._asyncio_router.request_router
        table = router._multiplexed_model_id_to_replica_ids
    except AttributeError:  # another Ray: nothing to wait on
        return True
    return all(table.get(model_id) for model_id in model_ids)


def _txt2img(cluster: Cluster, checkpoint: str, steps: int = 3, **extra: Any) -> httpx.Response:
    body = {"prompt": "a cat", "steps": steps, "width": 64, "height": 64, "seed": 1}
    body["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return httpx.post(f"{cluster.url}/sdapi/v1/txt2img", json={**body, **extra}, timeout=120)


def _in_thread(fn: Callable[[], Any]) -> Future[Any]:
    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


def _long_job(cluster: Cluster, checkpoint: str) -> Any:
    request = Txt2ImgRequest(
        prompt="a dog", steps=LONG, width=64, height=64, override_settings={"sd_model_checkpoint": checkpoint}
    )
    return cluster.engine.submit(request)


# --- the tests, in the order they run: the routing test needs replicas that hold nothing yet -----


def test_two_checkpoints_land_on_different_replicas_and_stay(cluster: Cluster) -> None:
    # both replicas are idle and hold nothing: b goes to one; c, while b runs there, to the other
    b = _long_job(cluster, "b.safetensors")
    _wait("b running", b.is_running)
    c = _long_job(cluster, "c.safetensors")
    _wait("c running", c.is_running)
    for job in (b, c):
        cluster.engine.interrupt(job.id)
        assert job.result(60).interrupted
    _wait("the router to hear who holds what", lambda: _router_knows(cluster, "b.safetensors", "c.safetensors"))
    router = cluster.engine._deployment._router._asyncio_router.request_router
    assert type(router).__name__ == "CheckpointAffinityRouter"  # modules/serve/routing.py
    # back to back, as a client sends them: each replica still counts its last job for a moment
    # after the answer, and turns the next one down; the job must wait for it, not move
    for checkpoint in ("b.safetensors", "c.safetensors") * 3:
        answer = _txt2img(cluster, checkpoint)
        assert answer.status_code == 200, answer.text
    runs = ray.get(cluster.board.runs.remote())
    states = [cluster.state(t) for ids in runs.values() for t in ids]
    where = {s.model_id: {t.replica for t in states if t.model_id == s.model_id} for s in states}
    assert set(where) == {"b.safetensors", "c.safetensors"}  # the multiplexed model id: the checkpoint's name
    replica_b, replica_c = where["b.safetensors"], where["c.safetensors"]
    assert len(replica_b) == len(replica_c) == 1, where  # each checkpoint stays on its replica
    assert replica_b != replica_c, where
    assert sum(len(ids) for ids in runs.values()) == 8
    # each replica read its checkpoint from disk once: no reload after the first
    loads = [(replica, title.split(" [")[0]) for replica, title in ray.get(cluster.board.loads.remote())]
    assert sorted(loads) == sorted([(*replica_b, "b.safetensors"), (*replica_c, "c.safetensors")])


def test_webuiapi_client_works_unchanged(cluster: Cluster) -> None:
    import webuiapi

    host, port = cluster.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    result = api.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=5)
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 5
    assert result.info["sd_model_name"] == "a"  # the selected checkpoint (routes plain requests)
    assert "Model: a" in result.info["infotexts"][0]
    again = api.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=5)
    assert again.image.tobytes() == result.image.tobytes()  # same request, same pixels, any replica
    titles = [m["model_name"] for m in api.get_sd_models()]
    assert sorted(titles) == ["a", "b", "c"]
    api.util_set_model("b")  # POST /options: the front selects; replicas load on demand
    assert api.get_options()["sd_model_checkpoint"].startswith("b.safetensors")
    switched = api.txt2img(prompt="a cat", steps=3, width=64, height=64, seed=5)
    assert switched.info["sd_model_name"] == "b"
    api.util_set_model("a")
    extras = api.extra_single_image(result.image, upscaler_1="Lanczos", upscaling_resize=2)  # Extras run on a replica
    assert extras.image.size == (128, 128)
    progress = api.get_progress()
    assert progress["state"]["job_count"] == 0 and progress["current_task"] is None


def test_progress_and_interrupt_by_task_id_reach_the_right_replica(cluster: Cluster) -> None:
    b, c = _long_job(cluster, "b.safetensors"), _long_job(cluster, "c.safetensors")
    _wait("both jobs running", lambda: b.is_running() and c.is_running())
    replica_b, replica_c = cluster.state(b.id).replica, cluster.state(c.id).replica
    assert replica_b != replica_c
    # /internal/progress by task id answers from whichever replica runs it
    internal = httpx.post(f"{cluster.url}/internal/progress", json={"id_task": c.id, "live_preview": False}).json()
    assert internal["active"] is True and 0 < internal["progress"] < 1
    answer = httpx.post(f"{cluster.url}/sdapi/v1/interrupt", json={"id_task": b.id})
    assert answer.status_code == 200
    result_b = b.result(60)
    assert result_b.interrupted and len(result_b.images) == 1  # A1111: an interrupted job returns its image
    assert cluster.state(b.id).progress["state"]["sampling_step"] < LONG
    # the other replica's job went on
    assert not c.done() and not cluster.state(c.id).interrupt
    assert c.is_running()
    cluster.engine.interrupt(c.id)
    assert c.result(60).interrupted


def test_a_full_cluster_answers_429(cluster: Cluster) -> None:
    capacity = 2 + QUEUE_LIMIT  # running on the two replicas + waiting for one
    jobs = [_long_job(cluster, "a.safetensors") for _ in range(capacity)]
    try:
        answer = _txt2img(cluster, "a.safetensors")
        assert answer.status_code == 429
        assert answer.json()["error"] == "QueueFullError"
        assert int(answer.headers["Retry-After"]) >= 1
        assert cluster.engine.queue_status(jobs[-1].id).queued  # the front counts every replica's jobs
        assert cluster.engine.pending_count() >= 1
    finally:
        for job in jobs:
            cluster.engine.interrupt(job.id)
        for job in jobs:
            _wait("the jobs to end", job.done)


def test_a_replica_killed_mid_run_is_replaced_and_the_next_request_succeeds(cluster: Cluster) -> None:
    before = _replica_names()
    assert len(before) == 2
    running = _in_thread(lambda: _txt2img(cluster, "b.safetensors", steps=LONG, force_task_id="task(kill-me)"))
    _wait("the job to run", lambda: (s := cluster.state("task(kill-me)")) is not None and s.running)
    victim = cluster.state("task(kill-me)").replica
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    answer = running.result(120)
    assert answer.status_code == 503
    body = answer.json()
    assert body["error"] == "WorkerDiedError"
    assert "died" in body["detail"] and "task(kill-me)" in body["detail"]
    # Serve starts a new replica in its place
    _wait("a new replica", lambda: victim not in _replica_names() and len(_replica_names()) == 2, 120)
    _wait("two running replicas", lambda: _running_replicas() == 2, 120)
    assert _replica_names() - before  # a new one
    answer = _txt2img(cluster, "b.safetensors")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    states = app.deployments[DEPLOYMENT_NAME].replica_states
    return int(states.get("RUNNING", 0)) if sum(states.values()) == states.get("RUNNING", 0) else 0
