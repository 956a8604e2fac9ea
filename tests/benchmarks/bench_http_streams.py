"""Append throughput of the generic Durable Streams endpoint beside the Node reference server.

    python tests/benchmarks/bench_http_streams.py [--servers python-sqlite,node-file,...]
        [--writers 8] [--appends 250] [--sequential 1000] [--json out.json]

Servers, each started here as a subprocess on a free loopback port:

    python-sqlite   tests/http/ds_server.py --sqlite (SQLiteStreams, WAL, synchronous=NORMAL)
    python-memory   tests/http/ds_server.py --memory (MemoryStreams)
    node-file       @durable-streams/server DurableStreamTestServer with dataDir (file-backed)
    node-memory     @durable-streams/server DurableStreamTestServer in memory

The Node server is installed with npm into the same cache dir as .ci/conformance
uses (`${XDG_CACHE_HOME:-~/.cache}/wakeful-conformance`) when it is not there.
All servers get the same load from this process, through the raw keep-alive client
of `_http.py` (httpx would measure itself: it tops out near 300 requests/s):
`--writers` concurrent writers appending `--appends` small JSON messages each to
one JSON stream, then one writer appending `--sequential` messages one after
another. All servers run at once and are loaded in turns; each figure is the
median over `--repeat` turns (default 5), each on a fresh stream. Prints a
table; `--json` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import Connection
from _stores import write_json

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("python-sqlite", "python-memory", "node-file", "node-memory")
NODE_PACKAGE = "@durable-streams/server@0.3.7"
NODE_LAUNCHER = """
import { DurableStreamTestServer } from %(module)s
const [port, dataDir] = [Number(process.argv[2]), process.argv[3]]
const server = new DurableStreamTestServer({
  port, host: "127.0.0.1", dataDir: dataDir || undefined, compression: false,
})
await server.start()
const stop = async () => { await server.stop(); process.exit(0) }
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("WAKEFUL_CONFORMANCE_DIR", Path(base) / "wakeful-conformance"))


def node_server_module() -> Path:
    """The reference server's ESM entry point, installed with npm when missing."""
    cache = cache_dir()
    module = cache / "node_modules/@durable-streams/server/dist/index.js"
    if not module.exists():
        cache.mkdir(parents=True, exist_ok=True)
        if not (cache / "package.json").exists():
            (cache / "package.json").write_text('{"name": "wakeful-conformance", "private": true}')
        print(f"installing {NODE_PACKAGE} into {cache}", file=sys.stderr)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", NODE_PACKAGE],
            cwd=cache,
            check=True,
        )
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(kind: str, port: int, data: Path) -> list[str]:
    if kind.startswith("python"):
        store = ["--memory"] if kind == "python-memory" else ["--sqlite", str(data / "bench.db")]
        server = ROOT / "tests/http/ds_server.py"
        return [sys.executable, str(server), *store, "--port", str(port)]
    launcher = data / "node_server.mjs"
    module = node_server_module()
    launcher.write_text(NODE_LAUNCHER % {"module": repr(module.as_uri())})
    data_dir = str(data / "node-data") if kind == "node-file" else ""
    return ["node", str(launcher), str(port), data_dir]


class Server:
    def __init__(self, kind: str, url: str, pid: int) -> None:
        self.kind, self.url, self.pid = kind, url, pid

    def cpu(self) -> float:
        """CPU seconds the server process (all its threads) used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def running(kind: str, data: Path) -> AsyncIterator[Server]:
    """The server `kind` as a subprocess on a free port, stopped at the end."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *command(kind, port, data), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/v1/stream"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                if proc.returncode is not None:
                    raise RuntimeError(f"{kind} exited with {proc.returncode} while starting")
                with contextlib.suppress(httpx.TransportError):
                    await http.head(f"{url}/ready")
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{kind} did not answer on port {port}")
        yield Server(kind, url, proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def load(
    http: httpx.AsyncClient, server: Server, writers: int, appends: int
) -> tuple[float, list[float], float]:
    """`writers` concurrent writers, `appends` each: (seconds, per-append latencies,
    server CPU seconds per append)."""
    stream = f"{server.url}/bench-{time.monotonic_ns()}"
    headers = {"content-type": "application/json"}
    created = await http.put(stream, headers=headers)
    assert created.status_code == 201, created.text
    latencies: list[float] = []

    path = urlsplit(stream).path

    async def writer(w: int) -> None:
        conn = await Connection.open(server.url)
        try:
            for i in range(appends):
                body = b'{"writer":%d,"i":%d,"text":"a small message of about 64 bytes"}' % (w, i)
                started = time.perf_counter()
                status, _, content = await conn.request("POST", path, body, headers)
                latencies.append(time.perf_counter() - started)
                assert status == 204, content
        finally:
            await conn.close()

    cpu = server.cpu()
    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - started
    cpu = (server.cpu() - cpu) / (writers * appends)
    check = await http.get(stream)
    assert len(check.json()) == writers * appends
    return elapsed, latencies, cpu


async def measure(servers: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """All servers up at once, measured in turns (round robin), so noise from the
    machine spreads over all of them; the median of each figure over the turns."""
    keys = ("conc", "conc_p50", "conc_p99", "conc_cpu", "seq", "seq_p50", "seq_cpu")
    runs: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in servers}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            up: dict[str, Server] = {}
            for kind in servers:
                data = Path(tmp) / kind
                data.mkdir()
                up[kind] = await stack.enter_async_context(running(kind, data))
            limits = httpx.Limits(max_connections=args.writers + 2)
            clients = {
                kind: await stack.enter_async_context(httpx.AsyncClient(limits=limits))
                for kind in servers
            }
            for kind in servers:
                await load(clients[kind], up[kind], 2, 50)  # warm up
            for turn in range(args.repeat):
                for kind in servers:
                    http, server, r = clients[kind], up[kind], runs[kind]
                    elapsed, lat, cpu = await load(http, server, args.writers, args.appends)
                    r["conc"].append(args.writers * args.appends / elapsed)
                    r["conc_p50"].append(statistics.median(lat) * 1000)
                    r["conc_p99"].append(statistics.quantiles(lat, n=100)[98] * 1000)
                    r["conc_cpu"].append(cpu * 1e6)
                    elapsed, lat, cpu = await load(http, server, 1, args.sequential)
                    r["seq"].append(args.sequential / elapsed)
                    r["seq_p50"].append(statistics.median(lat) * 1000)
                    r["seq_cpu"].append(cpu * 1e6)
                print(f"turn {turn + 1}/{args.repeat} done", file=sys.stderr)
    return {s: {k: statistics.median(v) for k, v in runs[s].items()} for s in servers}


ROWS = (
    ("conc", "appends/s, {w} writers"),
    ("conc_p50", "median ms, {w} writers"),
    ("conc_p99", "p99 ms, {w} writers"),
    ("conc_cpu", "server CPU µs/append, {w} w."),
    ("seq", "appends/s, 1 writer"),
    ("seq_p50", "median ms, 1 writer"),
    ("seq_cpu", "server CPU µs/append, 1 w."),
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--appends", type=int, default=250, help="per writer")
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown server {unknown}; use {', '.join(SERVERS)}")
    results = await measure(servers, args)
    width = 30
    print(f"{'':{width}}  " + "  ".join(f"{s:>14}" for s in servers))
    for key, label in ROWS:
        cells = "  ".join(f"{results[s][key]:>14,.1f}" for s in servers)
        print(f"{label.format(w=args.writers):{width}}  {cells}")
    proc = await asyncio.create_subprocess_exec("node", "--version", stdout=asyncio.subprocess.PIPE)
    node = (await proc.communicate())[0].decode().strip()
    write_json(args, results, node=node, node_package=NODE_PACKAGE)


if __name__ == "__main__":
    asyncio.run(main())
