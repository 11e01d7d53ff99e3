"""Connect to (or start) the Ray cluster, deploy the engine replicas, build the RayEngine.

Called by the composition root with --ray. Ray is imported here, and only here with the replica
module; without it installed --ray fails with a message naming the install.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modules.core.errors import SettingsError
from modules.core.settings import Settings
from modules.serve.messages import APP_NAME, BOARD_NAME, DEPLOYMENT_NAME, NAMESPACE

log = logging.getLogger(__name__)

ROUTER_MAX_BACKOFF_S = 0.05
CPU_REPLICA_CPUS = 4  # a CPU replica's default share of the cluster (its torch threads)
INSTALL_HINT = "pip install '.[ray]' in the venv, or start with ./webui.sh --ray, which installs it"
# environment every replica gets (the app never reaches a model hub; torch threads = its CPUs)
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def import_ray() -> Any:
    try:
        import ray
        import ray.serve
    except ImportError as exc:
        raise SettingsError(f"--ray needs Ray Serve, which is not installed ({exc.name}): {INSTALL_HINT}") from None
    return ray


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many replicas, and what each one reserves."""

    replicas: int
    cpus: int
    gpus: int  # 0 or 1 per replica


def plan_replicas(settings: Settings, resources: Mapping[str, float]) -> Plan:
    """One replica per GPU of the cluster (1 CPU each) unless --ray-replicas says otherwise; with no
    GPU, CPU replicas of --ray-replica-cpus (4) CPUs each, as many as the cluster's CPUs hold."""
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        cpus = settings.ray_replica_cpus or 1
        return Plan(settings.ray_replicas or gpus, cpus, 1)
    cpus = settings.ray_replica_cpus or CPU_REPLICA_CPUS
    total = int(resources.get("CPU", 1))
    return Plan(settings.ray_replicas or max(1, total // cpus), min(cpus, max(1, total)), 0)


def plan_capacity(settings: Settings, plan: Plan) -> int:
    """Jobs the cluster takes at once: one running per replica + --queue-limit waiting."""
    return plan.replicas + settings.queue_limit


def start_ray(settings: Settings) -> Any:
    """Join --ray-address, or start a local cluster bound to 127.0.0.1 (torn down at exit)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=True)
    else:
        ray.init(namespace=NAMESPACE, include_dashboard=False, _node_ip_address="127.0.0.1")
    return ray


def deploy(
    settings: Settings,
    build: Callable[..., Any],
    repo_root: Path,
    environ: Mapping[str, str] | None,
) -> tuple[Any, Any, Plan]:
    """The JobBoard actor and the replicas' deployment handle (replicas are up when this returns)."""
    ray = start_ray(settings)
    from ray import serve

    from modules.serve.board import JobBoard
    from modules.serve.replica import EngineReplica
    from modules.serve.routing import HOLD_S, CheckpointAffinityRouter

    board = (
        ray.remote(num_cpus=0)(JobBoard)
        .options(name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached")
        .remote()
    )
    plan = plan_replicas(settings, ray.cluster_resources())
    threads = str(plan.cpus)
    code_root = Path(__file__).resolve().parents[2]  # where `modules` is (the same path on every node)
    env_vars = {**_OFFLINE, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(code_root)}
    replica_settings = dataclasses.replace(settings, ray=False)  # each replica is a single-process engine
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=plan.replicas,
        # one job at a time per replica: the next one waits in the router, so it goes to whichever
        # replica (holding its checkpoint, if any) frees up first, and can still be cancelled there
        max_ongoing_requests=1,
        # the front refuses (429) past replicas + --queue-limit jobs before sending any; Serve's own
        # limit counts requests not yet assigned (for a moment, all of them), so it is only a backstop
        max_queued_requests=plan_capacity(settings, plan),
        # a job waits up to HOLD_S for a busy replica that holds its checkpoint before it takes
        # another (Serve's own router gives up on the holder after one try: modules/serve/routing.py);
        # a waiting request asks the replicas again at least every 50 ms (Serve's default backoff
        # grows to 0.5 s: a replica that finished idled ~0.25 s on average before its next job)
        request_router_config={
            "request_router_class": CheckpointAffinityRouter,
            "request_router_kwargs": {"hold_s": HOLD_S},
            "max_backoff_s": ROUTER_MAX_BACKOFF_S,
        },
        ray_actor_options={"num_cpus": plan.cpus, "num_gpus": plan.gpus, "runtime_env": {"env_vars": env_vars}},
        health_check_period_s=5,
        graceful_shutdown_timeout_s=5,
    )(EngineReplica)
    # the environment build_services was given (None: each replica reads its own os.environ)
    forwarded_env = dict(environ) if environ is not None else None
    app = deployment.bind(replica_settings, build, str(repo_root), forwarded_env, plan.cpus)
    serve.start(proxy_location="Disabled")
    log.info("starting %d replica(s) (%d CPU, %d GPU each)", plan.replicas, plan.cpus, plan.gpus)
    handle = serve.run(app, name=APP_NAME, route_prefix=None)
    return handle, board, plan


def ray_engine(
    settings: Settings,
    build: Callable[..., Any],
    repo_root: Path,
    environ: Mapping[str, str] | None,
    *,
    front_saver: Callable[..., None] | None,
    **engine_kwargs: Any,
) -> Any:
    """The RayEngine over a deployed cluster (the composition root calls this with --ray)."""
    from modules.serve.front import RayEngine

    handle, board, plan = deploy(settings, build, repo_root, environ)
    front = settings.ray_outputs == "front"
    return RayEngine(
        deployment=handle,
        board=board,
        capacity=plan_capacity(settings, plan),
        slots=plan.replicas,
        save_on_replica=not front,
        front_saver=front_saver if front else None,
        **engine_kwargs,
    )
