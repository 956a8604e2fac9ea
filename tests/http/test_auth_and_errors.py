"""API keys and scopes, and the JSON error for each kind of bad request."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wakeful.transports.cli import main
from wakeful.transports.http.auth import Auth
from wakeful.transports.http.config import ApiKey, ServerConfig, parse_api_keys
from wakeful.transports.http.errors import HTTPError
from wakeful.transports.sqlite import SQLiteStore

from .apps import served

KEYS = (
    ApiKey("reader-token", ("read",)),
    ApiKey("sender-token", ("send",)),
    ApiKey("admin-token", ("admin",)),
    ApiKey("echo-token", ("read", "send"), types="ech*"),
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_request_needs_a_key_with_the_scope_and_type(tmp_path: Path) -> None:
    config = ServerConfig(api_keys=KEYS, long_poll_timeout=1.0)
    async with served(SQLiteStore(tmp_path / "auth.db"), config) as s:
        http = s.http
        missing = await http.get("/echo/a")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = await http.get("/echo/a", headers=bearer("nope"))
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]

        send = {"json": {"payload": 1}}
        assert (
            await http.post("/echo/a", **send, headers=bearer("reader-token"))
        ).status_code == 403
        assert (
            await http.post("/echo/a", **send, headers=bearer("sender-token"))
        ).status_code == 202
        await s.rt.idle()
        assert (await http.get("/echo/a", headers=bearer("sender-token"))).status_code == 403
        assert (await http.get("/echo/a", headers=bearer("reader-token"))).status_code == 200
        assert (await http.get("/echo/a", headers=bearer("admin-token"))).status_code == 200

        scoped = bearer("echo-token")
        assert (await http.post("/echo/b", **send, headers=scoped)).status_code == 202
        other = await http.post("/tooling/b", json={}, headers=scoped)
        assert other.status_code == 403 and "ech*" in other.json()["error"]["message"]
        await http.post("/tooling/c", json={}, headers=bearer("admin-token"))
        await s.rt.idle()
        runs = (await http.get("/runs", params={"status": "all"}, headers=scoped)).json()["runs"]
        assert runs and all(r["address"].startswith("/echo/") for r in runs)
        all_runs = await http.get("/runs", params={"status": "all"}, headers=bearer("admin-token"))
        assert any(r["address"].startswith("/tooling/") for r in all_runs.json()["runs"])

        assert (await http.get("/metrics", headers=bearer("reader-token"))).status_code == 403
        assert (await http.get("/metrics", headers=bearer("admin-token"))).status_code == 200
        assert (await http.get("/healthz")).status_code == 200  # for load balancers
        assert (await http.get("/openapi.json")).status_code == 200


def test_without_keys_only_loopback_clients_are_served() -> None:
    auth = Auth(ServerConfig())
    assert auth.key_for({}, "127.0.0.1") is None
    assert auth.key_for({}, "::1") is None
    with pytest.raises(HTTPError) as refused:
        auth.key_for({}, "10.1.2.3")
    assert refused.value.status == 403 and "loopback" in refused.value.message
    assert Auth(ServerConfig(insecure_no_auth=True)).key_for({}, "10.1.2.3") is None
    with_keys = Auth(ServerConfig(api_keys=KEYS, insecure_no_auth=True))
    with pytest.raises(HTTPError):  # keys configured: no fallback, whatever the flag
        with_keys.key_for({}, "127.0.0.1")


def test_serve_refuses_a_public_host_without_keys() -> None:
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without API keys" in result.output


def test_key_formats_and_their_errors() -> None:
    keys = parse_api_keys(
        "# ops keys\nabc:read,send:support-*\nsha256:" + "0" * 64 + ":admin\n  plain\n"
    )
    assert [(k.scopes, k.types) for k in keys] == [
        (("read", "send"), "support-*"),
        (("admin",), "*"),
        (("admin",), "*"),
    ]
    assert keys[1].digest == bytes(32)
    assert parse_api_keys('[{"secret": "t", "scopes": ["read"]}]')[0].scopes == ("read",)
    with pytest.raises(ValueError, match="read, send, admin"):
        parse_api_keys("abc:write")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        parse_api_keys("sha256:xyz")
    config = ServerConfig.from_env(
        {"WAKEFUL_API_KEYS": "a:read b", "WAKEFUL_LONG_POLL_TIMEOUT": "5"}
    )
    assert len(config.api_keys) == 2 and config.long_poll_timeout == 5.0
    with pytest.raises(ValueError, match="WAKEFUL_SSE_KEEPALIVE"):
        ServerConfig.from_env({"WAKEFUL_SSE_KEEPALIVE": "soon"})


async def test_bad_requests_get_a_json_error_that_says_what_is_wrong(tmp_path: Path) -> None:
    config = ServerConfig(max_body=1024)
    async with served(SQLiteStore(tmp_path / "errors.db"), config) as s:
        http = s.http

        async def error(method: str, path: str, status: int, code: str, **kw: object) -> str:
            r = await http.request(method, path, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, r.text
            body = r.json()["error"]
            assert body["code"] == code, body
            return str(body["message"])

        assert "byte" in await error(
            "POST", "/echo/a", 400, "invalid_json", content=b'{"payload": }'
        )
        assert "text" in await error("POST", "/echo/a", 400, "invalid_body", json={"text": "hi"})
        assert "mode" in await error(
            "POST", "/echo/a", 400, "invalid_body", json={"payload": 1, "mode": "fast"}
        )
        assert "space" in await error("POST", "/echo/a%20b", 400, "invalid_address", json={})
        assert "Echo" in await error("GET", "/Echo/a", 400, "invalid_address")
        listed = await error("POST", "/nope/a", 404, "unknown_type", json={})
        assert "echo" in listed and "tooling" in listed
        assert "1024" in await error(
            "POST", "/echo/a", 413, "payload_too_large", json={"payload": "x" * 2000}
        )
        await error("DELETE", "/echo/a", 405, "method_not_allowed")
        await error("GET", "/runs/run_nope", 404, "not_found")
        await error("POST", "/runs/run_nope/cancel", 404, "not_found")
        await error("GET", "/echo/a/nothing/here/x", 404, "not_found")
        await error("GET", "/runs", 400, "invalid_query", params={"status": "sleeping"})
        await error("GET", "/echo", 400, "invalid_query", params={"limit": "0"})
        await error("GET", "/echo/a/main", 400, "invalid_query", params={"live": "push"})
        await error("POST", "/echo/a/approvals/c1", 400, "invalid_body", json={"approved": "yes"})
        # nothing above reached the store
        assert await s.rt.entities("echo") == []


async def test_payload_limit_of_the_runtime_is_a_413_too(tmp_path: Path) -> None:
    async with served(SQLiteStore(tmp_path / "big.db")) as s:
        from wakeful.runtime import RuntimeConfig

        s.rt.config = RuntimeConfig(max_payload=100, wait_timeout=10)
        r = await s.http.post("/echo/a", json={"payload": "y" * 500})
        assert r.status_code == 413 and "max_payload" in r.json()["error"]["message"]


def test_create_app_refuses_types_that_hide_api_paths() -> None:
    from wakeful.runtime import Registry, Runtime
    from wakeful.transports.http.app import create_app
    from wakeful.transports.memory import MemoryStore

    registry = Registry()

    @registry.entity("runs")
    async def runs(ctx, wake):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ValueError, match="runs"):
        create_app(Runtime(registry, MemoryStore()))


async def test_an_unreachable_store_is_a_503_not_a_crash(tmp_path: Path) -> None:
    async with served(SQLiteStore(tmp_path / "closed.db")) as s:
        await s.rt.close()
        r = await s.http.post("/echo/a", json={"payload": 1})
        assert r.status_code == 503
        assert (await s.http.get("/healthz")).status_code == 503


async def test_browsers_may_call_the_entity_api_from_any_origin(tmp_path: Path) -> None:
    config = ServerConfig(api_keys=KEYS)
    async with served(SQLiteStore(tmp_path / "cors.db"), config) as s:
        preflight = await s.http.options(
            "/echo/a/main",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 204  # no key needed: browsers send none here
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        r = await s.http.get(
            "/echo/a/main", headers={"Origin": "https://app.example", **bearer("reader-token")}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "stream-next-offset" in r.headers["access-control-expose-headers"]
        denied = await s.http.get("/echo/a/main", headers={"Origin": "https://app.example"})
        assert denied.status_code == 401  # the CORS headers let the page read the error
        assert denied.headers["access-control-allow-origin"] == "*"


async def test_a_bad_offset_is_a_400_before_any_stream_starts(tmp_path: Path) -> None:
    async with served(SQLiteStore(tmp_path / "offsets.db")) as s:
        await s.http.post("/echo/o1", json={"payload": 1})
        await s.rt.idle()
        [run] = await s.rt.runs(address="/echo/o1", status=None)
        for method, path, kw in (
            ("GET", "/echo/o1/main", {"params": {"offset": "abc", "live": "sse"}}),
            ("GET", "/echo/o1/main", {"params": {"offset": "abc", "live": "long-poll"}}),
            ("GET", f"/runs/{run.run}/stream", {"params": {"offset": "abc"}}),
            ("POST", "/echo/o1?stream=true", {"json": {}, "headers": {"Last-Event-ID": "x"}}),
        ):
            r = await s.http.request(method, path, **kw)  # type: ignore[arg-type]
            assert r.status_code == 400, (path, r.text)
            assert "offset" in r.json()["error"]["message"]
        assert len(await s.rt.runs(address="/echo/o1", status=None)) == 1  # nothing was sent
