"""Scale-out on Ray Serve: throughput with 1 and 2 replicas, and the routing overhead per request.

    OMP_NUM_THREADS=1 venv/bin/python bench/bench_ray.py [--requests 16] [--steps 20] [--size 64]
                                                         [--probes 30]

One run on this machine: a tiny SD1 checkpoint (tests' fixture writer) in a temp data dir, a local
Ray cluster of 2 CPUs, replicas of one CPU (one torch thread) each.

- throughput: the same batch of `--requests` txt2img requests (`--steps` Euler steps at `--size`
  px, all submitted at once through the front's engine, as the API routes do) for the
  single-process engine (one torch thread), then --ray with 1 replica, then with 2; after one
  warm-up request per replica (checkpoint loaded). Prints images/s and the 2-replica / 1-replica
  ratio (target >= 1.8).
- routing overhead: `--probes` sequential 1-step requests at 64 px through the single-process
  engine and through the front with one warm replica; the difference of the medians is what the
  front -> Serve -> replica -> JobBoard path adds per request (target <= 20 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _request(steps: int, size: int, seed: int) -> Any:
    from modules.core.requests import Txt2ImgRequest

    return Txt2ImgRequest(prompt="a cat", steps=steps, width=size, height=size, seed=seed, sampler_name="Euler")


def throughput(engine: Any, count: int, steps: int, size: int) -> float:
    started = time.perf_counter()
    handles = [engine.submit(_request(steps, size, seed)) for seed in range(count)]
    for handle in handles:
        handle.result(600)
    return count / (time.perf_counter() - started)


def latencies(engine: Any, probes: int) -> list[float]:
    out = []
    for seed in range(probes):
        started = time.perf_counter()
        engine.run_sync(_request(1, 64, seed), 120)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--probes", type=int, default=30)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from modules.app import build_services
    from modules.core.settings import parse_settings
    from modules.serve.messages import NAMESPACE
    from tests.fixtures.ldm_checkpoints import write_checkpoint

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "a.safetensors", "sd1", seed=0)
    base = ["--data-dir", str(root), "--api", "--nowebui", "--queue-limit", str(args.requests + 4)]

    single = build_services(parse_settings(base, {}), root, {})
    single.registry.refresh()
    single.engine.switch_model("a.safetensors")
    single.engine.run_sync(_request(args.steps, args.size, 0))  # warm-up
    single_rate = throughput(single.engine, args.requests, args.steps, args.size)
    single_lat = latencies(single.engine, args.probes)
    single.worker.shutdown()
    print(f"single process (1 thread): {single_rate:.2f} images/s; 1-step request median {_ms(single_lat)}")

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace=NAMESPACE)
    rates: dict[int, float] = {}
    ray_lat: list[float] = []
    try:
        for replicas in (1, 2):
            flags = [*base, "--ray", "--ray-replicas", str(replicas), "--ray-replica-cpus", "1"]
            started = time.perf_counter()
            front = build_services(parse_settings(flags, {}), root, {})
            front.registry.refresh()
            front.engine.switch_model("a.safetensors")
            print(f"{replicas} replica(s) up in {time.perf_counter() - started:.1f} s")
            warm = [front.engine.submit(_request(args.steps, args.size, 0)) for _ in range(replicas)]
            for handle in warm:
                handle.result(600)
            board = front.engine._board
            before = {k: len(v) for k, v in ray.get(board.runs.remote()).items()}
            rates[replicas] = throughput(front.engine, args.requests, args.steps, args.size)
            after = {k: len(v) - before.get(k, 0) for k, v in ray.get(board.runs.remote()).items()}
            print(
                f"--ray, {replicas} replica(s): {rates[replicas]:.2f} images/s; jobs per replica "
                f"{sorted(n for n in after.values() if n)}"
            )
            if replicas == 1:
                ray_lat = latencies(front.engine, args.probes)
                print(f"--ray, 1 replica: 1-step request median {_ms(ray_lat)}")
            front.worker.shutdown()
    finally:
        serve.shutdown()
        ray.shutdown()
    overhead = (statistics.median(ray_lat) - statistics.median(single_lat)) * 1000
    print()
    print(f"throughput 2 replicas / 1 replica: {rates[2] / rates[1]:.2f}x (target >= 1.8)")
    print(f"throughput 1 replica / single process: {rates[1] / single_rate:.2f}x")
    print(f"routing overhead per request: {overhead:.1f} ms (target <= 20)")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


if __name__ == "__main__":
    main()
