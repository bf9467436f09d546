"""Sizing a merge for a Hugging Face Job: what it needs, the flavor, time and cost.

The streaming merge keeps at most two shards per input model on disk (a download window
of two, each deleted once read) and two output shards (written, then uploaded and
deleted): (models + 1) x 2 shards of disk, a shard being the largest input shard or the
output shard size, whichever is larger. On the GPU it holds, per tensor in flight, a
float32 copy of each input and of the output, double-buffered: (models + 1) x 2 x the
largest tensor x 4 bytes. A flavor fits when its GPU memory and ephemeral disk cover
both with a 10 % margin; the cheapest that fits is chosen unless one is configured.
Time is estimated as a fixed start-up (image pull, CUDA init) plus every input byte
downloaded and every output byte uploaded at ``mbps``; the Job's timeout is twice that
plus ten minutes.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from huggingface_hub import JobHardwareInfo

from merge_engine import Plan

from ..errors import BotError

STARTUP_SECONDS = 180.0
MARGIN = 1.1


@dataclass(frozen=True)
class Needs:
    disk_bytes: int
    gpu_bytes: int
    input_bytes: int
    output_bytes: int

    def seconds(self, mbps: float) -> float:
        """Estimated wall time of the Job."""
        return STARTUP_SECONDS + (self.input_bytes + self.output_bytes) / (mbps * 1e6)

    def timeout(self, mbps: float) -> int:
        return int(2 * self.seconds(mbps) + 600)


def needs(plan: Plan, out_shard_bytes: int) -> Needs:
    """What merging ``plan`` takes; see the module docstring."""
    largest_shard, largest_tensor, inputs = 0, 0, 0
    for source in plan.sources:
        files: dict[str, int] = defaultdict(int)
        for meta in source.tensors.values():
            files[meta.file] += meta.end - meta.begin
            largest_tensor = max(largest_tensor, math.prod(meta.shape))
        largest_shard = max([largest_shard, *files.values()])
        inputs += sum(files.values())
    shard = max(largest_shard, min(out_shard_bytes, plan.output_bytes))
    models = len(plan.sources)
    return Needs(
        disk_bytes=(models + 1) * 2 * shard,
        gpu_bytes=(models + 1) * 2 * largest_tensor * 4,
        input_bytes=inputs,
        output_bytes=plan.output_bytes,
    )


def gigabytes(text: str | None) -> float:
    """``"24 GB"`` -> 24.0; unknown (``"N/A"``, None) -> 0."""
    found = re.match(r"\s*([\d.]+)\s*([GT])B", text or "")
    if not found:
        return 0.0
    return float(found.group(1)) * (1000 if found.group(2) == "T" else 1)


def fits(hw: JobHardwareInfo, need: Needs) -> bool:
    vram = gigabytes(hw.accelerator.vram) if hw.accelerator else 0.0
    disk = gigabytes(hw.ephemeral_storage)
    return vram * 1e9 >= need.gpu_bytes * MARGIN and disk * 1e9 >= need.disk_bytes * MARGIN


def pick(hardware: list[JobHardwareInfo], need: Needs, override: str | None) -> JobHardwareInfo:
    """The configured flavor, or the cheapest GPU flavor that fits; BotError if none."""
    if override:
        for hw in hardware:
            if hw.name == override:
                return hw
        raise BotError(f"MERGEBOT_JOBS_FLAVOR {override!r} is not a Jobs flavor")
    fitting = [hw for hw in hardware if hw.accelerator is not None and fits(hw, need)]
    if not fitting:
        raise BotError(
            f"no Jobs flavor has {need.gpu_bytes * MARGIN / 1e9:.1f} GB of GPU memory and "
            f"{need.disk_bytes * MARGIN / 1e9:.1f} GB of disk for this merge")
    return min(fitting, key=lambda hw: (hw.unit_cost_micro_usd, hw.name))


def cost_usd(hw: JobHardwareInfo, seconds: float) -> float:
    """The price of ``seconds`` on ``hw`` (billed per started minute)."""
    per_second = {"minute": 60, "hour": 3600, "second": 1}.get(hw.unit_label, 60)
    units = math.ceil(seconds / per_second)
    return round(units * hw.unit_cost_usd, 4)
