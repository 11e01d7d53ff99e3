"""CheckpointAffinityRouter: how the front's Serve handle picks a replica for a job.

A job names its checkpoint as its multiplexed model id. Serve's default router prefers a replica
that holds it only on its first try: if that replica turns the job down, the next try already
takes any replica with the fewest checkpoints. A replica turns a job down while it counts one job
running (`max_ongoing_requests=1`), and it still counts the last one for a moment after its result
has reached the front, so a client that sends its next job for the same checkpoint right away
could land on another replica, which then loads that checkpoint again (seconds of disk reads and
GPU memory for a copy). Under CPU load that moment grows: CI saw it.

This router keeps offering only the replicas that hold the job's checkpoint for `hold_s` after the
job arrived (Serve tries again every few ms up to `max_backoff_s`); after that, as before, the
holders first, then the replicas holding the fewest checkpoints, then the rest. A job for a
checkpoint no replica holds goes to one of those holding the fewest at once; a job without a
checkpoint (Extras) to any free replica. Among the replicas of one rank Serve takes the one with the
shortest queue.

Imported by `modules.serve.cluster`, only with --ray (Ray is an optional install).
"""

from __future__ import annotations

import random
import time
from typing import Any, TypeVar

from ray.serve.request_router import FIFOMixin, MultiplexMixin, PendingRequest, RequestRouter, RunningReplica

HOLD_S = 1.0  # how long a job waits for a busy replica that holds its checkpoint
R = TypeVar("R")


def affinity_ranks(holders: list[R], fewest: list[R], others: list[R], waited_s: float, hold_s: float) -> list[list[R]]:
    """The replicas to try, most preferred rank first: only the holders while the job has waited
    less than `hold_s`, then every rank that is not empty."""
    if holders and waited_s < hold_s:
        return [holders]
    return [rank for rank in (holders, fewest, others) if rank]


class CheckpointAffinityRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Serve's request router for the engine deployment (`request_router_config`)."""

    hold_s: float = HOLD_S

    def initialize_state(self, **kwargs: Any) -> None:
        """Called by Serve with the deployment's `request_router_kwargs`."""
        self.hold_s = float(kwargs.get("hold_s", HOLD_S))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:  # nothing to match: any replica
            return [list(candidate_replicas)]
        pending_request.routing_context.should_backoff = True  # wait a little between tries
        model_id = pending_request.metadata.multiplexed_model_id
        if not model_id:
            return [random.sample(candidate_replicas, len(candidate_replicas))]
        holders, fewest, others = self.rank_replicas_via_multiplex(candidate_replicas, model_id)
        waited = time.time() - pending_request.created_at
        return affinity_ranks(holders, fewest, others, waited, self.hold_s)
