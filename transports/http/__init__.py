"""wakeful over HTTP: the entity API, Durable Streams reads of entity logs, and the
generic Durable Streams server at `/v1/stream/{name}`.

```python
app = create_app(Runtime(registry, SQLiteStore("wakeful.db")), ServerConfig.from_env())
```
"""

from __future__ import annotations

from .app import create_app
from .config import ApiKey, ServerConfig
from .streams import streams_app

__all__ = ["ApiKey", "ServerConfig", "create_app", "streams_app"]
