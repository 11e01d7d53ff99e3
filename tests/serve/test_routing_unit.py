"""The engine deployment's request router (modules/serve/routing.py) without a cluster: which
replicas each try of a job may go to. Serve's own router is run through the same steps to show
the case the custom one exists for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest

from modules.serve.routing import HOLD_S, CheckpointAffinityRouter, affinity_ranks

DEPLOYMENT = DeploymentID(name="sdw-engine", app_name="sd-webui")


@dataclass
class FakeReplica:
    """What a router reads of a replica when it ranks them (no actor behind it)."""

    name: str
    multiplexed_model_ids: set[str]
    max_ongoing_requests: int = 1
    node_id: str = "node"
    availability_zone: str | None = None
    routing_stats: dict[str, Any] = field(default_factory=dict)
    is_cross_language: bool = False

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(self.name, DEPLOYMENT)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return 0


def _request(loop: asyncio.AbstractEventLoop, model_id: str, age_s: float = 0.0) -> PendingRequest:
    metadata = RequestMetadata(request_id="r", internal_request_id="r", multiplexed_model_id=model_id)
    created = time.time() - age_s
    return PendingRequest(args=[], kwargs={}, metadata=metadata, created_at=created, future=loop.create_future())


def _names(ranks: list[list[Any]]) -> list[list[str]]:
    return [sorted(r.replica_id.unique_id for r in rank) for rank in ranks]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The routers' event loop (they fetch the running one when replicas are set)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(_drain())
    loop.close()


async def _drain() -> None:
    """Let the routers' background queue-length probes finish."""
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)


def _choose(loop: asyncio.AbstractEventLoop, router: Any, request: PendingRequest | None) -> list[list[str]]:
    return _names(loop.run_until_complete(router.choose_replicas(REPLICAS, request)))


def _router(loop: asyncio.AbstractEventLoop, cls: type, **kwargs: Any) -> Any:
    async def build() -> Any:
        router = cls(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN)
        router.initialize_state(**kwargs)
        router.update_replicas(REPLICAS)
        return router

    return loop.run_until_complete(build())


# x holds b.safetensors, y holds c.safetensors, z holds nothing
REPLICAS = [
    FakeReplica("x", {"b.safetensors"}),
    FakeReplica("y", {"c.safetensors"}),
    FakeReplica("z", set()),
]


def test_a_retry_stays_on_the_holder_while_the_job_is_young(loop: asyncio.AbstractEventLoop) -> None:
    """The case this router is for: a job for b.safetensors whose holder turned it down once (it
    still counted its previous job) is offered only the holder again."""
    router = _router(loop, CheckpointAffinityRouter)
    request = _request(loop, "b.safetensors")
    assert _choose(loop, router, request) == [["x"]]
    assert _choose(loop, router, request) == [["x"]]  # the retry
    assert request.routing_context.should_backoff  # tries are spaced by Serve's backoff

    # Serve's default router gives the retry to any replica holding the fewest checkpoints
    default = _router(loop, PowerOfTwoChoicesRequestRouter)
    request = _request(loop, "b.safetensors")
    assert _choose(loop, default, request) == [["x"]]
    assert _choose(loop, default, request) == [["z"]]


def test_after_hold_s_any_replica_in_order_of_preference(loop: asyncio.AbstractEventLoop) -> None:
    router = _router(loop, CheckpointAffinityRouter, hold_s=0.5)
    assert _choose(loop, router, _request(loop, "b.safetensors", age_s=0.4)) == [["x"]]
    assert _choose(loop, router, _request(loop, "b.safetensors", age_s=0.6)) == [["x"], ["z"], ["y"]]


def test_a_checkpoint_nobody_holds_goes_to_the_least_loaded_at_once(loop: asyncio.AbstractEventLoop) -> None:
    router = _router(loop, CheckpointAffinityRouter)
    assert _choose(loop, router, _request(loop, "a.safetensors")) == [["z"], ["x", "y"]]


def test_a_job_without_a_checkpoint_may_go_anywhere(loop: asyncio.AbstractEventLoop) -> None:
    router = _router(loop, CheckpointAffinityRouter)
    assert _choose(loop, router, _request(loop, "")) == [["x", "y", "z"]]
    assert _choose(loop, router, None) == [["x", "y", "z"]]


def test_hold_s_comes_from_the_router_kwargs(loop: asyncio.AbstractEventLoop) -> None:
    assert _router(loop, CheckpointAffinityRouter).hold_s == HOLD_S
    assert _router(loop, CheckpointAffinityRouter, hold_s=2.5).hold_s == 2.5


def test_affinity_ranks_drops_empty_ranks() -> None:
    assert affinity_ranks(["x"], ["z"], ["y"], waited_s=0.0, hold_s=1.0) == [["x"]]
    assert affinity_ranks(["x"], ["z"], ["y"], waited_s=1.0, hold_s=1.0) == [["x"], ["z"], ["y"]]
    assert affinity_ranks([], ["z"], [], waited_s=0.0, hold_s=1.0) == [["z"]]
    assert affinity_ranks([], [], [], waited_s=0.0, hold_s=1.0) == []
