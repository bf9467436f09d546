"""Hugging Face Jobs, run locally: each Job's command is a subprocess of this server.

Contract (what ``HfApi.run_job``/``inspect_job``/``list_jobs``/``fetch_job_logs``/
``cancel_job``/``list_jobs_hardware`` see):
- A Job goes SCHEDULING -> RUNNING -> COMPLETED (exit 0), ERROR (``status.message`` says
  why: the exit code, or the timeout) or CANCELED. Jobs live in memory: a restarted
  server has none.
- The command runs in a fresh directory with the Job's ``environment`` and ``secrets``
  as its environment, plus ``HF_ENDPOINT`` (this server), ``HF_HUB_DISABLE_XET=1`` and
  this server's own ``PATH``/``PYTHONPATH``; the image is not pulled: ``python`` is this
  server's interpreter. stdout and stderr, line by line, are the Job's logs.
- ``timeoutSeconds`` kills the process group and ends the Job in ERROR; cancel kills it
  and ends it CANCELED. Secrets are never shown back: inspect lists their names only.
- Faults (tests): ``inject`` queues behaviours for the next Jobs created: ``delay``
  (stay SCHEDULING ``seconds`` first), ``hang`` (the command never ends: only the
  timeout or a cancel ends it; ``timeout`` overrides the Job's), ``exit`` (print
  ``log`` lines and exit with ``exit_code`` instead of running the command).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SCHEDULING, RUNNING, COMPLETED, ERROR, CANCELED = (
    "SCHEDULING", "RUNNING", "COMPLETED", "ERROR", "CANCELED")
TERMINAL = (COMPLETED, ERROR, CANCELED)

HARDWARE = (
    # name, pretty name, vCPU, RAM GB, disk GB, GPU (model, count, VRAM GB) or None, $/hour:
    # a sample of the Hub's table (hub docs "Jobs: Pricing and Billing"), for tests.
    ("cpu-basic", "CPU Basic", 2, 16, 50, None, 0.01),
    ("cpu-upgrade", "CPU Upgrade", 8, 32, 50, None, 0.03),
    ("t4-small", "Nvidia T4 - small", 4, 15, 50, ("T4", 1, 16), 0.40),
    ("t4-medium", "Nvidia T4 - medium", 8, 30, 100, ("T4", 1, 16), 0.60),
    ("l4x1", "1x Nvidia L4", 8, 30, 400, ("L4", 1, 24), 0.80),
    ("a10g-small", "Nvidia A10G - small", 4, 15, 110, ("A10G", 1, 24), 1.00),
    ("a10g-large", "Nvidia A10G - large", 12, 46, 200, ("A10G", 1, 24), 1.50),
    ("l40sx1", "1x Nvidia L40S", 8, 62, 380, ("L40S", 1, 48), 1.80),
    ("a100-large", "Nvidia A100 - large", 12, 142, 1000, ("A100", 1, 80), 2.50),
    ("h200", "1x Nvidia H200", 23, 256, 3000, ("H200", 1, 141), 5.00),
)


def hardware_json() -> list[dict]:
    """The hardware table as ``GET /api/jobs/hardware`` answers it."""
    rows = []
    for name, pretty, cpu, ram, disk, gpu, hourly in HARDWARE:
        micro = round(hourly / 60 * 1e6)
        rows.append({
            "name": name, "prettyName": pretty, "cpu": f"{cpu} vCPU", "ram": f"{ram} GB",
            "ephemeralStorage": f"{disk} GB",
            "accelerator": None if gpu is None else {
                "type": "gpu", "model": gpu[0], "quantity": str(gpu[1]),
                "vram": f"{gpu[2]} GB", "manufacturer": "Nvidia"},
            "unitCostMicroUSD": micro, "unitCostUSD": micro / 1e6, "unitLabel": "minute",
        })
    return rows


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class LocalJob:
    id: str
    owner: str
    spec: dict
    endpoint: str
    created_at: str = field(default_factory=_now)
    stage: str = SCHEDULING
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_json(self) -> dict:
        spec = self.spec
        return {
            "id": self.id, "createdAt": self.created_at, "startedAt": self.started_at,
            "finishedAt": self.finished_at, "dockerImage": spec.get("dockerImage"),
            "spaceId": spec.get("spaceId"), "command": spec.get("command"),
            "arguments": spec.get("arguments") or [],
            "environment": spec.get("environment") or {},
            "secrets": {k: None for k in spec.get("secrets") or {}},
            "flavor": spec.get("flavor"), "labels": spec.get("labels"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": self.owner, "name": self.owner, "type": "user"},
        }


class JobRunner:
    """The server's Jobs; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[str, LocalJob] = {}
        self._faults: list[dict] = []
        self._lock = threading.Lock()

    def inject(self, fault: dict) -> dict:
        """Queue a fault for the next ``count`` Jobs; ValueError when malformed."""
        action = fault.get("action")
        if action not in ("delay", "hang", "exit"):
            raise ValueError("action must be delay, hang or exit")
        fault = {"count": 1, **fault}
        if int(fault["count"]) < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(fault)
        return fault

    def start(self, owner: str, spec: dict, endpoint: str) -> LocalJob:
        job = LocalJob(uuid.uuid4().hex[:24], owner, spec, endpoint)
        with self._lock:
            fault = self._faults[0] if self._faults else None
            if fault is not None:
                fault["count"] -= 1
                if fault["count"] == 0:
                    self._faults.pop(0)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, fault), daemon=True,
                         name=f"localhub-job-{job.id}").start()
        return job

    def get(self, owner: str, job_id: str) -> LocalJob | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def list(self, owner: str, labels: dict[str, str], stages: list[str]) -> list[LocalJob]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if j.owner == owner
                and all((j.spec.get("labels") or {}).get(k) == v for k, v in labels.items())
                and (not stages or j.stage in stages)]

    def cancel(self, job: LocalJob) -> None:
        with job.lock:
            if job.stage in TERMINAL:
                return
            job.cancelled.set()
            _kill(job.proc)

    def stop(self) -> None:
        """Kill every running Job (the server is going away)."""
        for job in list(self._jobs.values()):
            self.cancel(job)

    def _run(self, job: LocalJob, fault: dict | None) -> None:
        spec = job.spec
        timeout = spec.get("timeoutSeconds")
        command = list(spec.get("command") or []) + list(spec.get("arguments") or [])
        if fault and fault["action"] == "delay":
            if job.cancelled.wait(float(fault.get("seconds", 1))):
                return self._end(job, CANCELED, None)
        elif fault and fault["action"] == "hang":
            command = ["python", "-c", "import time; time.sleep(1e6)"]
            timeout = fault.get("timeout", timeout)
        elif fault and fault["action"] == "exit":
            lines = "\n".join(fault.get("log") or [])
            command = ["python", "-c",
                       f"import sys; print({lines!r}); sys.exit({int(fault.get('exit_code', 1))})"]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job.id}-", dir=self.root))
        env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG") if k in os.environ}
        env.update({str(k): str(v) for k, v in (spec.get("environment") or {}).items()})
        env.update({str(k): str(v) for k, v in (spec.get("secrets") or {}).items()})
        env.update({"HF_ENDPOINT": job.endpoint, "HF_HUB_DISABLE_XET": "1",
                    "HOME": str(workdir), "HF_HOME": str(workdir / ".hf")})
        with job.lock:
            if job.cancelled.is_set():
                return self._end(job, CANCELED, None)
            try:
                job.proc = subprocess.Popen(
                    command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                return self._end(job, ERROR, f"Job could not start: {exc}")
            job.stage, job.started_at = RUNNING, _now()
        reader = threading.Thread(target=self._read, args=(job,), daemon=True)
        reader.start()
        try:
            rc = job.proc.wait(timeout=float(timeout) if timeout else None)
        except subprocess.TimeoutExpired:
            _kill(job.proc)
            job.proc.wait()
            reader.join(5)
            return self._end(job, ERROR, f"Job timed out after {timeout} seconds")
        reader.join(5)
        if job.cancelled.is_set():
            return self._end(job, CANCELED, None)
        self._end(job, COMPLETED if rc == 0 else ERROR,
                  None if rc == 0 else f"Job failed with exit code: {rc}")

    @staticmethod
    def _read(job: LocalJob) -> None:
        for raw in job.proc.stdout:
            job.logs.append((_now(), raw.decode(errors="replace").rstrip("\n")))

    @staticmethod
    def _end(job: LocalJob, stage: str, message: str | None) -> None:
        with job.lock:
            job.stage, job.message, job.finished_at = stage, message, _now()


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

