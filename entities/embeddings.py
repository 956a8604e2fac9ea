"""Text embeddings, for the `semantic` conditions of route mode.

An `Embedder` turns texts into vectors; the router compares them by cosine
similarity. Three are here:

- `OpenAIEmbeddings`: `POST {base_url}/embeddings` of OpenAI or any compatible
  server, retried like the chat adapters.
- `WordLlamaEmbeddings`: a local model shipped inside the `wordllama` package
  (an optional dependency: `pip install wordllama`), no network, no GPU.
- `HashingEmbedder`: words and character n-grams hashed into a fixed-size vector,
  standard library only. It is *lexical*, not semantic ("refund" is close to
  "refunds", not to "money back"): for tests and offline demos.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from typing import Any, Protocol

import httpx

from ._retry import HTTPModel, openai_endpoint
from .models import ModelError

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "OpenAIEmbeddings",
    "WordLlamaEmbeddings",
    "cosine",
]


class Embedder(Protocol):
    """Something that embeds texts: one vector per text, in order, all of one size."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """The vectors of `texts`, in the same order."""
        ...


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine similarity of two vectors (0.0 when either is all zeros)."""
    if len(a) != len(b):
        raise ValueError(f"vectors of different sizes ({len(a)} and {len(b)}) cannot be compared")
    norm = math.hypot(*a) * math.hypot(*b)
    if norm == 0.0:
        return 0.0
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm


class OpenAIEmbeddings(HTTPModel):
    """An `Embedder` on `POST {base_url}/embeddings` (OpenAI or a compatible server).

    `base_url` and `api_key` default to `OPENAI_BASE_URL` (else the OpenAI API) and
    `OPENAI_API_KEY`. `dimensions` asks models that support it for shorter vectors.
    Rate limits (429) and server errors are retried `max_retries` times with
    exponential backoff, honouring `Retry-After`; other errors raise `ModelError`
    with the provider's message. At most `batch_size` texts go in one request.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 512,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        url, headers = openai_endpoint(base_url, api_key)
        super().__init__(url, headers, timeout, max_retries, backoff, transport)
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"OpenAIEmbeddings({self.model!r}, base_url={self.base_url!r})"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors += await self._batch(texts[start : start + self.batch_size])
        return vectors

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions

        async def read(response: httpx.Response) -> list[list[float]]:
            await response.aread()
            return self._vectors(response.json(), len(texts))

        return await self._post("/embeddings", body, read)

    def _vectors(self, body: Any, count: int) -> list[list[float]]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise ModelError(
                f"{self.base_url}: the embeddings response has {got} vectors for {count} texts"
            )
        vectors: list[list[float] | None] = [None] * count
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            vector = item.get("embedding") if isinstance(item, dict) else None
            if (
                not isinstance(index, int)
                or not 0 <= index < count
                or not isinstance(vector, list)
                or not all(isinstance(x, int | float) for x in vector)
            ):
                raise ModelError(
                    f"{self.base_url}: embeddings response item {position} is malformed: "
                    "expected {'index': int, 'embedding': [numbers]} (encoding_format float)"
                )
            vectors[index] = [float(x) for x in vector]
        if any(v is None for v in vectors):
            raise ModelError(f"{self.base_url}: the embeddings response repeats an index")
        return [v for v in vectors if v is not None]


_TOKEN = re.compile(r"\w+")


class HashingEmbedder:
    """Deterministic, dependency-free *lexical* embeddings: the lowercased words of a
    text and their character n-grams (`ngram` long, words padded with `#`), hashed
    (BLAKE2b, so stable across processes) into `dim` signed buckets, L2-normalised.

    Texts that share words or word pieces score high; synonyms do not. Use it for
    tests and offline demos, and a real model (`OpenAIEmbeddings`,
    `WordLlamaEmbeddings`) for meaning.
    """

    def __init__(self, dim: int = 256, *, ngram: int = 3) -> None:
        if dim < 1 or ngram < 1:
            raise ValueError("dim and ngram must be at least 1")
        self.dim = dim
        self.ngram = ngram

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim}, ngram={self.ngram})"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    def vector(self, text: str) -> list[float]:
        """The embedding of one text (synchronously)."""
        vector = [0.0] * self.dim
        for word in _TOKEN.findall(text.lower()):
            padded = f"#{word}#"
            grams = [padded[i : i + self.ngram] for i in range(len(padded) - self.ngram + 1)]
            for feature in [f"w:{word}", *grams]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                number = int.from_bytes(digest, "little")
                vector[number % self.dim] += 1.0 if number >> 63 else -1.0
        norm = math.hypot(*vector)
        return [x / norm for x in vector] if norm else vector


class WordLlamaEmbeddings:
    """Local embeddings from the model that the `wordllama` package ships inside it
    (256 dimensions, token embeddings averaged): no network, no GPU, about a
    millisecond a text. `wordllama` is an optional dependency: `pip install wordllama`.

    `model` takes an already loaded `WordLlama.load(...)` result instead (another
    configuration or size); by default the bundled model loads on the first call.
    """

    def __init__(self, model: Any = None) -> None:
        try:
            import wordllama
        except ImportError as exc:
            raise ImportError(
                "WordLlamaEmbeddings needs the wordllama package, which ships its model: "
                "pip install wordllama"
            ) from exc
        self._package = wordllama
        self._model = model
        self._loading = asyncio.Lock()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = await self._load()
        return [[float(x) for x in row] for row in model.embed(texts, norm=True)]

    async def _load(self) -> Any:
        async with self._loading:
            if self._model is None:
                self._model = await asyncio.to_thread(self._load_bundled)
            return self._model

    def _load_bundled(self) -> Any:
        # The package keeps its tokenizer under tokenizers/, where WordLlama.load()
        # looks for a cache, not a bundled file: point the cache at the package so
        # nothing is downloaded.
        from pathlib import Path

        root = Path(self._package.__file__).parent
        return self._package.WordLlama.load(cache_dir=root, disable_download=True)
