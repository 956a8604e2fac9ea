"""Creating or checking the JetStream stream that holds everything of wakeful.

The stream needs nats-server 2.12 or newer (atomic batch publish, message
schedules), JetStream enabled, and these settings: `allow_atomic`,
`allow_msg_schedules`, `allow_msg_ttl`, `allow_direct`, subjects `wk.>`. An
existing stream with other settings is not changed behind the operator's back:
it is refused with an error that says what differs and what to do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from wakeful.runtime.errors import WakefulError

from .subjects import PREFIX

MIN_SERVER = (2, 12, 0)
SUBJECTS = [f"{PREFIX}.>"]
_json = msgspec.json.Encoder()
REQUIRED_FLAGS = ("allow_atomic", "allow_msg_schedules", "allow_msg_ttl", "allow_direct")


class JetStreamSetupError(WakefulError):
    """The server or the stream cannot hold wakeful as they are; the message says why."""


def check_server_version(version: tuple[int, int, int], server: str) -> None:
    if version < MIN_SERVER:
        have = ".".join(map(str, version))
        raise JetStreamSetupError(
            f"nats-server {have} at {server} is too old: wakeful needs 2.12 or newer "
            "(atomic batch publish, message schedules); upgrade the server"
        )


def wanted_config(name: str, replicas: int, storage: str) -> api.StreamConfig:
    if storage not in ("file", "memory"):
        raise ValueError(f"storage={storage!r}; use 'file' or 'memory'")
    if replicas not in (1, 3, 5):
        raise ValueError(f"replicas={replicas}; use 1, 3 or 5")
    return api.StreamConfig(
        name=name,
        subjects=list(SUBJECTS),
        storage=api.StorageType(storage),
        num_replicas=replicas,
        allow_atomic=True,
        allow_msg_schedules=True,
        allow_msg_ttl=True,
        allow_direct=True,
        allow_rollup_hdrs=True,
    )


def conflicts(have: api.StreamConfig, want: api.StreamConfig) -> list[str]:
    """What an existing stream's config lacks, one line per setting."""
    out: list[str] = []
    missing = [s for s in want.subjects or [] if s not in (have.subjects or [])]
    if missing:
        out.append(f"subjects {have.subjects} do not include {missing}")
    for flag in REQUIRED_FLAGS:
        if not getattr(have, flag):
            out.append(f"{flag} is false, needs true")
    if (have.num_replicas or 1) != want.num_replicas:
        out.append(
            f"num_replicas is {have.num_replicas}, this store was asked for {want.num_replicas}"
        )
    if have.storage != want.storage:
        out.append(
            f"storage is {_value(have.storage)}, this store was asked for {_value(want.storage)}"
        )
    return out


async def _until_led(
    js: Any, name: str, info: api.StreamInfo, wait: float = 30.0
) -> api.StreamInfo:
    """A new replicated stream answers only once its replicas elected a leader."""
    deadline = asyncio.get_running_loop().time() + wait
    while info.cluster is not None and not info.cluster.leader:
        if asyncio.get_running_loop().time() > deadline:
            raise JetStreamSetupError(f"stream {name!r} has no leader {wait}s after creation")
        await asyncio.sleep(0.05)
        info = await js.stream_info(name)
    return info


def _value(storage: Any) -> str:
    return str(getattr(storage, "value", storage))


async def ensure_stream(nc: Client, name: str, replicas: int, storage: str) -> api.StreamInfo:
    """Create the stream, or check that an existing one fits; raise `JetStreamSetupError`."""
    server = nc.connected_url.netloc if nc.connected_url else "the server"
    version = nc.connected_server_version
    check_server_version((version.major, version.minor, version.patch), server)
    want = wanted_config(name, replicas, storage)
    js = nc.jetstream()
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            info = await js.add_stream(want)
        except nats.js.errors.APIError as exc:
            raise JetStreamSetupError(
                f"cannot create stream {name!r} on {server}: {exc.description} "
                f"(err_code {exc.err_code})"
            ) from exc
        return await _until_led(js, name, info)
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
        raise JetStreamSetupError(
            f"JetStream is not enabled on the nats-server at {server}: start it with -js "
            "(or a jetstream {} block in its config)"
        ) from exc
    problems = conflicts(info.config, want)
    if problems:
        raise JetStreamSetupError(
            f"stream {name!r} on {server} exists with settings wakeful cannot use: "
            + "; ".join(problems)
            + ". Edit the stream to match, delete it, or give JetStreamStore another stream name"
        )
    return info


async def direct_get(nc: Client, stream: str, request: dict[str, Any], timeout: float) -> list[Msg]:
    """A direct get (`allow_direct`); a batch or multi-last request returns every reply
    up to the server's end marker (status 204)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    many = "batch" in request or "multi_last" in request
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _json.encode(request), reply=inbox)
        out: list[Msg] = []
        while True:
            msg = await sub.next_msg(timeout=timeout)
            status = (msg.headers or {}).get("Status")
            if status in ("204", "404"):
                return out
            if status == "503":  # no replica can answer now (an election): try again
                raise nats.errors.NoRespondersError
            if status:
                raise WakefulError(f"direct get failed: {status} {msg.headers}")
            out.append(msg)
            if not many:
                return out
    finally:
        await sub.unsubscribe()


def parse_stamp(stamp: str) -> float:
    """`Nats-Time-Stamp` (RFC 3339 in UTC, 0 to 9 fractional digits) as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)
