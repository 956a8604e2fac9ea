"""Adapters: the stores (memory, SQLite; JetStream with its issue) and, later, the
HTTP server, the Python client and the CLI. Import a store from its module:
`from wakeful.transports.sqlite import SQLiteStore`."""

from __future__ import annotations

__all__: list[str] = []
