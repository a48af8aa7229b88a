"""List + watch of one kind of object, kept going: resume, relist on 410 Gone, backoff.

The loop lists (learning the collection's resourceVersion), hands the whole list over, then
watches from that version; each event moves the version on, so a watch the server closes
(its timeout) resumes where it stopped. When the version has been compacted away the server
answers 410 Gone: the loop lists again, since events missed in the gap (a deletion above all)
can only be recovered from a fresh list. Any other failure waits an exponential backoff with
jitter, then resumes from the last version. The server-side field selector keeps the traffic
to this node's objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import httpx2 as httpx
from lightkube import ApiError, Client
from lightkube.core.exceptions import NotReadyError

from loxicni.base.logs import get_logger
from loxicni.k8s.backoff import Backoff

log = get_logger(__name__)

T = TypeVar("T")
SERVER_TIMEOUT = 240  # seconds a watch request lasts before the server closes it


class Watcher(Generic[T]):
    """Runs in its own thread until ``stop`` is set.

    ``on_list(objects)`` receives the full state after every (re)list; ``on_event(type, obj)``
    every watch event (ADDED, MODIFIED, DELETED) after it.
    """

    def __init__(
        self,
        client: Client,
        resource: type[T],
        *,
        fields: Mapping[str, str],
        on_list: Callable[[list[T]], None],
        on_event: Callable[[str, T], None],
        stop: threading.Event,
        namespace: str | None = None,
        name: str = "watch",
        chunk_size: int | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.fields: dict[str, Any] = dict(fields)
        self.on_list = on_list
        self.on_event = on_event
        self.stop = stop
        self.namespace = namespace
        self.name = name
        self.chunk_size = chunk_size  # a list in pages of this many: bounded responses
        self.backoff = Backoff()
        self.resource_version: str | None = None
        self.lists = 0  # how many times it listed (relists after 410 included)
        self.healthy = threading.Event()  # set while the watch stream is up to date

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
            except ApiError as exc:
                self.healthy.clear()
                if exc.status.code == 410:
                    log.info(
                        "%s: resourceVersion %s expired; relisting",
                        self.name,
                        self.resource_version,
                    )
                    self.resource_version = None
                    continue
                self._wait(f"API error {exc.status.code}: {exc.status.message}")
            except (httpx.HTTPError, OSError, NotReadyError) as exc:
                self.healthy.clear()
                self._wait(f"{type(exc).__name__}: {exc}")

    def _list(self) -> None:
        listing: Any = self.client.list(
            self.resource,
            namespace=self.namespace,
            fields=self.fields,
            chunk_size=self.chunk_size,
        )
        objects: list[T] = list(listing)
        version = str(listing.resourceVersion)
        self.lists += 1
        self.on_list(objects)
        self.resource_version = version
        self.healthy.set()
        self.backoff.reset()
        log.info("%s: listed %d, at resourceVersion %s", self.name, len(objects), version)

    def _watch(self) -> None:
        events: Any = self.client.watch(
            self.resource,
            namespace=self.namespace,
            fields=self.fields,
            resource_version=self.resource_version,
            server_timeout=SERVER_TIMEOUT,
        )
        for kind, obj in events:
            if self.stop.is_set():
                return
            version = obj.metadata.resourceVersion if obj.metadata else None
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(kind, obj)
            if version:
                self.resource_version = version
            self.healthy.set()
            self.backoff.reset()

    def _wait(self, why: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("%s: %s; retrying in %.1f s", self.name, why, delay)
        self.stop.wait(delay)
