"""Stage 5, the executor: weight files fetched ahead of need and dropped once read
(``prefetch``), tensors read, merged in float32 on the device and written shard by shard
(``executor``)."""

from merge_engine.execute.executor import Executor, Progress, Timings, resolve_device

__all__ = ["Executor", "Progress", "Timings", "resolve_device"]
