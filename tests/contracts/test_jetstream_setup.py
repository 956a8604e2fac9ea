"""The first parts of the JetStream store: subject layout and stream setup, on a real
nats-server (the store itself is still to come, see docs/jetstream-facts.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import api

from wakeful.transports.jetstream.stream import (
    JetStreamSetupError,
    check_server_version,
    ensure_stream,
)
from wakeful.transports.jetstream.subjects import Layout, escape, fnv1a32, partition, unescape

from ..nats_fixtures import NatsServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with NatsServer(tmp_path / "nats") as s:
        yield s


def test_ids_are_escaped_for_subject_tokens_and_round_trip() -> None:
    for token in ["c1", "a.b", "~", "x~2Ey", "user@example.com:42", "..", "a-b_c", "~7E."]:
        escaped = escape(token)
        assert "." not in escaped and " " not in escaped
        assert unescape(escaped) == token
    assert escape("plain") == "plain"
    with pytest.raises(ValueError, match="bad escape"):
        unescape("a~zz")


def test_partitions_are_fnv1a_and_spread_evenly() -> None:
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C  # the published FNV-1a-32 test vector
    counts = Counter(partition("agent", f"user-{i}", 16) for i in range(4000))
    assert set(counts) == set(range(16))
    assert max(counts.values()) < 2 * min(counts.values())
    layout = Layout(16)
    subject = layout.events("/agent/user.one@x")
    assert subject.endswith(".agent.user~2Eone@x.ev")
    assert Layout.address_of(subject) == "/agent/user.one@x"
    assert layout.timer("/agent/a", "wk:approval:c.1").endswith(".tmr.wk:approval:c~2E1")
    with pytest.raises(ValueError, match="partitions must be at least 1"):
        Layout(0)


def test_old_servers_are_refused_with_what_to_do() -> None:
    too_old = r"nats-server 2\.11\.4 at s is too old: .* 2\.12"
    with pytest.raises(JetStreamSetupError, match=too_old):
        check_server_version((2, 11, 4), "s")
    check_server_version((2, 12, 0), "s")


async def test_stream_is_created_with_its_settings_then_accepted(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    try:
        info = await ensure_stream(nc, "WAKEFUL", 1, "file")
        cfg = info.config
        assert cfg.subjects == ["wk.>"]
        assert (cfg.allow_atomic, cfg.allow_msg_schedules, cfg.allow_msg_ttl, cfg.allow_direct) == (
            True,
            True,
            True,
            True,
        )
        again = await ensure_stream(nc, "WAKEFUL", 1, "file")  # exists and fits
        assert again.config.name == "WAKEFUL"
    finally:
        await nc.close()


async def test_a_stream_that_does_not_fit_is_refused(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().add_stream(api.StreamConfig(name="OLD", subjects=["other.>"]))
        with pytest.raises(JetStreamSetupError) as info:
            await ensure_stream(nc, "OLD", 1, "file")
        message = str(info.value)
        assert "stream 'OLD'" in message and "do not include ['wk.>']" in message
        assert "allow_atomic is false, needs true" in message
        assert "Edit the stream to match, delete it, or give JetStreamStore another" in message
        with pytest.raises(ValueError, match="replicas=2; use 1, 3 or 5"):
            await ensure_stream(nc, "X", 2, "file")
    finally:
        await nc.close()


async def test_a_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "plain", jetstream=False) as plain:
        nc = await nats.connect(plain.url)
        try:
            with pytest.raises(JetStreamSetupError, match=r"JetStream is not enabled .* -js"):
                await ensure_stream(nc, "WAKEFUL", 1, "file")
        finally:
            await nc.close()


def test_server_timestamps_parse_with_any_number_of_fraction_digits() -> None:
    from wakeful.transports.jetstream.stream import parse_stamp as _parse_stamp

    base = _parse_stamp("2026-11-22T06:48:06Z")
    assert _parse_stamp("2026-11-22T06:48:06.96693Z") - base == pytest.approx(0.96693)
    assert _parse_stamp("2026-11-22T06:48:06.123456789Z") - base == pytest.approx(0.123456789)
