"""Stage 2, the inputs: checkpoint formats, local and Hub sources pinned to a commit, LoRA
adapters, and retries of transient Hub errors.

``checkpoint`` reads and writes safetensors (headers, tensors by offset, sharded output);
``hub`` reaches the Hub (access settings, pinned file downloads, ranged header reads);
``datasets`` reads evaluation texts from a Hub dataset's parquet files; ``lora`` opens
adapters and attaches their deltas to a base's tensors; ``sources`` opens a model (metadata
only) and fetches its weight files when the merge needs them.
"""

from merge_engine.io.datasets import load_dataset_texts
from merge_engine.io.hub import HubAccess
from merge_engine.io.sources import Source, open_source

__all__ = ["HubAccess", "Source", "load_dataset_texts", "open_source"]
