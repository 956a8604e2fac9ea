"""`GET /openapi.json`: the HTTP API described as OpenAPI 3.1, with msgspec's schemas."""

from __future__ import annotations

from typing import Any

import msgspec

from wakeful.runtime import EntityInfo, Event
from wakeful.runtime.ports import RunRecord

from .entities import (
    Accepted,
    ApprovalList,
    ApprovalRequest,
    ApprovalView,
    EntityList,
    EntityView,
    RunList,
    SendRequest,
    Signalled,
)
from .errors import Error
from .openai_compat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    OpenAIErrorBody,
)

_MODELS = (
    SendRequest,
    Accepted,
    EntityView,
    EntityInfo,
    EntityList,
    RunRecord,
    RunList,
    ApprovalRequest,
    ApprovalView,
    ApprovalList,
    Signalled,
    Event,
    Error,
    ChatCompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ModelList,
    ModelCard,
    OpenAIErrorBody,
)


REF = "#/components/schemas/{name}"


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _ref(model: type[Any]) -> dict[str, Any]:
    return {"$ref": REF.format(name=model.__name__)}


def _json(model: type[Any] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sse(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": {}}}}


_ERRORS = {
    "400": _json(Error, "Bad input: the message says what was wrong and what is allowed"),
    "401": _json(Error, "No API key, or an unknown one"),
    "403": _json(Error, "The key lacks the scope or the entity type"),
    "404": _json(Error, "Unknown entity type, run, call or path"),
}

_TYPE = _path("type")
_ID = _path("id")
_RUN = _path("run_id")


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_OPENAI_ERRORS = {
    "400": _json(OpenAIErrorBody, "Bad input; `param` names the field"),
    "401": _json(OpenAIErrorBody, "No API key, or an unknown one"),
    "403": _json(OpenAIErrorBody, "The key lacks the scope or the entity type"),
    "404": _json(OpenAIErrorBody, "The model is not an agent; the message lists the agents"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    scope: str | None = "read",
    errors: dict[str, Any] = _ERRORS,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **errors}}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if scope is None:
        op["security"] = []
    else:
        op["description"] = f"Needs an API key with the `{scope}` scope (or `admin`)."
    return op


def build_openapi(version: str, streams: bool) -> dict[str, Any]:
    """The OpenAPI document of the app; `streams` adds the generic Durable Streams paths."""
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    send_body = {"required": False, "content": {"application/json": {"schema": _ref(SendRequest)}}}
    any_body = {"required": False, "content": {"application/json": {"schema": {}}}}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op("Liveness and readiness", {"200": _json({}, "Serving")}, scope=None)
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
                scope="admin",
            )
        },
        "/openapi.json": {
            "get": _op("This document", {"200": _json({}, "OpenAPI 3.1")}, scope=None)
        },
        "/runs": {
            "get": _op(
                "Runs across entities, newest first",
                {"200": _json(RunList, "Runs")},
                [
                    _query(
                        "status",
                        "Which runs",
                        enum=[
                            "active",
                            "all",
                            "running",
                            "suspended",
                            "completed",
                            "failed",
                            "cancelled",
                        ],
                    ),
                    _query("type", "Only runs of entities of this type"),
                    _query("limit", "At most this many (1-1000)", pattern="^[0-9]+$"),
                ],
            )
        },
        "/runs/{run_id}": {
            "get": _op(
                "One run: status, mode, stop reason, timings",
                {"200": _json(RunRecord, "The run")},
                [_RUN],
            )
        },
        "/runs/{run_id}/stream": {
            "get": _op(
                "The run's events as SSE, resumable, ending after its terminal event",
                {"200": _sse("Events: `id` is the offset, `event` the kind")},
                [_RUN, _query("offset", "Resume after this offset (or send Last-Event-ID)")],
            )
        },
        "/runs/{run_id}/cancel": {
            "post": _op(
                "Cancel a run; its pending approvals are denied",
                {"200": _json(RunRecord, "The run's final record")},
                [_RUN],
                scope="send",
            )
        },
        "/{type}": {
            "get": _op(
                "Entities of a type, paginated",
                {"200": _json(EntityList, "Entity ids")},
                [
                    _TYPE,
                    _query("after", "Ids after this one"),
                    _query("limit", "At most this many (1-1000)", pattern="^[0-9]+$"),
                ],
            )
        },
        "/{type}/{id}": {
            "get": _op(
                "Status, active run and state collections",
                {"200": _json(EntityView, "The entity")},
                [_TYPE, _ID],
            ),
            "post": _op(
                "Send a message; with Accept: text/event-stream (or ?stream=true) stream "
                "the events of the run it starts",
                {
                    "202": _json(Accepted, "Accepted into the entity's inbox"),
                    "200": _sse("The run's events, through its terminal event"),
                    "413": _json(Error, "Body over the limit"),
                },
                [
                    _TYPE,
                    _ID,
                    _query("stream", "true: answer with the run's events as SSE"),
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                send_body,
                scope="send",
            ),
        },
        "/{type}/{id}/main": {
            "get": _op(
                "The entity's event log, read with the Durable Streams protocol (JSON mode)",
                {
                    "200": _json({"type": "array", "items": _ref(Event)}, "Events"),
                    "204": {"description": "Long-poll timed out with nothing new"},
                    "304": {"description": "Not modified (If-None-Match)"},
                },
                [
                    _TYPE,
                    _ID,
                    _query("offset", "-1 (start), now (tail), or an offset"),
                    _query("live", "long-poll or sse", enum=["long-poll", "sse"]),
                    _query("cursor", "Echo of Stream-Cursor"),
                ],
            ),
            "head": _op(
                "The entity log's tail offset",
                {"200": {"description": "Stream-Next-Offset holds the tail"}},
                [_TYPE, _ID],
            ),
        },
        "/{type}/{id}/approvals": {
            "get": _op(
                "The entity's approvals",
                {"200": _json(ApprovalList, "Approvals")},
                [_TYPE, _ID, _query("status", "Filter", enum=["pending", "approved", "denied"])],
            )
        },
        "/{type}/{id}/approvals/{call_id}": {
            "post": _op(
                "Approve or deny a tool call; a second decision returns the first",
                {"200": _json(ApprovalView, "The decision that counts")},
                [
                    _TYPE,
                    _ID,
                    {
                        "name": "call_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(ApprovalRequest)}},
                },
                scope="send",
            )
        },
        "/{type}/{id}/signals/{name}": {
            "post": _op(
                "Deliver a signal (webhook callback) to the entity's active run; the body "
                "is the payload",
                {"202": _json(Signalled, "Delivered to the inbox")},
                [
                    _TYPE,
                    _ID,
                    _path("name"),
                ],
                any_body,
                scope="send",
            )
        },
    }
    paths["/v1/chat/completions"] = {
        "post": _op(
            "OpenAI-compatible Chat Completions: the last user message goes to the agent "
            "`model`, entity id from X-Wakeful-Entity, else `user`, else a new one (returned "
            "in X-Wakeful-Entity); with `stream: true`, chat.completion.chunk events then "
            "[DONE]",
            {
                "200": {
                    "description": "The run's answer (`wakeful` tells its run, status and "
                    "what a suspended run waits for), or the chunk stream",
                    "content": {
                        "application/json": {"schema": _ref(ChatCompletion)},
                        "text/event-stream": {"schema": {}},
                    },
                },
                "409": _json(
                    OpenAIErrorBody, "The run was cancelled, or the entity waits for an approval"
                ),
                "500": _json(OpenAIErrorBody, "The run failed"),
                "502": _json(OpenAIErrorBody, "The run failed: the model API (llm_api_error)"),
            },
            [
                {
                    "name": "X-Wakeful-Entity",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            {
                "required": True,
                "content": {"application/json": {"schema": _ref(ChatCompletionRequest)}},
            },
            scope="send",
            errors=_OPENAI_ERRORS,
        )
    }
    paths["/v1/models"] = {
        "get": _op(
            "The agents, as OpenAI models",
            {"200": _json(ModelList, "Agent types")},
            errors=_OPENAI_ERRORS,
        )
    }
    paths["/v1/models/{model}"] = {
        "get": _op(
            "One agent, as an OpenAI model",
            {"200": _json(ModelCard, "The agent type")},
            [_path("model")],
            errors=_OPENAI_ERRORS,
        )
    }
    if streams:
        name = _path("name")
        ok = {"description": "See the Durable Streams protocol"}
        paths["/v1/stream/{name}"] = {
            "put": _op("Create a stream", {"201": ok, "200": ok}, [name], scope="send"),
            "post": _op("Append, or close", {"204": ok, "200": ok}, [name], scope="send"),
            "get": _op("Read: catch-up, long-poll or SSE", {"200": ok}, [name]),
            "head": _op("Tail offset and metadata", {"200": ok}, [name]),
            "delete": _op("Delete a stream", {"204": ok}, [name], scope="admin"),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wakeful",
            "version": version,
            "description": "Entities with event streams: send messages, follow runs, "
            "approve tool calls, read entity logs with the Durable Streams protocol.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
