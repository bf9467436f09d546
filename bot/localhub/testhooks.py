"""Test instrumentation: transfer counters and fault injection (the `/_localhub/*` routes).

Stats contract (`GET /_localhub/stats`):
    requests                      number of requests handled
    download.bytes                body bytes sent by `/resolve` (GET), all files
    download.files                {"<repo_id>/<path>": bytes sent} (datasets:
                                  "datasets/<repo_id>/<path>")
    safetensors.header_bytes      bytes of `.safetensors` bodies inside the 8-byte length +
                                  JSON header (what a header-only preflight reads)
    safetensors.data_bytes        bytes of `.safetensors` bodies past the header (tensor data)
    safetensors.range_requests    GETs of `.safetensors` with a Range header
    safetensors.full_requests     GETs of `.safetensors` without one
    upload.lfs_bytes              bytes received by LFS upload PUTs
    upload.commit_bytes           bytes of commit request bodies
    commits                       commits made
    webhooks.delivered/failed     webhook deliveries that got a 2xx / gave up
    webhooks.recent               the last 50 deliveries: id, event, status, attempts
    faults_triggered              faults served

Faults contract (`POST /_localhub/faults` with JSON {"path_regex": str, "status": int,
"count": int = 1, "method": str | None, "delay": float = 0}): the next `count` requests
whose path matches `path_regex` (re.search on the URL path, e.g. "/api/models/.*/commit/")
and method (if given) are answered with `status` and a JSON error, before any other
processing; with `delay` (seconds) and no `status` they are held that long, then served
normally (a slow Hub, to catch a client mid-request).
"""

from __future__ import annotations

import copy
import re
import threading
from collections import deque
from dataclasses import dataclass


class Stats:
    """Thread-safe counters (see the module docstring for the shape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._data = {
                "requests": 0,
                "download": {"bytes": 0, "files": {}},
                "safetensors": {
                    "header_bytes": 0,
                    "data_bytes": 0,
                    "range_requests": 0,
                    "full_requests": 0,
                },
                "upload": {"lfs_bytes": 0, "commit_bytes": 0},
                "commits": 0,
                "webhooks": {"delivered": 0, "failed": 0},
                "faults_triggered": 0,
            }
            self._recent: deque = deque(maxlen=50)

    def incr(self, *keys: str, by: int = 1) -> None:
        with self._lock:
            node = self._data
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = node.get(keys[-1], 0) + by

    def sent(self, name: str, nbytes: int, header_end: int | None, offset: int) -> None:
        """Count `nbytes` of file `name` sent from `offset`; split at `header_end` if given."""
        with self._lock:
            download = self._data["download"]
            download["bytes"] += nbytes
            download["files"][name] = download["files"].get(name, 0) + nbytes
            if header_end is not None:
                header = max(0, min(offset + nbytes, header_end) - offset)
                self._data["safetensors"]["header_bytes"] += header
                self._data["safetensors"]["data_bytes"] += nbytes - header

    def delivery(self, record: dict) -> None:
        with self._lock:
            key = "delivered" if record.get("ok") else "failed"
            self._data["webhooks"][key] += 1
            self._recent.append(record)

    def snapshot(self) -> dict:
        with self._lock:
            data = copy.deepcopy(self._data)
            data["webhooks"]["recent"] = list(self._recent)
            return data


@dataclass
class Fault:
    path_regex: str
    status: int | None
    count: int = 1
    method: str | None = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return re.search(self.path_regex, path) is not None


class Faults:
    """Pending injected faults, consumed in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, spec: dict) -> Fault:
        """Add a fault from its JSON spec; ValueError when malformed."""
        try:
            fault = Fault(
                path_regex=str(spec["path_regex"]),
                status=int(spec["status"]) if spec.get("status") is not None else None,
                count=int(spec.get("count", 1)),
                method=spec.get("method"),
                delay=float(spec.get("delay") or 0.0),
            )
            re.compile(fault.path_regex)
        except (KeyError, TypeError, re.error) as exc:
            raise ValueError(f"bad fault spec: {exc}") from exc
        if fault.status is None and fault.delay <= 0:
            raise ValueError("a fault needs a status or a delay")
        if (fault.status is not None and not 100 <= fault.status <= 599) or fault.count < 1:
            raise ValueError("status must be an HTTP status and count >= 1")
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> tuple[int | None, float]:
        """(status, delay) to inject for this request, if a pending fault matches
        (consumes one); (None, 0.0) when none does."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault.status, fault.delay
        return None, 0.0

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[dict]:
        with self._lock:
            return [dict(f.__dict__) for f in self._faults]
