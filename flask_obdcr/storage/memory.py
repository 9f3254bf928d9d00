"""An in-process store: for tests, demos and single-process development servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient


class MemoryStore(ClientStore):
    def __init__(self) -> None:
        self._clients: dict[str, StoredClient] = {}
        self._lock = threading.Lock()

    def _add(self, client: StoredClient) -> None:
        with self._lock:
            if client.client_id in self._clients:
                raise ClientExists(client.client_id)
            self._clients[client.client_id] = client

    def _get(self, client_id: str) -> StoredClient | None:
        return self._clients.get(client_id)

    def _list(self) -> Iterator[StoredClient]:
        with self._lock:
            return iter(list(self._clients.values()))

    def _replace(self, client: StoredClient) -> None:
        with self._lock:
            if client.client_id not in self._clients:
                raise ClientNotFound(client.client_id)
            self._clients[client.client_id] = client

    def _delete(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def __len__(self) -> int:
        return len(self._clients)
