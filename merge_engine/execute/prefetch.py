"""Fetch weight files ahead of the merge, a bounded window per model, and drop them after.

The plan's tasks are ordered by the reference model's file layout, so each model's files
are needed in a known order. One thread per model downloads its files in that order,
keeping at most ``window`` of them on disk (the one being read and the next ones); once the
last tensor that needs a file has been read, the file is deleted if it was streamed into a
work directory. Peak input disk is ``models x window`` files, whatever the model size, and
the download of the next files overlaps the merge of the current ones. (A donor whose
shards interleave differently from the reference's may need a file beyond the window; the
file the reader waits for is always fetched, so the merge never deadlocks.) A LoRA
adapter's file is one more model here, under :meth:`Plan.adapter_index`: fetched once and
released after the last tensor it updates.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

from merge_engine.errors import MergeEngineError
from merge_engine.plan.build import Plan

Key = tuple[int, str]
"""(model index, file name)."""


class Prefetcher:
    """Hands out local paths of weight files in plan order; see the module docstring."""

    def __init__(self, plan: Plan, window: int = 2):
        self.plan = plan
        self.window = max(1, window)
        self._cond = threading.Condition()
        self._paths: dict[Key, Path] = {}
        self._errors: dict[Key, BaseException] = {}
        self._held: dict[int, int] = defaultdict(int)
        self._wanted: set[Key] = set()
        self._closed = False
        order: dict[int, list[str]] = defaultdict(list)
        self._last_use: dict[Key, int] = {}
        for t, task in enumerate(plan.tasks):
            for inp in task.inputs:
                keys = [(inp.model, inp.meta.file)]
                if inp.lora is not None:
                    keys.append((plan.adapter_index(inp.model), inp.lora.a.file))
                for key in keys:
                    if key not in self._last_use:
                        order[key[0]].append(key[1])
                    self._last_use[key] = t
        self._release_at: dict[int, list[Key]] = defaultdict(list)
        for key, t in self._last_use.items():
            self._release_at[t].append(key)
        self._threads = [
            threading.Thread(target=self._fetch_all, args=(model, files), daemon=True)
            for model, files in order.items()
        ]
        for thread in self._threads:
            thread.start()

    def path(self, model: int, file: str) -> Path:
        """The local path of a file, waiting for its download; re-raises its failure."""
        key = (model, file)
        with self._cond:
            self._wanted.add(key)
            self._cond.notify_all()
            while key not in self._paths and key not in self._errors:
                if self._closed:
                    raise MergeEngineError("the merge was stopped while fetching files")
                self._cond.wait(0.5)
            if key in self._errors:
                raise self._errors[key]
            return self._paths[key]

    def task_done(self, task_index: int) -> list[Path]:
        """Release the files whose last use was this task; returns those deleted."""
        deleted = []
        for model, file in self._release_at.get(task_index, ()):
            source = self.plan.owner(model)
            with self._cond:
                path = self._paths.pop((model, file), None)
                self._held[model] -= 1
                self._cond.notify_all()
            if path is not None and source.streams_files:
                path.unlink(missing_ok=True)
                deleted.append(path)
        return deleted

    def close(self) -> None:
        """Stop fetching (the threads finish their current download and exit)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _fetch_all(self, model: int, files: list[str]) -> None:
        source = self.plan.owner(model)
        for file in files:
            with self._cond:
                while (self._held[model] >= self.window and (model, file) not in self._wanted
                       and not self._closed):
                    self._cond.wait(0.5)
                if self._closed:
                    return
                self._held[model] += 1
            try:
                path = source.fetch(file)
            except BaseException as e:  # noqa: BLE001 - re-raised in the reader by path()
                with self._cond:
                    self._errors[(model, file)] = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._paths[(model, file)] = path
                self._cond.notify_all()
