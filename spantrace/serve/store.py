"""What the viewer keeps between requests: runs and traces (least recently used dropped first), and the
queue that lets one job at a time use the model.

FastAPI runs the routes in a thread pool, so both are guarded by plain ``threading`` locks.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class LruStore(Generic[Item]):
    """At most ``capacity`` items under fresh random ids; adding one more drops the least recently used."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1; got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item: Item) -> str:
        item_id = secrets.token_hex(8)
        with self._lock:
            self._items[item_id] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item_id

    def get(self, item_id: str) -> Item:
        """The item (now the most recently used); KeyError when it was never added, dropped or evicted."""
        with self._lock:
            self._items.move_to_end(item_id)
            return self._items[item_id]

    def drop(self, item_id: str) -> bool:
        """Forget the item; whether it was there."""
        with self._lock:
            return self._items.pop(item_id, None) is not None

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class Job:
    """The work the model is doing now; ``stage`` says which step, for the progress line."""

    kind: str
    stage: str
    started: float = field(default_factory=time.monotonic)


class ModelQueue:
    """One job at a time on the model (it is not thread-safe); other requests wait for their turn."""

    def __init__(self) -> None:
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._waiting = 0
        self._job: Job | None = None

    @contextmanager
    def job(self, kind: str, stage: str) -> Iterator[Job]:
        """Wait for the model, then hold it for the block; set ``job.stage`` as the work goes on."""
        with self._state_lock:
            self._waiting += 1
        self._model_lock.acquire()
        job = Job(kind, stage)
        with self._state_lock:
            self._waiting -= 1
            self._job = job
        try:
            yield job
        finally:
            with self._state_lock:
                self._job = None
            self._model_lock.release()

    def status(self) -> dict[str, Any]:
        """``{"busy", "job": {"kind", "stage", "elapsed_s"} or None, "waiting"}``: what ``GET /api/status`` says."""
        with self._state_lock:
            job, waiting = self._job, self._waiting
        described = None
        if job is not None:
            described = {"kind": job.kind, "stage": job.stage, "elapsed_s": round(time.monotonic() - job.started, 3)}
        return {"busy": job is not None, "job": described, "waiting": waiting}
