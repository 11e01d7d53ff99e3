"""API load: 100 concurrent clients against a live server on the tiny model (issue 19, item 4).

    venv/bin/python bench/bench_api_load.py [--requests 500] [--clients 100] [--queue-limit 8]
                                            [--steps 1] [--size 64] [--keep]

Starts `webui.py --nowebui --queue-limit N` as a process over a temporary data dir holding the
tiny random-weight SD 1.x checkpoint (tests/fixtures/ldm_checkpoints.py), warms it up (one request
of each kind), then `--clients` threads share `--requests` requests of a mixed workload: txt2img,
img2img, extras single image, GET and POST /options, /progress. A 429 is honoured: the client
sleeps the `Retry-After` seconds (plus a little jitter) and sends the same request again, so a full
queue loses nothing. Besides, a poller in a process of its own (so that the client threads do not
hold its GIL) asks /progress throughout (every 50 ms); its latencies are reported as p50/p99.
The server's RSS (process tree) is read at start (after warm-up), middle and end, and every 10% of
the requests.

Prints: requests served, 429s (retried), errors (a final answer that is not 200, a 200 without
the expected images, or a transport error), lost (requests with no final answer), /progress p50/p99,
RSS start/middle/end. Exits 1 when errors or lost > 0 (RSS growth is printed, not judged).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import itertools
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("txt2img", "img2img", "extras", "options-get", "options-post", "progress")
WEIGHTS = (30, 20, 15, 15, 5, 15)  # percent of the requests
MAX_RETRIES = 1000  # 429s a single request may see before it is counted lost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _png_b64(size: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 80, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / (1024 * 1024)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    errors: list[str] = field(default_factory=list)
    lost: int = 0
    done: int = 0


def request_for(kind: str, args: argparse.Namespace, image: str, seed: int) -> tuple[str, str, Any, int]:
    """(method, path, json, images expected) for one request of `kind`."""
    base = {"prompt": "a cat", "steps": args.steps, "width": args.size, "height": args.size, "seed": seed}
    base["sampler_name"] = "Euler"
    if kind == "txt2img":
        return "POST", "/sdapi/v1/txt2img", base, 1
    if kind == "img2img":
        return "POST", "/sdapi/v1/img2img", {**base, "init_images": [image], "denoising_strength": 0.5}, 1
    if kind == "extras":
        body = {"image": image, "upscaling_resize": 2, "upscaler_1": "Lanczos"}
        return "POST", "/sdapi/v1/extra-single-image", body, 1
    if kind == "options-get":
        return "GET", "/sdapi/v1/options", None, 0
    if kind == "options-post":
        return "POST", "/sdapi/v1/options", {"samples_format": "png"}, 0
    return "GET", "/sdapi/v1/progress?skip_current_image=true", None, 0


def _check(kind: str, body: Any, expected_images: int) -> str | None:
    """What is wrong with a 200 answer, or None."""
    if kind in ("txt2img", "img2img"):
        if not isinstance(body, dict) or len(body.get("images") or []) != expected_images:
            return f"{kind}: 200 without {expected_images} image(s)"
    elif kind == "extras":
        if not isinstance(body, dict) or not body.get("image"):
            return "extras: 200 without an image"
    elif kind == "options-get":
        if not isinstance(body, dict) or "sd_model_checkpoint" not in body:
            return "options: 200 without the options"
    elif kind == "progress" and (not isinstance(body, dict) or "state" not in body):
        return "progress: 200 without a state"
    return None


def client_loop(
    url: str, plan: list[str], counter: itertools.count[int], args: argparse.Namespace, image: str, tally: Tally
) -> None:
    import httpx

    rng = random.Random()
    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        while True:
            index = next(counter)
            if index >= len(plan):
                return
            kind = plan[index]
            method, path, payload, images = request_for(kind, args, image, seed=index)
            answered = False
            for _ in range(MAX_RETRIES):
                try:
                    response = http.request(method, path, json=payload)
                except httpx.HTTPError as exc:
                    with tally.lock:
                        tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    answered = True
                    break
                if response.status_code == 429:
                    retry_after = float(response.headers.get("Retry-After", "1"))
                    with tally.lock:
                        tally.throttled += 1
                    time.sleep(retry_after + rng.uniform(0, 0.5))  # after the header, spread out
                    continue
                answered = True
                problem = None
                if response.status_code != 200:
                    problem = f"{kind}: {response.status_code} {response.text[:200]}"
                else:
                    problem = _check(kind, response.json(), images)
                with tally.lock:
                    if problem:
                        tally.errors.append(problem)
                    else:
                        tally.served[kind] += 1
                break
            with tally.lock:
                tally.done += 1
                if not answered:
                    tally.lost += 1


def progress_poller(url: str, stop: Any, results: Any) -> None:
    """Runs in its own process: polls until `stop` is set, then puts (latencies, failures) on `results`."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []

    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                response = http.get("/sdapi/v1/progress", params={"skip_current_image": "true"})
                if response.status_code != 200:
                    failures.append(f"progress poller: {response.status_code}")
            except httpx.HTTPError as exc:
                failures.append(f"progress poller: {type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - start)
            stop.wait(0.05)
    results.put((latencies, failures))


def start_server(data: Path, port: int, queue_limit: int, log_path: Path) -> subprocess.Popen[bytes]:
    import httpx

    cmd = [
        sys.executable,
        "webui.py",
        "--nowebui",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--queue-limit",
        str(queue_limit),
    ]
    environ = {k: v for k, v in os.environ.items() if k not in ("SDW_ROOT", "INVOCATION_ID", "COMMANDLINE_ARGS")}
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}; log: {log_path}")
        try:  # ready: the app is built (not the start-up gate) and the checkpoint is loaded
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            model = response.json().get("model") or {} if response.status_code == 200 else {}
            if model.get("checkpoint") and not model.get("loading"):
                return proc
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not start in 300 s; log: {log_path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--queue-limit", type=int, default=8, help="the server's --queue-limit")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one HTTP request may take")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload's order")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    args = parser.parse_args()

    import httpx

    from tests.fixtures.ldm_checkpoints import write_checkpoint

    data = Path(tempfile.mkdtemp(prefix="sdw-api-load-"))
    log_path = data / "server.log"
    write_checkpoint(data / "models" / "Stable-diffusion" / "sd1-tiny.safetensors", "sd1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = start_server(data, port, args.queue_limit, log_path)
    print(f"server up in {time.monotonic() - t0:.1f} s (pid {proc.pid}, --queue-limit {args.queue_limit})")
    image = _png_b64(args.size)
    code = 1
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:  # warm-up, one of each kind
            for kind in KINDS:
                method, path, payload, images = request_for(kind, args, image, seed=0)
                response = http.request(method, path, json=payload)
                problem = None if response.status_code == 200 else f"{response.status_code} {response.text[:300]}"
                problem = problem or _check(kind, response.json(), images)
                if problem:
                    raise SystemExit(f"warm-up {kind} failed: {problem}; log: {log_path}")
        rss = {"start": _rss_mb(proc.pid)}
        trend: list[float] = []

        rng = random.Random(args.seed)
        plan = rng.choices(KINDS, weights=WEIGHTS, k=args.requests)
        tally = Tally()
        counter = itertools.count()
        spawn = multiprocessing.get_context("spawn")
        stop, results = spawn.Event(), spawn.Queue()
        poller = spawn.Process(target=progress_poller, args=(url, stop, results), daemon=True)
        poller.start()
        clients = [
            threading.Thread(target=client_loop, args=(url, plan, counter, args, image, tally), daemon=True)
            for _ in range(args.clients)
        ]
        t0 = time.monotonic()
        for thread in clients:
            thread.start()
        while any(thread.is_alive() for thread in clients):
            with tally.lock:
                done = tally.done
            if "middle" not in rss and done >= args.requests // 2:
                rss["middle"] = _rss_mb(proc.pid)
            if done >= len(trend) * args.requests // 10:  # every 10% of the requests
                trend.append(_rss_mb(proc.pid))
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        stop.set()
        latencies, poll_failures = results.get(timeout=120)
        poller.join(60)
        rss.setdefault("middle", float("nan"))
        rss["end"] = _rss_mb(proc.pid)
        idle = httpx.get(url + "/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=30).json()

        served = sum(tally.served.values())
        errors = tally.errors + poll_failures
        lost = tally.lost + (args.requests - tally.done)
        mix = ", ".join(f"{kind} {tally.served[kind]}" for kind in KINDS)
        print(f"requests: {args.requests} by {args.clients} clients in {elapsed:.1f} s ({served / elapsed:.1f}/s)")
        print(f"served: {served} ({mix})")
        print(f"429s: {tally.throttled} (each retried after its Retry-After)")
        print(f"errors: {len(errors)}")
        for problem in Counter(errors).most_common(10):
            print(f"  {problem[1]} x {problem[0]}")
        print(f"lost: {lost}")
        ms = [v * 1000 for v in latencies]
        print(
            f"/progress while loaded: {len(ms)} polls, p50 {_percentile(ms, 0.5):.1f} ms, "
            f"p99 {_percentile(ms, 0.99):.1f} ms, max {max(ms, default=float('nan')):.1f} ms"
            + (f", mean {statistics.fmean(ms):.1f} ms" if ms else "")
        )
        print(
            f"server RSS: start {rss['start']:.0f} MB, middle {rss['middle']:.0f} MB, end {rss['end']:.0f} MB "
            f"(end - start {rss['end'] - rss['start']:+.0f} MB)"
        )
        print("server RSS every 10% of the requests (MB): " + " ".join(f"{v:.0f}" for v in trend))
        print(
            f"after the run: progress job_count {idle['state']['job_count']}, current_task {idle.get('current_task')}"
        )
        code = 1 if errors or lost else 0
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if args.keep or code:
            print(f"data dir and server log kept: {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
