"""Embedders: OpenAIEmbeddings against a real local server speaking /v1/embeddings,
HashingEmbedder, and WordLlamaEmbeddings (when the optional package is installed)."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from wakeful.entities import (
    Condition,
    HashingEmbedder,
    ModelError,
    OpenAIEmbeddings,
    Router,
    Rule,
    WordLlamaEmbeddings,
)
from wakeful.entities.embeddings import cosine
from wakeful.transports.cli import serving


class FakeEmbeddings:
    """Answers each POST /v1/embeddings with the next scripted answer: a response, or
    None for vectors [len(text), i] in reversed order (clients must sort by index)."""

    def __init__(self, answers: list[Response | None]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/embeddings", self.embeddings, methods=["POST"])])

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("authorization")})
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            return answer
        data = [
            {"object": "embedding", "index": i, "embedding": [len(text), i]}
            for i, text in enumerate(body["input"])
        ]
        return JSONResponse({"object": "list", "data": data[::-1], "model": body["model"]})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": "x"}}, status, headers)


async def test_embeds_in_order_with_the_model_and_key() -> None:
    fake = FakeEmbeddings([])
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1", api_key="sk-test", dimensions=64)
        assert await embedder.embed(["a", "bbb", "cc"]) == [[1.0, 0.0], [3.0, 1.0], [2.0, 2.0]]
        assert await embedder.embed([]) == []  # no request for nothing
    [request] = fake.requests
    assert request["auth"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "text-embedding-3-small",
        "input": ["a", "bbb", "cc"],
        "encoding_format": "float",
        "dimensions": 64,
    }


async def test_base_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEmbeddings([])
    async with serving(fake.app) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
        embedder = OpenAIEmbeddings("my-embedder")
        assert await embedder.embed(["x"]) == [[1.0, 0.0]]
    assert fake.requests[0]["auth"] == "Bearer sk-env"
    assert fake.requests[0]["body"]["model"] == "my-embedder"
    assert "dimensions" not in fake.requests[0]["body"]


async def test_large_inputs_go_in_batches() -> None:
    fake = FakeEmbeddings([])
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1", batch_size=2)
        vectors = await embedder.embed(["a", "bb", "ccc", "dddd", "eeeee"])
    assert [v[0] for v in vectors] == [1, 2, 3, 4, 5]
    assert [r["body"]["input"] for r in fake.requests] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        OpenAIEmbeddings(batch_size=0)


async def test_rate_limits_are_retried_after_retry_after() -> None:
    fake = FakeEmbeddings([error(429, "slow down", {"Retry-After": "0.2"}), error(503, "busy")])
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1", backoff=0.01)
        started = asyncio.get_running_loop().time()
        assert await embedder.embed(["hi"]) == [[2.0, 0.0]]
        assert asyncio.get_running_loop().time() - started >= 0.2
        assert len(fake.requests) == 3
        fake.answers = [error(429, "slow down", {"Retry-After": "0"})] * 3
        impatient = OpenAIEmbeddings(base_url=url + "/v1", max_retries=2, backoff=0.01)
        with pytest.raises(ModelError, match="still failing after 3 attempts: slow down"):
            await impatient.embed(["hi"])


async def test_client_errors_carry_the_provider_message() -> None:
    fake = FakeEmbeddings(
        [
            error(400, "This model's maximum context length is 8192 tokens"),
            PlainTextResponse("no such route", 404),
        ]
    )
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1")
        with pytest.raises(ModelError, match=r"/v1: 400: This model's maximum context length"):
            await embedder.embed(["x" * 10])
        with pytest.raises(ModelError, match="404: no such route"):
            await embedder.embed(["x"])
    assert len(fake.requests) == 2  # a 4xx is not retried


MALFORMED = [
    ({"data": []}, "has 0 vectors for 2 texts"),
    ({"nothing": 1}, "has no vectors for 2 texts"),
    ([1, 2], "has no vectors for 2 texts"),
    ({"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]}, "repeats"),
    ({"data": [{"index": 0, "embedding": [1]}, {"index": 5, "embedding": [2]}]}, "item 1"),
    ({"data": [{"index": 0, "embedding": "AAAA"}, {"index": 1}]}, "item 0 is malformed"),
    ({"data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [1]}]}, "item 0"),
]


async def test_a_malformed_response_is_a_model_error() -> None:
    fake = FakeEmbeddings([JSONResponse(body) for body, _ in MALFORMED])
    fake.answers.append(PlainTextResponse("<html>proxy</html>"))
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1")
        for _, message in MALFORMED:
            with pytest.raises(ModelError, match=message):
                await embedder.embed(["a", "b"])
        with pytest.raises(ModelError, match="the response is malformed"):
            await embedder.embed(["a"])
    assert len(fake.requests) == len(MALFORMED) + 1  # not retried


async def test_hashing_embedder_is_deterministic_normalised_and_lexical() -> None:
    embedder = HashingEmbedder(dim=64)
    texts = ["Refund my order", "refunds for orders", "where is my parcel", ""]
    vectors = await embedder.embed(texts)
    assert vectors == await HashingEmbedder(dim=64).embed(texts)
    assert all(len(v) == 64 for v in vectors)
    assert math.isclose(math.hypot(*vectors[0]), 1.0)
    assert vectors[3] == [0.0] * 64  # no words: the zero vector
    assert cosine(vectors[0], vectors[0]) == pytest.approx(1.0)
    # shared words and word pieces are close, other words are not
    assert cosine(vectors[0], vectors[1]) > 0.4 > cosine(vectors[0], vectors[2])
    assert cosine(vectors[0], vectors[3]) == 0.0
    # a stable hash: the same vector in every process
    # ("w:abc", "#ab", "abc", "bc#": four features, four buckets)
    assert HashingEmbedder(dim=8).vector("abc") == [-0.5, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0, -0.5]
    with pytest.raises(ValueError, match="dim and ngram must be at least 1"):
        HashingEmbedder(dim=0)


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=r"different sizes \(2 and 3\)"):
        cosine([1.0, 0.0], [1.0, 0.0, 0.0])


def test_wordllama_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)  # import wordllama fails
    with pytest.raises(ImportError, match=r"needs the wordllama package.*pip install wordllama"):
        WordLlamaEmbeddings()


async def test_wordllama_embeds_with_its_bundled_model_offline() -> None:
    pytest.importorskip("wordllama")
    embedder = WordLlamaEmbeddings()
    money, refund, weather = await embedder.embed(
        ["I want my money back", "please refund my order", "what is the weather in Paris"]
    )
    assert len(money) == 256 and math.isclose(math.hypot(*money), 1.0, rel_tol=1e-4)
    # semantic, not lexical: no word in common, yet close
    assert cosine(money, refund) > 0.3 > cosine(money, weather)
    assert await embedder.embed([]) == []
    router = Router(
        [
            Rule(
                "refund",
                [Condition("content", "semantic", "refund my order", threshold=0.3)],
                route="refunds",
            )
        ],
        default="chat",
        embedder=embedder,
    )
    assert (await router.decide("I want my money back")).route == "refunds"
    assert (await router.decide("what is the weather in Paris")).route == "chat"
