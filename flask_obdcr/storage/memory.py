"""An in-process store: for tests, demos and single-process development servers."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient


class MemoryStore(ClientStore):
    """Clients in a dict. Like every backend it keeps its own copies: changing a client's
    nested metadata after ``add`` or ``get`` does not change what is stored."""

    def __init__(self) -> None:
        self._clients: dict[str, StoredClient] = {}
        self._lock = threading.Lock()

    def _add(self, client: StoredClient) -> None:
        client = copy.deepcopy(client)
        with self._lock:
            if client.client_id in self._clients:
                raise ClientExists(client.client_id)
            self._clients[client.client_id] = client

    def _get(self, client_id: str) -> StoredClient | None:
        client = self._clients.get(client_id)
        return None if client is None else copy.deepcopy(client)

    def _list(self) -> Iterator[StoredClient]:
        with self._lock:
            clients = list(self._clients.values())
        # issue order, as the SQL backends list them
        clients.sort(key=lambda client: (client.client_id_issued_at, client.client_id))
        return iter([copy.deepcopy(client) for client in clients])

    def _replace(self, client: StoredClient) -> None:
        client = copy.deepcopy(client)
        with self._lock:
            if client.client_id not in self._clients:
                raise ClientNotFound(client.client_id)
            self._clients[client.client_id] = client

    def _delete(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def __len__(self) -> int:
        return len(self._clients)
