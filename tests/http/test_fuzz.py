"""Random requests against `wakeful serve` (a real process): no answer is a 5xx, and
afterwards every entity stream reads back whole, with no gap in its seqs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..nats_fixtures import free_port

ROOT = Path(__file__).resolve().parents[2]
TYPES = ["echo", "tooling", "gated", "listener"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    port = free_port()
    where = tmp_path_factory.mktemp("fuzz")
    db = where / "fuzz.db"
    log = (where / "server.log").open("wb")
    env = {
        **os.environ,
        "WAKEFUL_LONG_POLL_TIMEOUT": "0.2",
        "WAKEFUL_SSE_RECONNECT": "0.5",
        "WAKEFUL_MAX_BODY": "4096",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from wakeful.transports.cli import main; main()",
            "serve",
            "--store",
            f"sqlite:{db}",
            "--app",
            "tests.http.apps:registry",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"wakeful serve did not start: {(where / 'server.log').read_text()}"
                )
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=httpx.Timeout(5.0, read=2.0)) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        errors = (where / "server.log").read_text()
        assert "Traceback" not in errors, errors


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
segments = st.sampled_from(
    [*TYPES, "runs", "v1", "stream", "main", "approvals", "signals", "call-1", "cancel", "x"]
) | st.text(max_size=12)
ids = st.text(alphabet="abcAB09_-.:@", min_size=1, max_size=6) | st.text(max_size=6)
structured = st.tuples(
    st.sampled_from(TYPES),
    ids,
    st.sampled_from(["", "/main", "/approvals", "/approvals/call-1", "/signals/callback"]),
).map(lambda t: f"/{t[0]}/{quote(t[1], safe='')}{t[2]}")
runs = st.sampled_from(["/runs", "/runs/run_x", "/runs/run_x/stream", "/runs/run_x/cancel"])
streams = ids.map(lambda name: f"/v1/stream/{quote(name, safe='')}")
paths = (
    structured
    | runs
    | streams
    | st.lists(segments, max_size=5).map(
        lambda parts: "/" + "/".join(quote(p, safe="") for p in parts)
    )
)
params = st.dictionaries(
    st.sampled_from(["offset", "live", "cursor", "limit", "after", "status", "type", "stream"]),
    st.sampled_from(["-1", "now", "0", "long-poll", "sse", "true", "all", "5"])
    | st.text(max_size=10),
    max_size=3,
)
bodies = (
    st.none()
    | st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {"payload": json_values},
        optional={
            "mode": st.sampled_from(["classic", "durable", "turbo"]),
            "key": st.text(max_size=300),
            "approved": st.booleans(),
        },
    ).map(lambda v: json.dumps(v).encode())
)


@pytest.mark.timeout(900)
@settings(
    max_examples=int(os.environ.get("WAKEFUL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
    path=paths,
    query=params,
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
def test_random_requests_never_get_a_5xx(
    server: httpx.Client,
    method: str,
    path: str,
    query: dict[str, str],
    body: bytes | None,
    content_type: str,
) -> None:
    try:
        url = str(server.base_url).rstrip("/") + path  # absolute: paths may start with //
        r = server.request(
            method, url, params=query, content=body, headers={"content-type": content_type}
        )
    except httpx.ReadTimeout:
        return  # a stream that waits for a run that waits (on a gate, a signal): not an error
    assert r.status_code < 500, (method, path, query, body, r.status_code, r.text[:300])
    if (
        r.status_code >= 400
        and method != "HEAD"
        and r.headers.get("content-type") == "application/json"
    ):
        error: Any = r.json()
        assert isinstance(error, dict)


def test_every_stream_reads_back_whole_after_the_fuzz(server: httpx.Client) -> None:
    # the fuzz above ran first (pytest keeps file order); these make sure there is a stream
    for i in range(3):
        assert server.post("/echo/after-fuzz", json={"payload": i}).status_code == 202
    checked = 0
    for type_name in TYPES:
        ids = server.get(f"/{type_name}", params={"limit": 1000}).json()["ids"]
        for id in ids:
            r = server.get(f"/{type_name}/{quote(id, safe='')}/main", params={"offset": "-1"})
            assert r.status_code == 200, r.text
            seqs = [e["seq"] for e in r.json()]
            assert seqs == list(range(1, len(seqs) + 1))
            checked += 1
    assert checked > 0
