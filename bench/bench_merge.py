"""Checkpoint merge benchmark: our streamed merge against A1111's in-RAM way on two full-size files.

    venv/bin/python bench/bench_merge.py [--dtype fp16|fp32] [--repeats 1] [--no-check]

Writes two full-size random-weight SD 1.5 single files into bench/out/ when missing (tests/fixtures
writer; `sd1` and `sd1:2` as bench/bench_load.py names them; kept for reuse) and merges them with a
weighted sum, ``A * (1 - M) + B * M`` with M = 0.3, two ways:

- baseline: what A1111 v1.10.1's Checkpoint Merger does in essence: both state dicts loaded whole
  into RAM (`safetensors.torch.load_file`), every float tensor whose key contains "model"
  recombined into A's dict in the file's dtype, then `safetensors.torch.save_file` (with this venv's
  safetensors 0.8, `load_file` memory-maps the files: tensors stay file-backed until replaced;
  A1111 v1.10.1 pins safetensors 0.4.2, not measured here);
- ours: `modules.models.merge.merge_checkpoints` (inputs memory-mapped and read one tensor at a
  time, the result streamed to a temp file, fsynced and linked into place), through a
  `ModelRegistry` over a temp folder of symlinks to the two inputs.

Every measurement runs in a fresh subprocess (``--worker baseline|ours``) so that its peaks belong
to that merge alone; baseline and ours alternate so both see the same page-cache state (the inputs
are read once before the first run). Outputs go to bench/out/merge-work/ and are deleted after each
measurement. Printed per side:

- wall time of the merge (read + combine + write; imports and, for ours, the registry scan are
  outside it), median of the repeats;
- peak RSS (the worker's VmHWM: includes file-backed pages of the memory-mapped inputs);
- peak anonymous memory (RssAnon of the worker sampled every 20 ms from /proc/<pid>/status by a
  thread of this process; file-backed mmap pages do not count) and its growth over the worker's
  RssAnon just before the merge (interpreter + torch + imports);
- each also as a multiple of one input's size on disk, the ratios ours / baseline, and whether
  ours meets the target "peak anonymous memory under 1.5x one model".

Then (not timed, unless ``--no-check``) one more merge each way, kept, and a tensor-by-tensor
comparison of the two results (``--worker compare``): equal keys, dtypes and shapes, how many
tensors and elements differ and by how much (absolute and in units in the last place), ours against
the same formula computed in float32 and rounded once (must be exact), and both against a float64
reference. The baseline rounds three times in fp16 (each product, then the sum), ours once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.bench_load import OUT, ensure_checkpoint, registry_over  # noqa: E402

MULTIPLIER = 0.3
TARGET = 1.5  # peak anonymous memory, in multiples of one model's size on disk
WORK = OUT / "merge-work"
SAMPLE_S = 0.02
# A1111 keeps this key from A whatever the method (checkpoint_dict_skip_on_merge)
SKIP_ON_MERGE = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...), in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[name] = int(parts[0]) * 1024
    return values


# ------------------------------------------------------------------------------ workers (child)


def worker_baseline(a: Path, b: Path, out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    start_status = proc_status()
    started = time.perf_counter()
    theta_1 = load_file(str(b), device="cpu")  # A1111 reads B first, then A
    theta_0 = load_file(str(a), device="cpu")
    read = time.perf_counter() - started
    for key in theta_0:
        if "model" not in key or key not in theta_1 or key == SKIP_ON_MERGE:
            continue
        x, y = theta_0[key], theta_1[key]
        if x.is_floating_point() and y.is_floating_point() and x.shape == y.shape:
            theta_0[key] = (1 - MULTIPLIER) * x + MULTIPLIER * y
    del theta_1
    combined = time.perf_counter() - started
    save_file(theta_0, str(out))
    seconds = time.perf_counter() - started
    # not part of A1111's merge (save_file does not fsync); timed apart for comparison with ours
    fsync_started = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync = time.perf_counter() - fsync_started
    del theta_0
    return {
        "seconds": seconds,
        "read": read,
        "combine": combined - read,
        "write": seconds - combined,
        "fsync_after": fsync,
        "anon_start": start_status["RssAnon"],
        "hwm": proc_status()["VmHWM"],
    }


def worker_ours(a: Path, b: Path, out: Path) -> dict[str, Any]:
    from modules.core.jobs import WEIGHTED_SUM, MergeRequest
    from modules.models.merge import merge_checkpoints

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        registry = registry_over(Path(tmp), a, b, hashing=False)
        registry.refresh()
        request = MergeRequest(
            primary_model_name=a.name,
            secondary_model_name=b.name,
            interp_method=WEIGHTED_SUM,
            multiplier=MULTIPLIER,
            custom_name=out.stem,
        )
        start_status = proc_status()
        started = time.perf_counter()
        result = merge_checkpoints(request, registry, out.parent)
        seconds = time.perf_counter() - started
    if result.path != out:
        raise SystemExit(f"ours wrote {result.path}, expected {out}")
    return {
        "seconds": seconds,
        "tensors": result.tensors,
        "merged": result.merged,
        "anon_start": start_status["RssAnon"],
        "hwm": proc_status()["VmHWM"],
    }


def _ulps(x: Any, y: Any) -> Any:
    """|x - y| in units in the last place of x's dtype at the larger of |x| and |y| (float64)."""
    import torch

    bits, min_exp = {torch.float16: (10, -14), torch.bfloat16: (7, -126), torch.float32: (23, -126)}[x.dtype]
    xd, yd = x.double(), y.double()
    _, exp = torch.frexp(torch.maximum(xd.abs(), yd.abs()))
    ulp = torch.ldexp(torch.ones_like(xd), (exp - 1).clamp(min=min_exp) - bits)
    return (xd - yd).abs() / ulp


def worker_compare(a: Path, b: Path, base: Path, ours: Path) -> dict[str, Any]:
    import torch
    from safetensors import safe_open

    m = MULTIPLIER
    res: dict[str, Any] = {
        "only_baseline": [],
        "only_ours": [],
        "mismatched_layout": [],
        "tensors_compared": 0,
        "tensors_equal": 0,
        "tensors_differ": 0,
        "elements": 0,
        "elements_differ": 0,
        "max_abs_diff": 0.0,
        "max_ulps": 0.0,
        "worst_key": "",
        "ours_vs_fp32_formula_mismatches": 0,
        "ref64_elements": 0,
        "baseline_off_ref64": 0,
        "baseline_off_ref64_max_ulps": 0.0,
        "ours_off_ref64": 0,
        "ours_off_ref64_max_ulps": 0.0,
    }
    with (
        safe_open(str(a), "pt") as fa,
        safe_open(str(b), "pt") as fb,
        safe_open(str(base), "pt") as fbase,
        safe_open(str(ours), "pt") as fours,
    ):
        base_keys, our_keys = set(fbase.keys()), set(fours.keys())
        res["only_baseline"] = sorted(base_keys - our_keys)
        res["only_ours"] = sorted(our_keys - base_keys)
        res["ours_metadata_keys"] = sorted((fours.metadata() or {}).keys())
        res["baseline_metadata_keys"] = sorted((fbase.metadata() or {}).keys())
        a_keys, b_keys = set(fa.keys()), set(fb.keys())
        for key in sorted(base_keys & our_keys):
            x, y = fbase.get_tensor(key), fours.get_tensor(key)
            if x.dtype != y.dtype or x.shape != y.shape:
                res["mismatched_layout"].append(f"{key}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}")
                continue
            res["tensors_compared"] += 1
            res["elements"] += x.numel()
            if torch.equal(x, y):
                res["tensors_equal"] += 1
            else:
                res["tensors_differ"] += 1
                differ = x != y
                res["elements_differ"] += int(differ.sum())
                if x.is_floating_point():
                    diff = float((x.double() - y.double()).abs().max())
                    ulps = float(_ulps(x, y).max())
                    if ulps > res["max_ulps"]:
                        res["worst_key"] = key
                    res["max_abs_diff"] = max(res["max_abs_diff"], diff)
                    res["max_ulps"] = max(res["max_ulps"], ulps)
            merged = "model" in key and key in a_keys and key in b_keys and key != SKIP_ON_MERGE
            if not (merged and x.is_floating_point()):
                continue
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
            if ta.shape != x.shape or tb.shape != x.shape or not tb.is_floating_point():
                continue
            formula32 = (ta.float() * (1.0 - m) + tb.float() * m).to(x.dtype)
            res["ours_vs_fp32_formula_mismatches"] += int((formula32 != y).sum())
            ref = (ta.double() * (1.0 - m) + tb.double() * m).to(x.dtype)
            res["ref64_elements"] += x.numel()
            for name, t in (("baseline", x), ("ours", y)):
                off = t != ref
                res[f"{name}_off_ref64"] += int(off.sum())
                if bool(off.any()):
                    res[f"{name}_off_ref64_max_ulps"] = max(
                        res[f"{name}_off_ref64_max_ulps"], float(_ulps(t, ref).max())
                    )
    return res


# ------------------------------------------------------------------------------ driver (parent)


def run_worker(kind: str, *args: str) -> dict[str, Any]:
    """One worker subprocess; its RssAnon / VmRSS sampled every 20 ms from here while it runs."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                status = proc_status(proc.pid)
            except (OSError, ValueError):
                return
            for name in peaks:
                peaks[name] = max(peaks[name], status.get(name, 0))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed ({proc.returncode}):\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["anon_peak"] = peaks["RssAnon"]
    result["rss_peak_sampled"] = peaks["VmRSS"]
    return result


def _gib(n: float) -> str:
    return f"{n / 2**30:5.2f} GiB"


def _row(label: str, runs: list[dict[str, Any]], model: int) -> dict[str, float]:
    wall = statistics.median(float(r["seconds"]) for r in runs)
    hwm = max(float(r["hwm"]) for r in runs)
    anon = max(float(r["anon_peak"]) for r in runs)
    growth = max(float(r["anon_peak"]) - float(r["anon_start"]) for r in runs)
    print(
        f"{label:<10} {wall:8.1f} s   {_gib(hwm)} {hwm / model:5.2f}x   {_gib(anon)} {anon / model:5.2f}x"
        f"   {_gib(growth)} {growth / model:5.2f}x"
    )
    return {"wall": wall, "hwm": hwm, "anon": anon, "growth": growth}


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-check", action="store_true", help="skip the (untimed) tensor-by-tensor comparison")
    parser.add_argument("--worker", choices=["baseline", "ours", "compare"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "baseline":
            result = worker_baseline(*args.paths)
        elif args.worker == "ours":
            result = worker_ours(*args.paths)
        else:
            result = worker_compare(*args.paths)
        print(json.dumps(result))
        return

    a = ensure_checkpoint("sd1", args.dtype)
    b = ensure_checkpoint("sd1:2", args.dtype)
    model = a.stat().st_size
    WORK.mkdir(parents=True, exist_ok=True)
    out_base = WORK / "merged-baseline.safetensors"
    out_ours = WORK / "merged-ours.safetensors"
    _remove(out_base, out_ours)
    need = 2 * model + (1 << 30)
    if shutil.disk_usage(WORK).free < need:
        raise SystemExit(f"need {_gib(need)} free beside {WORK}")

    print(
        f"\nmerge benchmark: weighted sum M={MULTIPLIER}, {a.name} + {b.name}"
        f" (one model on disk {_gib(model)}), {args.repeats} repeat(s), CPU, {os.cpu_count()} cores\n",
        flush=True,
    )
    for p in (a, b):  # same page-cache state for both sides
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)
    base_runs: list[dict[str, Any]] = []
    our_runs: list[dict[str, Any]] = []
    try:
        for i in range(args.repeats):
            base_runs.append(run_worker("baseline", str(a), str(b), str(out_base)))
            _remove(out_base)
            print(f"  run {i + 1}: baseline {base_runs[-1]['seconds']:.1f} s", flush=True)
            our_runs.append(run_worker("ours", str(a), str(b), str(out_ours)))
            _remove(out_ours)
            print(f"  run {i + 1}: ours     {our_runs[-1]['seconds']:.1f} s", flush=True)

        print(f"\n{'':<10} {'wall (median)':>10}   {'peak RSS (VmHWM)':<20}   {'peak anon':<20}   anon above start")
        base = _row("baseline", base_runs, model)
        ours = _row("ours", our_runs, model)
        print(
            f"{'ours/base':<10} {ours['wall'] / base['wall']:8.2f}x   {ours['hwm'] / base['hwm']:14.2f}x"
            f"   {ours['anon'] / base['anon']:14.2f}x   {ours['growth'] / base['growth']:14.2f}x"
        )
        parts = {k: statistics.median(float(r[k]) for r in base_runs) for k in ("read", "combine", "write")}
        fsync = statistics.median(float(r["fsync_after"]) for r in base_runs)
        print(
            f"\nbaseline split: read {parts['read']:.1f} s, combine {parts['combine']:.1f} s,"
            f" write {parts['write']:.1f} s (+ fsync afterwards, not in its time: {fsync:.1f} s; ours fsyncs)"
        )
        base_start = statistics.median(float(r["anon_start"]) for r in base_runs)
        our_start = statistics.median(float(r["anon_start"]) for r in our_runs)
        print(
            f"anon just before the merge (interpreter + imports): baseline {_gib(base_start)}, ours {_gib(our_start)}"
        )
        verdict = "MET" if ours["anon"] < TARGET * model else "NOT MET"
        print(
            f"target: peak anon under {TARGET}x one model ({_gib(TARGET * model)}): ours {ours['anon'] / model:.2f}x"
            f" -> {verdict} (above the pre-merge level: {ours['growth'] / model:.2f}x)"
        )

        if not args.no_check:
            print("\nchecking: one more merge each way (not timed), then tensor by tensor ...", flush=True)
            run_worker("baseline", str(a), str(b), str(out_base))
            run_worker("ours", str(a), str(b), str(out_ours))
            cmp = run_worker("compare", str(a), str(b), str(out_base), str(out_ours))
            print_check(cmp)
    finally:
        _remove(out_base, out_ours)
        shutil.rmtree(WORK, ignore_errors=True)


def print_check(cmp: dict[str, Any]) -> None:
    print(f"  keys only in baseline: {cmp['only_baseline'] or 'none'}  (ours drops model_ema.*, as designed)")
    print(
        f"  keys only in ours: {cmp['only_ours'] or 'none'};"
        f" dtype/shape mismatches: {cmp['mismatched_layout'] or 'none'}"
    )
    print(f"  metadata: baseline {cmp['baseline_metadata_keys'] or 'none'}, ours {cmp['ours_metadata_keys']}")
    n, elements = cmp["tensors_compared"], cmp["elements"]
    if cmp["tensors_differ"] == 0:
        print(f"  EQUAL: all {n} common tensors ({elements:,} elements) identical")
    else:
        print(
            f"  differ: {cmp['tensors_differ']} of {n} tensors, {cmp['elements_differ']:,} of {elements:,} elements"
            f" ({100 * cmp['elements_differ'] / max(elements, 1):.2f}%); max |diff| {cmp['max_abs_diff']:.3g},"
            f" max {cmp['max_ulps']:.2f} ulp ({cmp['worst_key']})"
        )
    print(f"  ours vs A*(1-M)+B*M in float32 rounded once: {cmp['ours_vs_fp32_formula_mismatches']:,} elements differ")
    total = max(cmp["ref64_elements"], 1)
    for name in ("baseline", "ours"):
        off = cmp[f"{name}_off_ref64"]
        print(
            f"  {name:<8} vs float64 reference (merged tensors, {cmp['ref64_elements']:,} elements): {off:,} differ"
            f" ({100 * off / total:.2f}%), max {cmp[f'{name}_off_ref64_max_ulps']:.2f} ulp"
        )


if __name__ == "__main__":
    main()
