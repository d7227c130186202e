"""The router's view of the app's adapters: listed in the store ahead of requests, fetched early.

- Listing: every `list_every_s` the router lists the adapters pushed under the app's model (one
  store LIST, snapshots/adapters `AdapterStore.names`) and puts the names on the ReadinessBoard
  (`note_adapters`); the gateway's serve provider reads them from there for /v1/models and to
  answer a missing adapter's 404 without calling the app, so a request never lists the store.
- Early fetch: the first request the router sees for an adapter starts that adapter's download
  into this node's cache (checksums verified) at once, while the request waits for a replica:
  when base and adapter are both cold, the adapter is fetched while the base thaws, and the
  engine's resolver then finds it cached. (On a multi-node cluster this warms the router's node;
  a replica elsewhere fetches it itself.)
"""
from __future__ import annotations

import logging
import threading

from serve_apps.llm.periodic import Periodic

log = logging.getLogger("thawline.serve")


class AdapterListing(Periodic):
    name = "thawline-adapter-listing"

    def __init__(self, app_name: str, store_url: str, model: str, board, every_s: float) -> None:
        from snapshots.adapters import AdapterStore, adapter_cache_root

        self.app_name, self.model, self.board, self.every_s = app_name, model, board, every_s
        self.store = AdapterStore(store_url)
        self.cache_root = adapter_cache_root()
        self.names: frozenset[str] = frozenset()
        self._fetched: set[str] = set()
        super().__init__()

    def tick(self) -> None:
        names = frozenset(self.store.names(self.model))
        if names != self.names:
            self.names = names
            self.board.note_adapters.remote(self.app_name, sorted(names))

    def failed(self, error: Exception) -> str:  # a store hiccup: the board keeps the last listing
        return f"listing adapters of {self.model} failed: {error}"

    def fetch_early(self, name: str) -> None:
        """Start fetching `name` into this node's cache unless done before (never blocks)."""
        if name in self._fetched:
            return
        self._fetched.add(name)
        threading.Thread(target=self._fetch, args=(name,), name="thawline-adapter-fetch", daemon=True).start()

    def _fetch(self, name: str) -> None:
        try:
            self.store.fetch(self.model, name, self.cache_root)
        except Exception as e:  # noqa: BLE001 - the engine's resolver fetches (and names the error) itself
            self._fetched.discard(name)
            log.info("thawline: early fetch of adapter %s skipped: %s", name, e)
