"""The OpenAI-compatible endpoint: every agent is a model of the Chat Completions API.

`POST /v1/chat/completions` sends the last user message of the request to the agent
entity `/<model>/<id>` and answers with the run that message starts, as a
`chat.completion` or, with `stream: true`, as `chat.completion.chunk` server-sent
events. The conversation lives in the entity's stream, so earlier messages of the
request are not sent again. `GET /v1/models` lists the agent types.

Agents are the entity types whose `meta["kind"]` is `"agent"` (what
`wakeful.entities.Agent.register` sets); this module finds them in the registry and
does not import `wakeful.entities`. Following a run reuses `EntityAPI.follow_message`,
the follower of `POST /{type}/{id}` with `Accept: text/event-stream`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wakeful.runtime import EntityInfo, Event, InvalidAddress, Runtime, make_address

from .auth import Auth
from .config import ApiKey
from .entities import EntityAPI, json_response, read_body
from .errors import log, translate
from .sse import frame, sse_response

AGENT_KIND = "agent"
SEPARATOR = "\n\n"
"""Put between the texts of two model steps of one run (text before a tool call and
the answer after it), in the stream and in the message alike."""
NO_RETRY = {"x-should-retry": "false"}
"""The openai clients retry 409s and 5xxs unless told not to; a retry of a request whose
run already ran would send the message again and start another run."""
ENTITY_HEADER = "X-Wakeful-Entity"

# -- request and response bodies (their schemas go into /openapi.json) ---------------------


class TextPart(msgspec.Struct):
    type: Literal["text"]
    text: str


class ChatMessage(msgspec.Struct):
    role: str
    """system, developer, user, assistant or tool; only the last message is used and
    must be the user's."""
    content: str | list[TextPart] | None = None


class ChatCompletionRequest(msgspec.Struct):
    """The fields of a Chat Completions request that wakeful reads; others (temperature,
    max_tokens, …) are accepted and ignored: the agent's own settings apply."""

    model: str
    """The agent: an entity type registered as an agent (GET /v1/models)."""
    messages: list[ChatMessage]
    """Only the last one, the user's, is sent to the agent."""
    stream: bool = False
    user: str | None = None
    """The entity id, when there is no X-Wakeful-Entity header."""
    mode: Literal["classic", "durable"] | None = None
    """Execution mode of the run (the openai client's `extra_body`)."""


class WakefulRun(msgspec.Struct):
    """wakeful's extension of OpenAI's answers: the run behind them."""

    run: str | None
    address: str
    status: str
    """running, completed, suspended, failed or cancelled."""
    mode: str | None = None
    waiting_for: str | None = None
    """What a suspended run waits for: `approval:<call_id>` (decide it at
    POST /{type}/{id}/approvals/{call_id}) or `signal:<name>`."""


class AssistantMessage(msgspec.Struct):
    role: Literal["assistant"]
    content: str


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    """stop (the agent ended its turn, or the run is suspended), or length (the agent
    hit its step limit)."""
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    """`chatcmpl-<run id>`."""
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    wakeful: WakefulRun


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    wakeful: WakefulRun | None = None
    """On the first chunk and the last."""


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    """The agent's entity type."""
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "wakeful"
    description: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct, omit_defaults=True):
    """OpenAI's error shape (and, after a run, the run behind it)."""

    error: OpenAIErrorDetail
    wakeful: WakefulRun | None = None


_encode = msgspec.json.Encoder().encode


# -- errors --------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        wakeful: WakefulRun | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.wakeful = wakeful

    @property
    def type(self) -> str:
        return {
            401: "authentication_error",
            403: "permission_error",
            409: "conflict_error",
            429: "rate_limit_error",
        }.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> OpenAIErrorBody:
        detail = OpenAIErrorDetail(self.message, self.type, self.param, self.code)
        return OpenAIErrorBody(detail, self.wakeful)

    def response(self) -> Response:
        return json_response(self.body(), self.status, self.headers)


def _bad(message: str, param: str | None, code: str = "invalid_body") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def _as_openai(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    err = translate(exc)
    return OpenAIError(err.status, err.message, code=err.code, headers=err.headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _openai_errors(endpoint: Endpoint) -> Endpoint:
    """Every error of `endpoint` answered in OpenAI's shape, which the openai clients
    turn into their exceptions (`NotFoundError`, `BadRequestError`, …)."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            err = _as_openai(exc)
            if err.status >= 500 and not isinstance(exc, OpenAIError):
                log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return err.response()

    return guarded


# -- the request ---------------------------------------------------------------------------


class _Turn(msgspec.Struct, frozen=True):
    """A validated chat request: what is sent to which agent, and how."""

    model: str
    text: str
    stream: bool
    user: str | None
    mode: str | None


def parse_chat(body: bytes) -> _Turn:
    """Validate a Chat Completions request; a 400 names the field that is wrong."""
    try:
        raw = msgspec.json.decode(body) if body.strip() else None
    except msgspec.DecodeError as exc:
        raise _bad(f"the body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(raw, dict):
        raise _bad("the body must be a JSON object with model and messages", None)
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required: the name of an agent (GET /v1/models lists them)", "model")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(
            "messages must be a non-empty list of {role, content} objects ending with "
            "the user's message",
            "messages",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string role", f"messages[{i}]")
    last = len(messages) - 1
    role = messages[last]["role"]
    if role != "user":
        raise _bad(
            f"the last message must be the user's (role 'user'), not {role!r}: only that "
            "message is sent to the agent, whose conversation lives in its entity",
            f"messages[{last}].role",
        )
    text = _text(messages[last].get("content"), f"messages[{last}].content")
    stream = raw.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    mode = raw.get("mode")
    if mode not in (None, "classic", "durable"):
        raise _bad(f"mode {mode!r} is not a mode; use 'classic' or 'durable'", "mode")
    user = raw.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be a string (it names the entity)", "user")
    if raw.get("n") not in (None, 1):
        raise _bad("n must be 1: an agent gives one answer", "n")
    for field in ("tools", "functions"):
        if raw.get(field):
            raise _bad(
                f"{field} cannot be given here: the agent's tools are registered on the "
                "server and run there",
                field,
            )
    return _Turn(model, text, bool(stream), user or None, mode)


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return str(content)
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or a list of text parts", param)
    texts = []
    for i, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or part.get("type") != "text"
            or not isinstance(part.get("text"), str)
        ):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _bad(
                f"{param}[{i}] is {kind!r}: only text parts "
                '({"type": "text", "text": "..."}) are supported',
                f"{param}[{i}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


# -- following the run ---------------------------------------------------------------------


class _RunView:
    """What the events of one run add up to, as an OpenAI answer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.run: str | None = None
        self.created = int(time.time())
        self.mode: str | None = None
        self.status = "running"
        self.waiting_for: str | None = None
        self.reason: str | None = None
        self.error = ""
        self.segments: list[str] = []
        self._open = False

    def feed(self, event: Event) -> str:
        """Apply `event`; return the text it adds to the answer (maybe "")."""
        kind, data = event.kind, event.data
        if self.run is None:
            self.run = event.run
            self.created = int(event.at)
        if kind == "run.started":
            self.mode = data.mode
        elif kind == "text.delta" and data.text:
            text: str = data.text
            separator = ""
            if not self._open:
                self._open = True
                separator = SEPARATOR if any(self.segments) else ""
                self.segments.append("")
            self.segments[-1] += text
            return separator + text
        elif kind == "text.completed":
            self._open = False
        elif kind == "run.suspended":
            self.status, self.waiting_for = "suspended", data.waiting_for
        elif kind == "run.resumed":
            self.status, self.waiting_for = "running", None
        elif kind == "run.completed":
            self.status = "completed"
            result = data.result if isinstance(data.result, dict) else {}
            self.reason = data.reason or result.get("stop_reason")
        elif kind == "run.failed":
            self.status, self.reason, self.error = "failed", data.reason, data.error
        elif kind == "run.cancelled":
            self.status, self.reason = "cancelled", data.reason
        return ""

    @property
    def answered(self) -> bool:
        """The run completed or waits: the request has its answer."""
        return self.status in ("completed", "suspended")

    @property
    def ended_badly(self) -> bool:
        return self.status in ("failed", "cancelled")

    @property
    def content(self) -> str:
        return SEPARATOR.join(s for s in self.segments if s)

    @property
    def finish_reason(self) -> str:
        return "length" if self.reason == "max_steps" else "stop"

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.run}"

    def info(self) -> WakefulRun:
        return WakefulRun(self.run, self.address, self.status, self.mode, self.waiting_for)

    def failure(self, headers: dict[str, str]) -> OpenAIError:
        """The error a failed or cancelled run answers with."""
        if self.status == "cancelled":
            return OpenAIError(
                409,
                f"run {self.run} of {self.address} was cancelled"
                + (f" ({self.reason})" if self.reason else ""),
                code="run_cancelled",
                headers=headers,
                wakeful=self.info(),
            )
        return OpenAIError(
            502 if self.reason == "llm_api_error" else 500,
            f"run {self.run} of {self.address} failed ({self.reason}): {self.error}",
            code=self.reason,
            headers=headers,
            wakeful=self.info(),
        )


# -- the endpoints -------------------------------------------------------------------------


class OpenAICompat:
    """`/v1/chat/completions` and `/v1/models` over the agents of a runtime."""

    def __init__(self, api: EntityAPI) -> None:
        self.api = api
        self.rt: Runtime = api.rt
        self.auth: Auth = api.auth

    def routes(self) -> list[Route]:
        """The routes, relative to a mount at `/v1`."""
        return [
            Route("/chat/completions", _openai_errors(self.chat), methods=["POST"]),
            Route("/models", _openai_errors(self.list_models), methods=["GET"]),
            Route("/models/{model}", _openai_errors(self.get_model), methods=["GET"]),
        ]

    def _key(self, request: Request) -> ApiKey | None:
        client = request.client.host if request.client else None
        return self.auth.key_for(dict(request.headers), client)

    def _agents(self, key: ApiKey | None) -> list[str]:
        registry = self.rt.registry
        return [
            t
            for t in registry.types
            if registry.get(t).meta.get("kind") == AGENT_KIND and self.auth.sees(key, t)
        ]

    def _agent(self, name: str, key: ApiKey | None) -> ModelCard:
        registry = self.rt.registry
        if name not in registry or registry.get(name).meta.get("kind") != AGENT_KIND:
            known = ", ".join(self._agents(key)) or "none"
            what = "an entity type but not an agent" if name in registry else "not an agent"
            raise OpenAIError(
                404,
                f"model {name!r} is {what} on this server; the agents are: {known} "
                "(GET /v1/models)",
                code="model_not_found",
                param="model",
            )
        description = registry.get(name).meta.get("description")
        return ModelCard(id=name, description=description if isinstance(description, str) else None)

    async def list_models(self, request: Request) -> Response:
        key = self._key(request)
        self.auth.check(key, "read", filtered=True)
        return json_response(ModelList(data=[self._agent(t, key) for t in self._agents(key)]))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        key = self._key(request)
        self.auth.check(key, "read", name)
        return json_response(self._agent(name, key))

    async def chat(self, request: Request) -> Response:
        key = self._key(request)
        turn = parse_chat(await read_body(request, self.api.config.max_body))
        self.auth.check(key, "send", turn.model)
        self._agent(turn.model, key)
        entity, source, param = request.headers.get(ENTITY_HEADER), ENTITY_HEADER, None
        if not entity:
            entity, source, param = turn.user, "user", "user"
        if not entity:
            entity = _fresh_id()
        try:
            address = make_address(turn.model, entity)
        except InvalidAddress as exc:
            raise _bad(
                f"{source} does not name an entity: {exc}", param, "invalid_entity"
            ) from None
        info = await self.rt.describe(address)
        if info.status == "suspended":
            raise _suspended(info, {**NO_RETRY, ENTITY_HEADER: entity})
        offset = await self.rt.send(
            address,
            {"text": turn.text},
            key=request.headers.get("idempotency-key") or None,
            mode=turn.mode,
        )
        # From here the message is in: a retry would send it again.
        headers = {**NO_RETRY, ENTITY_HEADER: entity}
        events = self.api.follow_message(address, offset, info.offset)
        if turn.stream:
            body = self._chunks(turn.model, _RunView(address), events, headers)
            return sse_response(body, self.api.config.sse_keepalive, {ENTITY_HEADER: entity})
        try:
            return await self._completion(turn.model, _RunView(address), events, headers)
        except Exception as exc:
            err = _as_openai(exc)
            if err.status >= 500 and not isinstance(exc, OpenAIError):
                log.error("following %s failed", address, exc_info=exc)
            err.headers = {**err.headers, **headers}
            raise err from exc

    async def _completion(
        self,
        model: str,
        view: _RunView,
        events: AsyncGenerator[Event, None],
        headers: dict[str, str],
    ) -> Response:
        """The run as one `chat.completion`, once it completed or suspended."""
        async with contextlib.aclosing(events):
            async for event in events:
                view.feed(event)
                if view.answered or view.ended_badly:
                    break
        if view.ended_badly:
            raise view.failure(headers)
        completion = ChatCompletion(
            id=view.id,
            created=view.created,
            model=model,
            choices=[Choice(0, AssistantMessage("assistant", view.content), view.finish_reason)],
            wakeful=view.info(),
        )
        return json_response(completion, headers={ENTITY_HEADER: headers[ENTITY_HEADER]})

    async def _chunks(
        self,
        model: str,
        view: _RunView,
        events: AsyncGenerator[Event, None],
        headers: dict[str, str],
    ) -> AsyncIterator[bytes]:
        """The run as `chat.completion.chunk` events, then `[DONE]`; a run that fails
        or is cancelled (or an error while following it) ends with an error chunk."""

        def chunk(delta: Delta, finish: str | None = None, info: bool = False) -> bytes:
            value = ChatCompletionChunk(
                id=view.id,
                object="chat.completion.chunk",
                created=view.created,
                model=model,
                choices=[ChunkChoice(0, delta, finish)],
                wakeful=view.info() if info else None,
            )
            return frame(_encode(value))

        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    text = view.feed(event)
                    if event.kind == "run.started":
                        yield chunk(Delta(role="assistant"), info=True)
                    elif text:
                        yield chunk(Delta(content=text))
                    if view.answered:
                        yield chunk(Delta(), view.finish_reason, info=True)
                        break
                    if view.ended_badly:
                        yield frame(_encode(view.failure(headers).body()))
                        break
        except Exception as exc:
            err = _as_openai(exc)
            log.error("streaming %s failed", view.address, exc_info=exc)
            yield frame(_encode(err.body()))
        yield frame(b"[DONE]")


def _suspended(info: EntityInfo, headers: dict[str, str]) -> OpenAIError:
    """409: the entity's run waits (for an approval or a signal); a message sent now
    would wait behind it."""
    address, run, waiting = info.address, info.active_run, info.waiting_for or ""
    what, _, name = waiting.partition(":")
    if what == "approval":
        unblock = f"decide the approval (POST {address}/approvals/{name})"
    elif what == "signal":
        unblock = f"deliver the signal (POST {address}/signals/{name})"
    else:
        unblock = "let it finish"
    return OpenAIError(
        409,
        f"{address} has run {run} waiting for {waiting}, and a new message would wait "
        f"behind it: {unblock} or cancel the run (POST /runs/{run}/cancel), then send again",
        code="entity_suspended",
        headers=headers,
        wakeful=WakefulRun(run, address, "suspended", None, info.waiting_for),
    )


def _fresh_id() -> str:
    """A new entity id for a request that names none: time-ordered, then random."""
    return f"chat-{int(time.time() * 1000):011x}{secrets.token_hex(5)}"
