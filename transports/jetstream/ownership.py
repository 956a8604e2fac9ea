"""Partition leases: how several worker processes share a stream's partitions.

Every worker keeps a member record `wk.member.<worker>` and one lease record
`wk.lease.<p>` per partition it holds, both in the stream itself, both published
with a per-message TTL (`Nats-TTL`) and `Nats-Rollup: sub`, so a subject holds
one record and a worker that dies leaves nothing behind once its TTL runs out.
A lease is taken or renewed with `Nats-Expected-Last-Subject-Sequence`: 0 to
take a free partition, the holder's last lease seq to renew. A worker that
loses that race knows at once that the partition is not (or no longer) its own.

Each tick (a third of the TTL) a worker renews its member record and its
leases, counts the live members, and moves toward its fair share
(`ceil(partitions / members)`): it takes free partitions while it has fewer,
and hands back the highest-numbered ones while it has more. Handing back is
graceful: the partition leaves `serving` at once (its wakes then only reach
entities whose runs live in this process), the lease is kept (renewed) until
no run of this worker in that partition needs the process (`busy`) or
`drain_timeout` passes, then released with an empty record.

Leases decide who *should* serve a partition; they are not the fence. Two
workers that both believe they hold a partition (a paused process that wakes
after its lease expired) still cannot fork an entity: every commit is guarded
by the entity's expected last sequence, and the loser reloads.

Why leases and not priority groups with `pinned_client`: a pinned consumer
picks *one* puller per partition, but nothing in it spreads partitions evenly
over workers: that needs membership, which the member records give, and with
membership in hand a lease per partition is one guarded publish, the same
mechanism as a commit (docs/jetstream-facts.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from wakeful.runtime.errors import WakefulError

from .stream import direct_get, parse_stamp
from .subjects import PREFIX

log = logging.getLogger("wakeful.jetstream")

CONFLICT_CODES = (10071, 10164)
CLOCK_SLACK = 1.0
"""Seconds a record may outlive its TTL by our clock before we treat it as expired."""


class Leases:
    """The partition leases of one worker."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        partitions: int,
        worker: str,
        *,
        ttl: float,
        drain_timeout: float,
        acquired: Callable[[int], Awaitable[None]],
        released: Callable[[int], Awaitable[None]],
        busy: Callable[[int], bool],
        timeout: float,
    ) -> None:
        if ttl < 1.0:
            raise ValueError(f"lease_ttl={ttl}: use at least 1 second (Nats-TTL granularity)")
        self.nc = nc
        self.stream = stream
        self.partitions = partitions
        self.worker = worker
        self.ttl = ttl
        self.drain_timeout = drain_timeout
        self.timeout = timeout
        self._acquired = acquired
        self._released = released
        self._busy = busy
        self.held: dict[int, int] = {}
        """Partition -> stream seq of our current lease record."""
        self.serving: set[int] = set()
        """Held partitions whose wakes we serve (held minus those draining)."""
        self._draining: dict[int, float] = {}
        """Partition -> deadline of the graceful hand-back."""
        self.members = 1
        self.settled = False
        """Whether the last tick ended with our fair share held or nothing left to take
        (False while partitions wait for a holder, so `pending` does not say idle)."""

    # -- records -----------------------------------------------------------------------

    def _headers(self, expected: int | None) -> dict[str, str]:
        h = {"Nats-TTL": f"{max(1, math.ceil(self.ttl))}s", "Nats-Rollup": "sub"}
        if expected is not None:
            h["Nats-Expected-Last-Subject-Sequence"] = str(expected)
        return h

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int | None:
        """The seq of the record, or None when its guard refused it."""
        js = self.nc.jetstream()
        try:
            ack = await js.publish(subject, body, timeout=self.timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in CONFLICT_CODES:
                return None
            raise
        return int(ack.seq)

    async def _records(self, pattern: str) -> dict[str, tuple[int, bytes]]:
        """The last live record of each subject matching `pattern`: subject -> (seq, body).

        A record older than its TTL counts as empty even while it is still stored: the
        server removes expired messages on its own schedule (and a new stream leader
        after an election may take a while), the lease must not outlive its TTL."""
        found = await direct_get(
            self.nc, self.stream, {"multi_last": [pattern], "batch": 10_000}, self.timeout
        )
        now = time.time()
        out: dict[str, tuple[int, bytes]] = {}
        for msg in found:
            h = msg.headers or {}
            stamp = h.get("Nats-Time-Stamp")
            expired = stamp is not None and now - parse_stamp(stamp) > self.ttl + CLOCK_SLACK
            out[h["Nats-Subject"]] = (int(h["Nats-Sequence"]), b"" if expired else bytes(msg.data))
        return out

    # -- the loop ------------------------------------------------------------------------

    @property
    def period(self) -> float:
        return self.ttl / 3

    async def run(self) -> None:
        """Tick until cancelled; a failed tick (server away) is retried next period."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.period
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick = loop.time() + self.period  # a slow tick does not delay the next
            try:
                await self.tick()
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error, WakefulError) as exc:
                log.warning("lease tick of worker %s failed: %r", self.worker, exc)

    async def tick(self) -> None:
        self.settled = False
        me = self.worker.encode()
        await self._publish(f"{PREFIX}.member.{self.worker}", me, self._headers(None))
        held = list(self.held.items())
        # All renewals at once: one round trip however many partitions we hold (one by
        # one, a busy connection could stretch them past the TTL).
        answers = await asyncio.gather(
            *(self._publish(self._lease(p), me, self._headers(seq)) for p, seq in held)
        )
        for (p, _), renewed in zip(held, answers, strict=True):
            if p not in self.held:
                continue
            if renewed is None:
                # Either another worker holds it now, or our last renewal landed and
                # only its answer was lost (an election): then the record is ours.
                current = (await self._records(self._lease(p))).get(self._lease(p))
                if current is not None and current[1] == me:
                    self.held[p] = current[0]
                    continue
                log.warning("worker %s lost partition %d", self.worker, p)
                await self._drop(p)
            else:
                self.held[p] = renewed
        members = await self._records(f"{PREFIX}.member.*")
        self.members = max(1, sum(1 for _, body in members.values() if body))
        fair = math.ceil(self.partitions / self.members)
        await self._hand_back(fair)
        if len(self.held) < fair:
            # A partition is free when its lease subject is empty (expired) or holds an
            # empty record (handed back); the guard is the seq we saw.
            leases = await self._records(f"{PREFIX}.lease.*")
            free: list[tuple[int, int]] = []
            for p in range(self.partitions):
                seq, body = leases.get(self._lease(p), (0, b""))
                if p not in self.held and not body:
                    free.append((p, seq))
            random.shuffle(free)  # fewer collisions when several workers start together
            wanted = fair - len(self.held)
            failed = False
            for p, seen in free[:wanted]:
                got = await self._publish(self._lease(p), me, self._headers(seen))
                if got is None:
                    continue  # another worker was faster
                self.held[p] = got
                self.serving.add(p)
                try:
                    await self._acquired(p)
                except Exception as exc:  # the server away: hand it back, try next tick
                    log.warning("worker %s could not take partition %d: %r", self.worker, p, exc)
                    failed = True
                    with contextlib.suppress(Exception):
                        await self._release(p)
            self.settled = not failed and (len(self.held) >= fair or len(free) <= wanted)
        else:
            self.settled = True

    async def _hand_back(self, fair: int) -> None:
        now = time.monotonic()
        excess = len(self.held) - fair
        for p in sorted(self.held, reverse=True):
            if excess <= len(self._draining):
                break
            if p not in self._draining:
                self._draining[p] = now + self.drain_timeout
                self.serving.discard(p)
        for p, deadline in list(self._draining.items()):
            if p not in self.held:
                del self._draining[p]
            elif not self._busy(p) or now >= deadline:
                await self._release(p)

    async def _release(self, p: int) -> None:
        seq = self.held.get(p)
        await self._drop(p)
        if seq is not None:
            await self._publish(self._lease(p), b"", {**self._headers(seq), "Nats-TTL": "1s"})

    async def _drop(self, p: int) -> None:
        if p in self.held:
            del self.held[p]
            self._draining.pop(p, None)
            self.serving.discard(p)
            await self._released(p)

    async def release_all(self) -> None:
        """Hand every partition back at once (a clean shutdown) and leave membership."""
        for p in list(self.held):
            await self._release(p)
        await self._publish(
            f"{PREFIX}.member.{self.worker}", b"", {**self._headers(None), "Nats-TTL": "1s"}
        )

    @staticmethod
    def _lease(p: int) -> str:
        return f"{PREFIX}.lease.{p}"
