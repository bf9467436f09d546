"""Named lm-eval harness tasks (``hellaswag``, ``arc_easy``, ...), optional: they run only
where the ``lm_eval`` package is installed and the device is a CUDA GPU. The model is
loaded by lm-eval's ``hf`` backend from the local directory, without remote code."""

from __future__ import annotations

import re
from pathlib import Path

from merge_engine.errors import InputError
from merge_engine.execute.executor import resolve_device

MAX_TASKS = 8
TASK = re.compile(r"[\w.-]{1,64}")


def check_tasks(tasks: list[str], where: str = "tasks") -> list[str]:
    """The task names, checked (a list of at most :data:`MAX_TASKS` names)."""
    if len(tasks) > MAX_TASKS:
        raise InputError(f"{where} names {len(tasks)} lm-eval tasks; the limit is {MAX_TASKS}")
    for i, task in enumerate(tasks):
        if not isinstance(task, str) or not TASK.fullmatch(task):
            raise InputError(f"{where}[{i}] must be an lm-eval task name, not {task!r}")
    return list(tasks)


def run_tasks(directory: str | Path, tasks: list[str], *, device: str = "auto",
              limit: int | None = None) -> dict[str, dict[str, float]]:
    """Task -> metric name -> value, from ``lm_eval.simple_evaluate`` (``limit``: at most
    that many examples per task)."""
    check_tasks(tasks)
    try:
        import lm_eval
    except ImportError:
        raise InputError("lm-eval tasks need the lm_eval package, which is not installed "
                         "here (pip install lm-eval)") from None
    dev = str(resolve_device(device))
    if not dev.startswith("cuda"):
        raise InputError(f"lm-eval tasks run only on a CUDA GPU, and the device here is {dev}")
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(directory), "trust_remote_code": False,
                                "dtype": "auto"},
        tasks=list(tasks), device=dev, limit=limit)
    return {task: {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
            for task, metrics in results["results"].items()}
