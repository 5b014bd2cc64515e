"""Load test of ``ssah serve``: throughput and latency of search by id and by image.

``python -m ssah bench serve [--items 1000000] [--engines flat,mih] [--concurrency 1,8,32]
[--duration 30] [--max-requests 20000] [--bits 64] [--checkpoint C --index I]
[--client raw|httpx] [--out ...]``

Starts the server (``python -m ssah serve``, one process, 127.0.0.1 on a free port)
for each engine, then drives it with 1, 8 and 32 concurrent clients (asyncio, keep-alive
connections, one client process) for ``--duration`` seconds or ``--max-requests`` requests per
level, whichever comes first, after a short warm-up.  The default client is a minimal asyncio
HTTP/1.1 client (``--client httpx`` uses httpx), so that on a small machine the load generator
takes little of the CPU it shares with the server.  Two workloads: ``POST /search`` with
JSON ``{"id": random id, "k": 10}`` and with a multipart PNG upload (32x32, encoded by the
model).  Reports requests/s, p50/p99/max latency (measured by the client, so including HTTP and
the client's own overhead) and errors (any non-200 answer or transport error).

Without ``--checkpoint`` the model is a randomly initialised small-cnn H-Net of ``--bits``
bits on 32x32 RGB input (the weights do not change the cost); without ``--index`` the index
holds ``--items`` random codes (``--data uniform`` or ``clustered``) with random labels.
Writes a markdown report (``--out``, default results/serve/README.md); ``--no-write`` only prints.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = "results/serve/README.md"
NOTES_MARKER = "<!-- notes below are kept when the benchmark rewrites this file -->"
WORKLOADS = ("id", "image")


# ---------------------------------------------------------------------------------------------
# fixtures: a model and an index without training
# ---------------------------------------------------------------------------------------------
def synthetic_checkpoint(directory, bits: int = 64, channels: int = 3, size: int = 32,
                         dataset: str = "digits", backbone: str = "small-cnn", seed: int = 0,
                         data_path: str | None = None) -> Path:
    """A loadable checkpoint of a randomly initialised H-Net (no A-Net, epoch 0).

    Its config names ``dataset`` (so the service can show thumbnails from it) and the input
    ``size`` x ``size`` with ``channels`` channels.  Returns the checkpoint path.
    """
    import torch
    from .. import __version__
    from ..config import Config
    from ..train.build import build_hnet
    from ..train.checkpoint import save_checkpoint
    cfg = Config()
    cfg.run_dir = str(directory)
    cfg.data.dataset, cfg.data.path = dataset, data_path
    cfg.data.image_size, cfg.data.channels = size, channels
    cfg.model.backbone, cfg.model.bits, cfg.model.pretrained = backbone, bits, False
    torch.manual_seed(seed)
    hnet = build_hnet(cfg.model, channels).eval()
    state = {"hnet": hnet.state_dict(), "config": cfg.to_dict(), "bits": bits,
             "backbone": backbone, "variant": cfg.train.variant, "in_channels": channels,
             "input_size": size, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
             "version": __version__}
    return save_checkpoint(state, Path(directory) / "checkpoints", 0, keep=1)


def synthetic_index(path, n: int, bits: int, engine: str = "flat", kind: str = "uniform",
                    seed: int = 0, labels: int = 10) -> Path:
    """Save an index of ``n`` random ``bits``-bit codes (``kind`` uniform or clustered)."""
    from ..index import HammingIndex
    from .search import make_codes
    packed = make_codes(n, bits, kind, seed)
    lab = np.random.default_rng(seed + 1).integers(0, labels, n)
    index = HammingIndex(bits, engine=engine)
    try:
        index.add_packed(packed, metadata={"label": lab})
        return index.save(path)
    finally:
        index.close()


def png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the server process
# ---------------------------------------------------------------------------------------------
class Server:
    """``ssah serve`` in a child process on 127.0.0.1; stopped on exit."""

    def __init__(self, checkpoint, index, extra=(), startup_timeout: float = 300.0,
                 log_path=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ssah", "serve", "--checkpoint", str(checkpoint),
               "--index", str(index), "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--no-access-log", "--log-level", "warning", *extra]
        self.log = open(log_path or os.devnull, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(startup_timeout)

    def _wait(self, timeout):
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start within {timeout:g} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------------
# the load
# ---------------------------------------------------------------------------------------------
def _multipart(image: bytes, k: int, boundary: str = "ssahbenchboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client for ``POST /search`` (the load generator).

    It costs the shared CPU a small fraction of what a general client does, so the latencies
    measure the server. Responses are checked: status 200 and a JSON body with results.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
            self.writer = None
        return status, data


async def _level(url: str, workload: str, concurrency: int, duration: float, max_requests: int,
                 ids: np.ndarray, images: list[bytes], k: int, warmup: int, seed: int,
                 client: str = "raw") -> dict:
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    forms = [_multipart(img, k) for img in images]

    def request():
        if workload == "id":
            return (f'{{"id": {int(rng.choice(ids))}, "k": {k}}}'.encode(), "application/json")
        return forms[int(rng.integers(len(forms)))]

    def check(status, data):
        if status != 200:
            return f"{status} {data[:120]!r}"
        if b'"results"' not in data:
            return f"200 without results: {data[:120]!r}"
        return None

    if client == "httpx":
        import httpx
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        session = httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0)

        async def post(conn, body, ctype):
            r = await session.post("/search", content=body, headers={"content-type": ctype})
            return r.status_code, r.content
        conns = [None] * concurrency
    else:
        session = None
        conns = [RawConnection(host, int(port)) for _ in range(concurrency)]

        async def post(conn, body, ctype):
            return await asyncio.wait_for(conn.post("/search", body, ctype), 60.0)

    try:
        for _ in range(warmup):
            why = check(*await post(conns[0], *request()))
            if why:
                raise RuntimeError(f"warm-up request failed: {why}")
        deadline = time.perf_counter() + duration

        async def worker(conn):
            nonlocal sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                body, ctype = request()
                t = time.perf_counter()
                try:
                    why = check(*await post(conn, body, ctype))
                except (OSError, ValueError, IndexError, asyncio.TimeoutError,
                        asyncio.IncompleteReadError, ConnectionError) as e:
                    why = f"{type(e).__name__}: {e}"
                    if conn is not None:
                        await conn.close()
                        conn.writer = None
                except Exception as e:          # httpx transport errors
                    why = f"{type(e).__name__}: {e}"
                if why:
                    errors.append(why)
                else:
                    latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        wall = time.perf_counter() - t0
    finally:
        if session is not None:
            await session.aclose()
        for c in conns:
            if c is not None:
                await c.close()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"workload": workload, "concurrency": concurrency, "requests": sent,
            "errors": len(errors), "error_sample": errors[:3], "wall_s": wall,
            "rps": len(latencies) / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(np.max(lat))}


def run_levels(url: str, workloads, concurrency, duration, max_requests, ids, images, k=10,
               warmup=20, progress=True, client: str = "raw") -> list[dict]:
    rows = []
    for w in workloads:
        for c in concurrency:
            row = asyncio.run(_level(url, w, c, duration, max_requests, ids, images, k,
                                     warmup, seed=c, client=client))
            rows.append(row)
            if progress:
                print(f"  {w:>5}  c={c:<3} {row['requests']:>6} req  {row['rps']:8.1f} req/s  "
                      f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                      f"errors {row['errors']}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import fastapi
    import torch
    import uvicorn
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, fastapi "
            f"{fastapi.__version__}, uvicorn {uvicorn.__version__}")


def table(rows: list[dict]) -> str:
    lines = ["| engine | items | query | clients | requests | errors | req/s | p50 ms | p99 ms | max ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['items']:,} | {r['workload']} | {r['concurrency']} | "
                     f"{r['requests']:,} | {r['errors']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    return "\n".join(lines)


def verdict(rows: list[dict], target_ms: float = 100.0) -> str:
    """One line per engine: zero errors and p99 < target for search by id at every level?"""
    lines = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        mine = [r for r in rows if r["engine"] == engine]
        ids = [r for r in mine if r["workload"] == "id"]
        if not ids:
            continue
        errors = sum(r["errors"] for r in mine)
        over = [r["concurrency"] for r in ids if not r["p99_ms"] < target_ms]
        worst = max(ids, key=lambda r: r["p99_ms"])
        if errors == 0 and not over:
            lines.append(f"- `{engine}`: target met (zero errors, p99 by id < {target_ms:g} ms "
                         f"at every level; worst {worst['p99_ms']:.1f} ms).")
        else:
            lines.append(f"- `{engine}`: {errors} errors; p99 by id < {target_ms:g} ms at "
                         f"{', '.join(str(r['concurrency']) for r in ids if r['p99_ms'] < target_ms) or 'no'} "
                         f"clients, not at {', '.join(map(str, over)) or '-'} "
                         f"(worst {worst['p99_ms']:.1f} ms at {worst['concurrency']}).")
    return (f"Target: zero errors and p99 < {target_ms:g} ms for search by id.\n\n"
            + "\n".join(lines)) if lines else ""


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report_text(rows, argv, load_note: str, client: str = "raw") -> str:
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    cmd = (f"nice -n {niceness} " if niceness > 0 else "") + "python -m ssah bench serve " \
        + " ".join(shlex.quote(a) for a in argv)
    client_text = ("a minimal asyncio HTTP/1.1 keep-alive client (`RawConnection`, a small "
                   "fraction of the CPU a general client needs)" if client == "raw"
                   else "asyncio + httpx")
    return "\n".join([
        "# `ssah serve` load test",
        "",
        "Throughput and client-side latency of `POST /search` by database id (JSON "
        "`{\"id\": N, \"k\": 10}`) and by image (a 32x32 PNG upload, encoded by the model), "
        "at 1, 8 and 32 concurrent keep-alive clients. Produced by:",
        "",
        f"```sh\n{cmd}\n```",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}, commit {_commit()}.",
        "",
        load_note,
        "",
        table(rows),
        "",
        verdict(rows),
        "",
        "How it runs: one server process (`python -m ssah serve`, uvicorn, one "
        "event loop; searches in worker threads, at most one per core, under a readers-writer "
        "lock; encoding in a 2-thread pool) and one client process on the same machine: "
        f"{client_text}; its CPU time is part of every latency. Every response is checked "
        "(status 200 and a body with results); errors are other answers or transport errors. "
        "Each level runs for the given duration or request cap after 20 warm-up requests. "
        "Without `--checkpoint` the model is a randomly initialised small-cnn H-Net of the "
        "index's bit length on 32x32 RGB input (the weights do not change the cost); without "
        "`--index` the index holds random codes with random labels.",
        "",
    ])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="ssah bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=float, default=1e6, help="synthetic index size (default 1e6)")
    p.add_argument("--bits", type=int, default=64, help="code length of the synthetic model/index")
    p.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    p.add_argument("--engines", default="flat,mih", help="engines to serve in turn")
    p.add_argument("--concurrency", default="1,8,32", help="concurrent clients per level")
    p.add_argument("--workloads", default="id,image", help="id, image or both")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level (default 30)")
    p.add_argument("--max-requests", type=int, default=20000, help="request cap per level")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--checkpoint", help="serve this model instead of a random small-cnn")
    p.add_argument("--index", help="serve this index instead of a synthetic one")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: a minimal HTTP/1.1 client (default) or httpx")
    p.add_argument("--note", default="", help="a line about the machine's load, for the report")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    from ..errors import SSAHError
    try:
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    except ValueError:
        raise SSAHError(f"--concurrency must be integers, got {args.concurrency!r}") from None
    if not concurrency or min(concurrency) < 1:
        raise SSAHError("--concurrency takes positive integers, e.g. 1,8,32")
    bad = set(workloads) - set(WORKLOADS)
    if bad or not workloads:
        raise SSAHError(f"--workloads takes {', '.join(WORKLOADS)}, got {args.workloads!r}")
    if args.duration <= 0 or args.max_requests < 1:
        raise SSAHError("--duration and --max-requests must be positive")
    n = int(args.items)
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssah-bench-serve-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or synthetic_checkpoint(tmp / "model", bits=args.bits)
        if args.index:
            targets = [("saved", args.index)]
        else:
            targets = []
            for engine in engines:
                t = time.perf_counter()
                path = synthetic_index(tmp / f"idx-{engine}", n, args.bits, engine, args.data)
                print(f"built a {engine} index of {n:,} {args.data} {args.bits}-bit codes in "
                      f"{time.perf_counter() - t:.1f} s", flush=True)
                targets.append((engine, path.parent))
        for engine, index in targets:
            print(f"serving {index} ({engine})", flush=True)
            with Server(checkpoint, index, log_path=tmp / f"server-{engine}.log") as server:
                import httpx
                stats = httpx.get(server.url + "/stats", timeout=60).json()
                lo, hi = stats["id_range"]
                if hi - lo + 1 == stats["count"]:
                    ids = np.arange(lo, hi + 1)
                else:           # ids with gaps: query with a sample of real ones
                    ids = np.unique([httpx.get(server.url + "/random", timeout=60).json()["id"]
                                     for _ in range(200)])
                for row in run_levels(server.url, workloads, concurrency, args.duration,
                                      args.max_requests, ids, images, k=args.k,
                                      client=args.client):
                    row.update({"engine": stats["engine"], "items": stats["count"]})
                    rows.append(row)
    print()
    print(table(rows))
    print(verdict(rows))
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        note = args.note or ("The machine was shared with other work while this ran; the "
                             "numbers are lower bounds of what it can do alone.")
        text = report_text(rows, argv, note, args.client)
        if out.is_file():        # a hand-written part after the marker is kept
            old = out.read_text()
            if NOTES_MARKER in old:
                text += "\n" + old[old.index(NOTES_MARKER):]
        out.write_text(text)
        print(f"wrote {out}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
