"""`coldstart bench api`: the inspection endpoint as users run it, against the bare forward pass.

One temporary workspace (the demo's ten-class ontology over ``--model``, random weights: nothing
is downloaded, and timing does not depend on the weights; no round, so the labeler is the
zero-shot head). In this process, the same model build the labeler uses (``load_clip`` with
``embed.clip_config(params.model)``), warmed up: a single-image forward pass (p50 of
``forward_runs``) and batched forward throughput at the Batcher's batch size and at 16 (the better
one is the reference). Then the real server, ``coldstart api --workspace WS --port P`` in its own
process (its RSS from /proc, its own GIL), driven over HTTP by httpx clients posting one
synthetic 640x480 JPEG as a raw body:

1. one client, sequential requests: ``p50_ms`` (and p90);
2. ``clients`` concurrent clients (threads, one keep-alive connection each) for ``load_s``
   seconds after ``warm_s`` of ramp-up: ``throughput_img_s``, images answered in the window per
   second, and latency under load;
3. the soak: the same clients for ``soak_s`` seconds: ``soak_errors`` (any non-200 answer or
   exception) and ``rss_growth``, the server's RSS at the end over its RSS at the soak's start
   (after the load phase), minus 1.

Targets (coldstart/bench/targets.py): ``p50_ms`` <= 1.2 x ``forward_single_ms`` + 20 ms (as
``p50_over_target`` <= 1), ``throughput_ratio`` = ``throughput_img_s`` / ``forward_batched_img_s``
>= 0.8, ``soak_errors`` = 0, ``rss_growth`` <= 0.05.

The ratios hold only on a quiet machine. The bare passes run again after the server stops, and
every phase records the cores other processes kept busy (/proc/stat less the server and this
process); ``quiet`` is false, and a warning printed, when the two bare measurements differ by
over 10% or other processes took over 0.2 cores.
"""

from __future__ import annotations

import inspect
import io
import os
import platform
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from coldstart.bench.load import busy_cpu_s
from coldstart.bench.prelabel import synthetic_jpegs
from coldstart.bench.rounds import CLI
from coldstart.bench.rss import rss_mb
from coldstart.bench.targets import TARGETS
from coldstart.models.clip import ClipModel, load_clip
from coldstart.tasks.demodata import demo_params
from coldstart.tasks.embed import clip_config
from coldstart.tasks.inference import Batcher
from coldstart.tasks.tokens import api_token
from coldstart.tasks.version import init_workspace

CLASSIFY = "/v1/classify"


def synthetic_jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 90) -> bytes:
    """A smooth random colour image as JPEG bytes (compresses like a photo, unlike noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system, all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Snapshot = tuple[float, float, float, float]  # _cpu_snapshot: (now, server CPU s, this process's, the machine's)


def _cpu_snapshot(pid: int | None) -> Snapshot:
    """(now, the server's CPU s (0 without one), this process's CPU s, the machine's busy CPU s)."""
    return time.perf_counter(), cpu_s(pid) if pid else 0.0, cpu_s(os.getpid()), busy_cpu_s()


def _other_cores(a: Snapshot, b: Snapshot) -> float:
    """Cores the rest of the machine (neither the server nor this process) kept busy between two snapshots."""
    server, bench, busy = ((y - x) / (b[0] - a[0]) for x, y in zip(a[1:], b[1:]))
    return round(max(0.0, busy - server - bench), 2)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values``, rounded to 0.01 (None without values)."""
    return round(float(np.percentile(values, q)), 2) if values else None


# --- the bare forward pass ------------------------------------------------------------------------


def bare_forward(clip: ClipModel, pixel: torch.Tensor, runs: int, batch_sizes: tuple[int, ...],
                 batches: int) -> dict[str, Any]:
    """Single-image forward p50 (ms) and batched throughput (img/s) per batch size, after warm-up;
    ``pixel`` is one preprocessed ``(3, S, S)`` image tensor."""
    x = pixel.unsqueeze(0)
    for _ in range(3):
        clip.encode_images(x)
    snap = _cpu_snapshot(None)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        clip.encode_images(x)
        times.append(time.perf_counter() - t)
    batched: dict[int, float] = {}
    for bs in batch_sizes:
        xb = x.expand(bs, *x.shape[1:]).contiguous()
        clip.encode_images(xb)  # warm-up at this shape
        t = time.perf_counter()
        for _ in range(batches):
            clip.encode_images(xb)
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        batched[bs] = bs * batches / (time.perf_counter() - t)
    return {"single_ms": float(np.median(times)) * 1000, "single_p90_ms": float(np.percentile(times, 90)) * 1000,
            "batched": batched, "other_cpu_cores": _other_cores(snap, _cpu_snapshot(None))}


# --- the server -----------------------------------------------------------------------------------


class Server:
    """``coldstart api`` in its own process (its own session), stopped and reaped on exit."""

    def __init__(self, workspace: Path, port: int, log_path: Path, start_timeout_s: float = 180.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [*CLI, "api", "--workspace", str(workspace), "--port", str(port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        self.exit_code: int | None = None
        self.start_s = self._wait_healthy(start_timeout_s)

    def _wait_healthy(self, timeout_s: float) -> float:
        """Seconds until the server answered /health; raise if it exits or stays silent ``timeout_s``."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coldstart api exited with {self.proc.returncode} before it answered /health:\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"coldstart api did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` of the server's output."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> int:
        """Stop the server as Ctrl-C does (killed after 20 s), reap it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (the batcher closes)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the clients ----------------------------------------------------------------------------------


def _post(client: httpx.Client, payload: bytes) -> tuple[int, str | None]:
    """One classify request: (images answered, error or None)."""
    try:
        r = client.post(CLASSIFY, content=payload, headers={"Content-Type": "image/jpeg"})
        if r.status_code != 200:
            return 0, f"HTTP {r.status_code}: {r.text[:200]}"
        results = r.json().get("results")
        if not isinstance(results, list) or not results or "label" not in results[0]:
            return 0, f"HTTP 200 without results: {r.text[:200]}"
        return len(results), None
    except Exception as e:  # a timeout, a dropped connection: an error of the run, not of the bench
        return 0, f"{type(e).__name__}: {e}"[:300]


def _client(url: str, token: str) -> httpx.Client:
    """An HTTP client with the token and one keep-alive connection."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120.0,
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


def sequential(url: str, token: str, payload: bytes, n: int, warmup: int = 5,
               pid: int | None = None) -> dict[str, Any]:
    """One client, one request at a time: latency percentiles (ms) and errors."""
    lat: list[float] = []
    errors: list[str] = []
    with _client(url, token) as c:
        for k in range(warmup + n):
            if k == warmup:
                snap = _cpu_snapshot(pid)
            t = time.perf_counter()
            got, err = _post(c, payload)
            dt = (time.perf_counter() - t) * 1000
            if err:
                errors.append(err)
            elif k >= warmup:
                lat.append(dt)
    return {"p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "min_ms": round(min(lat), 2) if lat else None,
            "requests": n, "errors": len(errors), "first_errors": errors[:3],
            "other_cpu_cores": _other_cores(snap, _cpu_snapshot(pid)) if n else None}


Record = tuple[float, float, int, str | None]  # a request: (done at, seconds, images answered, error or None)


def concurrent(url: str, token: str, payload: bytes, clients: int, seconds: float, warm_s: float = 0.0,
               pid: int | None = None, sample_s: float = 1.0) -> dict[str, Any]:
    """``clients`` threads, each its own keep-alive connection, posting back to back for
    ``warm_s + seconds``; figures over the requests completed in the last ``seconds`` (the window),
    errors over all. With ``pid``: the server's RSS at the start, every ``sample_s`` and at the end,
    and its CPU use (cores) in the window."""
    records: list[list[Record]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    clock: dict[str, float] = {}
    threads = [threading.Thread(target=_worker, args=(url, token, payload, records[k], ready, go, clock),
                                name=f"bench-client-{k}", daemon=True) for k in range(clients)]
    for th in threads:
        th.start()
    ready.wait(timeout=120)
    rss = [(0.0, rss_mb(pid))] if pid else []
    start = time.perf_counter()
    clock["window"], clock["stop"] = start + warm_s, start + warm_s + seconds
    go.set()
    cpu0, cpu1 = _watch(threads, pid, start, clock, rss, sample_s)
    for th in threads:
        th.join()
    if pid:
        rss.append((time.perf_counter() - start, rss_mb(pid)))
    out = _window_figures([r for rs in records for r in rs], clock, seconds)
    if pid:
        out.update(_server_figures(rss, cpu0, cpu1))
    return out


def _worker(url: str, token: str, payload: bytes, out: list[Record], ready: threading.Barrier, go: threading.Event,
            clock: dict[str, float]) -> None:
    """One client thread: its connection opened, then requests back to back until ``clock["stop"]``."""
    with _client(url, token) as c:
        try:
            c.get("/health")  # the connection is open before the clock starts
        except Exception:
            pass
        ready.wait(timeout=120)
        go.wait(timeout=120)
        stop = clock["stop"]
        while time.perf_counter() < stop:
            t = time.perf_counter()
            got, err = _post(c, payload)
            done = time.perf_counter()
            out.append((done, done - t, got, err))


def _watch(threads: list[threading.Thread], pid: int | None, start: float, clock: dict[str, float],
           rss: list[tuple[float, float]], sample_s: float) -> tuple[Snapshot | None, Snapshot | None]:
    """While the clients run: with ``pid``, the server's RSS into ``rss`` every ``sample_s``, and the
    CPU snapshots at the window's start and end (else None, None)."""
    cpu0 = cpu1 = None
    while any(th.is_alive() for th in threads):
        now = time.perf_counter()
        if pid:
            if cpu0 is None and now >= clock["window"]:
                cpu0 = _cpu_snapshot(pid)
            if cpu1 is None and now >= clock["stop"]:
                cpu1 = _cpu_snapshot(pid)
            if now - start >= len(rss) * sample_s:
                rss.append((now - start, rss_mb(pid)))
        time.sleep(0.05)
    return cpu0, cpu1


def _window_figures(flat: list[Record], clock: dict[str, float], seconds: float) -> dict[str, Any]:
    """Throughput and latency over the requests answered in the window; errors over all."""
    window = [r for r in flat if clock["window"] <= r[0] <= clock["stop"] and r[3] is None]
    errors = [r[3] for r in flat if r[3] is not None]
    lat = [r[1] * 1000 for r in window]
    return {
        "img_s": round(sum(r[2] for r in window) / seconds, 3),
        "requests": len(flat), "window_requests": len(window),
        "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
        "errors": len(errors), "first_errors": errors[:5],
    }


def _server_figures(rss: list[tuple[float, float]], cpu0: Snapshot | None, cpu1: Snapshot | None) -> dict[str, Any]:
    """The server's RSS (start, end, max, samples) and the cores it, the clients and the rest took in the window."""
    out: dict[str, Any] = {"rss_start_mb": round(rss[0][1], 1), "rss_end_mb": round(rss[-1][1], 1)}
    out["rss_max_mb"] = round(max(r for _, r in rss), 1)
    out["rss_samples"] = [[round(t, 1), round(r, 1)] for t, r in rss]
    if cpu0 is not None and cpu1 is not None and cpu1[0] > cpu0[0]:
        server, bench = ((b - a) / (cpu1[0] - cpu0[0]) for a, b in zip(cpu0[1:3], cpu1[1:3]))
        # CPU the rest of the machine took in the window: other load makes the ratios unreliable
        out["server_cpu_cores"], out["bench_cpu_cores"] = round(server, 2), round(bench, 2)
        out["other_cpu_cores"] = _other_cores(cpu0, cpu1)
    return out


# --- the bench ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """The HTTP phases' settings (module docstring: 1 client, the load, the soak)."""

    clients: int
    requests: int
    warm_s: float
    load_s: float
    soak_s: float
    rss_sample_s: float


@dataclass(frozen=True)
class Served:
    """What the server phases measured, and the server's process."""

    single: dict[str, Any]
    load: dict[str, Any]
    soak: dict[str, Any]
    pid: int
    start_s: float
    exit_code: int | None
    log_tail: str


def bench_api(model: str = "ViT-B-32", clients: int = 16, load_s: float = 60.0, soak_s: float = 300.0,
              warm_s: float = 5.0, requests: int = 50, forward_runs: int = 30, forward_batches: int = 3,
              size: tuple[int, int] = (640, 480), port: int = 0, rss_sample_s: float = 5.0) -> dict[str, Any]:
    """The bare forward pass, then `coldstart api` in its own process under the three phases, then
    the bare pass again (module docstring); print and return the figures."""
    phases = Phases(clients, requests, warm_s, load_s, soak_s, rss_sample_s)
    batcher = inspect.signature(Batcher).parameters  # the batcher `coldstart api` runs, at its defaults
    batch_images, batch_wait_ms = batcher["max_images"].default, batcher["max_wait_ms"].default
    payload = synthetic_jpeg(*size, seed=0)
    with tempfile.TemporaryDirectory(prefix="coldstart-bench-api-") as tmp:
        ws = init_workspace(Path(tmp) / "ws", params_text=demo_params(None, budget=10, model=model))
        synthetic_jpegs(ws.images, 4, seed=1)  # a workspace with images, as users have; no round
        clip = load_clip(clip_config(ws.params().model))
        pixel = clip.preprocess(Image.open(io.BytesIO(payload)).convert("RGB"))
        print(f"bench api: {model} ({clip.model_id}), one {size[0]}x{size[1]} JPEG ({len(payload) / 1024:.0f} KB) per "
              f"request, {clients} clients, load {load_s:g} s (+{warm_s:g} s ramp-up), soak {soak_s:g} s; "
              f"batcher {batch_images} images / {batch_wait_ms:g} ms; {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} cpus", flush=True)
        bare = bare_forward(clip, pixel, forward_runs, tuple(dict.fromkeys((batch_images, 16))), forward_batches)
        best_bs = max(bare["batched"], key=bare["batched"].get)
        print(f"  bare forward, single image       p50 {bare['single_ms']:8.1f} ms")
        for bs, v in bare["batched"].items():
            print(f"  bare forward, batch {bs:3d}          {v:8.2f} img/s")
        served = _serve(ws.root, port or _free_port(), Path(tmp) / "api.log", api_token(ws), payload, phases)
        # The same bare passes again, the server gone: a machine whose speed changed during the
        # run (other load) shows here, and then the ratios above are not to be trusted.
        after = bare_forward(clip, pixel, forward_runs, (best_bs,), forward_batches)
    settings = {"model": model, "model_id": clip.model_id, "weights": "random (seed 0)",
                "image": list(size), "jpeg_bytes": len(payload), "body": "raw image/jpeg, one image per request",
                "clients": clients, "requests": requests, "warm_s": warm_s, "load_s": load_s, "soak_s": soak_s,
                "forward_runs": forward_runs, "forward_batches": forward_batches,
                "batch_images": batch_images, "batch_wait_ms": batch_wait_ms,
                "server": "coldstart api (uvicorn, 1 worker), own process, HF_HUB_OFFLINE=1"}
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
               "device": str(clip.device)}
    drift = _print_drift(bare, after, best_bs)
    figures = _api_figures(bare, best_bs, after, drift, served, settings, machine)
    _report(figures, drift, served.log_tail)
    return figures


def _serve(workspace: Path, port: int, log_path: Path, token: str, payload: bytes, phases: Phases) -> Served:
    """`coldstart api` on ``workspace`` in its own process, driven through the three phases, stopped."""
    with Server(workspace, port, log_path) as server:
        print(f"  coldstart api up in {server.start_s:.1f} s (pid {server.pid}, RSS {rss_mb(server.pid):.0f} MB)",
              flush=True)
        single = sequential(server.url, token, payload, phases.requests, pid=server.pid)
        if single["p50_ms"] is None:
            raise RuntimeError(f"coldstart api answered none of {phases.requests} requests: {single['first_errors']}\n"
                               f"{server.log_tail()}")
        print(f"  1 client, {phases.requests} requests         p50 {single['p50_ms']:8.1f} ms  "
              f"p90 {single['p90_ms']:8.1f} ms  ({single['errors']} errors)", flush=True)
        clients, load_s, soak_s = phases.clients, phases.load_s, phases.soak_s
        load = concurrent(server.url, token, payload, clients, load_s, phases.warm_s, server.pid)
        print(f"  {clients} clients, {load_s:g} s              {load['img_s']:8.2f} img/s  p50 {load['p50_ms']} ms  "
              f"p99 {load['p99_ms']} ms  ({load['errors']} errors)\n"
              f"     cpu cores used in the window: server {load.get('server_cpu_cores')}, clients "
              f"{load.get('bench_cpu_cores')}, other processes {load.get('other_cpu_cores')}",
              flush=True)
        soak = concurrent(server.url, token, payload, clients, soak_s, 0.0, server.pid, phases.rss_sample_s)
        print(f"  soak, {clients} clients, {soak_s:g} s        {soak['img_s']:8.2f} img/s  "
              f"{soak['requests']} requests, "
              f"{soak['errors']} errors; server RSS {soak['rss_start_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB "
              f"(max {soak['rss_max_mb']:.0f}); other processes {soak.get('other_cpu_cores')} cores", flush=True)
        log_tail = server.log_tail(2000)
    return Served(single, load, soak, server.pid, server.start_s, server.exit_code, log_tail)


def _print_drift(bare: dict[str, Any], after: dict[str, Any], best_bs: int) -> float:
    """The bare pass after the server against before: its batched throughput's change (printed)."""
    drift: float = after["batched"][best_bs] / bare["batched"][best_bs] - 1
    print(f"  bare forward again, after:       p50 {after['single_ms']:8.1f} ms, batch {best_bs}: "
          f"{after['batched'][best_bs]:.2f} img/s ({drift:+.1%})"
          + ("  -- the machine's speed changed during the run: rerun on a quiet machine" if abs(drift) > 0.1 else ""),
          flush=True)
    return drift


def _api_figures(bare: dict[str, Any], best_bs: int, after: dict[str, Any], drift: float, served: Served,
                 settings: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """Every figure: the targets' first (ratios from the rounded bare figures), then the details."""
    forward_single, forward_batched = round(bare["single_ms"], 2), round(bare["batched"][best_bs], 3)
    single, load, soak = served.single, served.load, served.soak
    p50_target = round(1.2 * forward_single + 20.0, 2)
    return {
        "p50_ms": single["p50_ms"],
        "forward_single_ms": forward_single,
        "throughput_img_s": load["img_s"],
        "forward_batched_img_s": forward_batched,
        "soak_errors": soak["errors"],
        "rss_growth": round(soak["rss_end_mb"] / soak["rss_start_mb"] - 1, 4),
        "p50_target_ms": p50_target,
        "p50_over_target": round(single["p50_ms"] / p50_target, 3),
        "throughput_ratio": round(load["img_s"] / forward_batched, 3),
        "p90_ms": single["p90_ms"],
        "single_errors": single["errors"],
        "other_cpu_cores": {"bare_forward": bare["other_cpu_cores"], "single": single["other_cpu_cores"],
                            "load": load.get("other_cpu_cores"), "soak": soak.get("other_cpu_cores"),
                            "bare_forward_after": after["other_cpu_cores"]},
        "forward_single_p90_ms": round(bare["single_p90_ms"], 2),
        "forward_batched_by_size": {str(bs): round(v, 3) for bs, v in bare["batched"].items()},
        "forward_batch_size": best_bs,
        "forward_after": {"single_ms": round(after["single_ms"], 2),
                          "batched_img_s": round(after["batched"][best_bs], 3), "batched_drift": round(drift, 4)},
        "load": {k: v for k, v in load.items() if k != "rss_samples"},
        "soak": soak,
        "server": {"pid": served.pid, "start_s": round(served.start_s, 2), "exit_code": served.exit_code},
        "first_errors": single["first_errors"] + load["first_errors"] + soak["first_errors"],
        "settings": settings,
        "machine": machine,
    }


def _report(figures: dict[str, Any], drift: float, log_tail: str) -> None:
    """Print the first errors, whether the machine was quiet (into ``figures["quiet"]``) and the targets."""
    if figures["first_errors"]:
        print("  first errors: " + "; ".join(figures["first_errors"][:3]) + f"\n  server log tail:\n{log_tail}")
    cores = figures["other_cpu_cores"]
    other = max(cores["bare_forward"], cores["bare_forward_after"], cores["single"] or 0.0, cores["load"] or 0.0,
                cores["soak"] or 0.0)
    if other > 0.2 or abs(drift) > 0.1:
        print(f"  WARNING: other processes took up to {other:.2f} cores, the bare forward pass moved {drift:+.1%} "
              f"between before and after: this machine was not quiet, the ratios are not to be trusted")
    figures["quiet"] = other <= 0.2 and abs(drift) <= 0.1
    forward_single, p50_target = figures["forward_single_ms"], figures["p50_target_ms"]
    print(f"  single-request p50 target: 1.2 x {forward_single:.1f} + 20 = {p50_target:.1f} ms")
    for key in ("p50_over_target", "throughput_ratio", "soak_errors", "rss_growth"):
        print(TARGETS[key].line(figures[key]))
