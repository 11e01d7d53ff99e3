"""Cold-start benchmark: a fresh `webui.py` process until its first answers (issue 18, item 3).

    venv/bin/python bench/bench_cold_start.py [--model tiny|full] [--repeats 3] [--nowebui] [--no-baseline]

Each run starts the real server in a fresh process (fresh data dir, the checkpoint linked into
`models/Stable-diffusion`, `--api`), polls it (ping every 20 ms, then every `--poll` s, default
0.25: a client hammering the starting server every 20 ms steals the build thread's CPU on 2 cores,
~30% slower to /options here) and records, from the moment the process was started:
- ping: the first 200 from `/internal/ping` (target: <= 3 s on this CPU);
- options: the first 200 from `/sdapi/v1/options` (an A1111 client can talk to us);
- loaded: `/health` names the loaded checkpoint (the initial model load is over);
- image: the first 200 from a txt2img (1 step, `--size` px, default 64).
`--model tiny` writes the tests' tiny SD1 checkpoint into bench/out/cold_start/ (seconds);
`--model full` uses bench/out/sd1-full-fp16.safetensors (bench/write_full_checkpoints.py writes it).

Baseline: the previous start path (everything built, then uvicorn started, the model loaded on a
thread), replayed by this script's `--legacy-serve` with the same functions of `modules.app`;
ours and the baseline alternate so both see the same page cache. Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
POINTS = ("ping", "options", "loaded", "image")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_checkpoint() -> Path:
    path = OUT / "cold_start" / "sd1-tiny.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; sys.path.insert(0, '.');"
                "from tests.fixtures.ldm_checkpoints import write_checkpoint;"
                f"write_checkpoint(Path({str(path)!r}), 'sd1')",
            ],
            cwd=ROOT,
            check=True,
        )
    return path


def full_checkpoint() -> Path:
    path = OUT / "sd1-full-fp16.safetensors"
    if not path.is_file():
        subprocess.run(
            [sys.executable, "bench/write_full_checkpoints.py", "--out", str(OUT), "--families", "sd1"],
            cwd=ROOT,
            check=True,
        )
    return path


def one_start(
    checkpoint: Path, *, legacy: bool, nowebui: bool, size: int, timeout: float, poll: float = 0.25
) -> dict[str, float]:
    import httpx

    data = Path(tempfile.mkdtemp(prefix="cold-start-"))
    sd = data / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    (sd / checkpoint.name).symlink_to(checkpoint)
    port = _free_port()
    flags = ["--data-dir", str(data), "--port", str(port), "--api", *(["--nowebui"] if nowebui else [])]
    cmd = [sys.executable, __file__, "--legacy-serve", *flags] if legacy else [sys.executable, "webui.py", *flags]
    env = {k: v for k, v in os.environ.items() if k not in ("SDW_ROOT", "INVOCATION_ID", "COMMANDLINE_ARGS")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    url = f"http://127.0.0.1:{port}"
    found: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checks: dict[str, Callable[[httpx.Client], bool]] = {
        "ping": lambda c: c.get(url + "/internal/ping").status_code == 200,
        "options": lambda c: c.get(url + "/sdapi/v1/options").status_code == 200,
        "loaded": lambda c: bool(c.get(url + "/health").json().get("model", {}).get("checkpoint")),
        "image": lambda c: (
            c.post(
                url + "/sdapi/v1/txt2img",
                json={"prompt": "a cat", "steps": 1, "width": size, "height": size, "save_images": False},
                timeout=timeout,
            ).status_code
            == 200
        ),
    }
    try:
        with httpx.Client(timeout=5) as client:
            for point in POINTS:
                while time.perf_counter() - start < timeout:
                    if proc.poll() is not None:
                        raise RuntimeError(f"the server exited with {proc.returncode}")
                    try:
                        if checks[point](client):
                            found[point] = time.perf_counter() - start
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    time.sleep(0.02 if point == "ping" else poll)
                else:
                    raise RuntimeError(f"timed out waiting for {point}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)
    return found


def legacy_serve(argv: list[str]) -> int:
    """The start path before the gate: build everything, then serve; the model loads on a thread."""
    import logging
    import threading

    sys.path.insert(0, str(ROOT))
    import uvicorn

    from modules.app import REPO_ROOT, build_services, create_app, load_initial_model
    from modules.core.settings import parse_settings

    logging.basicConfig(level="WARNING")
    settings = parse_settings(argv, os.environ)
    services = build_services(settings, REPO_ROOT, os.environ)
    services.registry.refresh()
    app = create_app(services)
    threading.Thread(target=load_initial_model, args=(services,), daemon=True).start()
    uvicorn.run(app, host=settings.bind_host, port=settings.effective_port, log_level="warning")
    services.worker.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--legacy-serve"]:
        return legacy_serve(args_in[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="txt2img width and height (1 step)")
    parser.add_argument("--nowebui", action="store_true", help="API only (no Gradio UI built)")
    parser.add_argument("--no-baseline", action="store_true", help="only the current start path")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--poll", type=float, default=0.25, help="seconds between polls after the first ping (ping: 20 ms)"
    )
    args = parser.parse_args(args_in)
    checkpoint = tiny_checkpoint() if args.model == "tiny" else full_checkpoint()
    kinds = ["ours"] if args.no_baseline else ["ours", "baseline"]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for i in range(args.repeats):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            found = one_start(
                checkpoint,
                legacy=kind == "baseline",
                nowebui=args.nowebui,
                size=args.size,
                timeout=args.timeout,
                poll=args.poll,
            )
            runs[kind].append(found)
            print(f"run {i + 1} {kind:8s} " + "  ".join(f"{p} {found[p]:6.2f} s" for p in POINTS), flush=True)
    print(
        f"\ncold start, {args.model} model ({checkpoint.name}), {'API only' if args.nowebui else 'API + UI'}, "
        f"txt2img 1 step {args.size}px, polls every {args.poll} s after ping, median of {args.repeats} "
        "(seconds from process start):"
    )
    medians = {k: {p: statistics.median(r[p] for r in runs[k]) for p in POINTS} for k in kinds}
    print(f"{'':10s}" + "".join(f"{p:>10s}" for p in POINTS))
    for kind in kinds:
        print(f"{kind:10s}" + "".join(f"{medians[kind][p]:10.2f}" for p in POINTS))
    if "baseline" in medians:
        ratio = {p: medians["ours"][p] / medians["baseline"][p] for p in POINTS}
        print(f"{'ours/base':10s}" + "".join(f"{ratio[p]:9.2f}x" for p in POINTS))
    print(f"target: ping <= 3 s -> {'met' if medians['ours']['ping'] <= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
