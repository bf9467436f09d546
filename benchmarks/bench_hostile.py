"""Hostile-input benchmark: what the worst requests cost a real `mergebot serve` process.

    python benchmarks/bench_hostile.py [--random 300] [--data DIR]

Starts `mergebot localhub` (three tiny public source models) and `mergebot serve --workers 0
--no-ui`, warms it up with valid checks, then sends hostile requests one at a time, by
class: recipes (alias bombs, deep nesting, control characters, huge numbers, bad dates,
recursive aliases, oversized, node-heavy, local paths, random hypothesis texts) to
/api/validate and /api/recipes, request bodies (not JSON, deeply nested JSON, oversized),
and webhook bodies to /webhooks/hub. For each: the answer's status (a crash is a 5xx, a
dropped connection or the server exiting), the wall time, the server's CPU time (user +
system, which a busy machine does not inflate), and its peak RSS during the request above
its RSS before it (Linux: the peak is reset through /proc/PID/clear_refs before each
request and read from VmHWM after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from procs import free_port, start_localhub, wait_http  # noqa: E402

from merge_engine.synth import LlamaShape, write_family  # noqa: E402
from tests.hostile import json_values, recipe_texts  # noqa: E402

TOKEN = "bench-token"
SECRET = "bench-secret"
REPOS = ["bench/base", "bench/donor-1", "bench/donor-2"]
GOOD = (f"merge_method: task_arithmetic\nbase_model: {REPOS[0]}\nmodels:\n"
        f"  - model: {REPOS[1]}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {REPOS[2]}\n    parameters: {{weight: 0.3}}\n")


def laughs(width: int, depth: int) -> str:
    lines = ['l0: &l0 [' + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, depth):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + GOOD


def recipe_cases() -> dict[str, list[str]]:
    """Hand-made hostile recipes, by class."""
    limit = 64 * 1024
    return {
        "alias bomb": [laughs(9, 9), laughs(10, 10), laughs(2, 60), laughs(100, 3),
                       laughs(30, 5) + "x: [" + ",".join(["*l4"] * 200) + "]\n"],
        "deep nesting": ["[" * n + "]" * n for n in (33, 1000, 30_000)]
                        + ["{a: " * 5000 + "}" * 5000,
                           "".join(f"{' ' * i}k{i}:\n" for i in range(300)) + " " * 300 + "x",
                           "".join(f"k{i}: &a{i} [{f'*a{i - 1}' if i else 1}]\n"
                                   for i in range(2000))],
        "control characters": [GOOD.replace("task", "ta\0sk"), "\x1b[2J" + GOOD,
                               GOOD + "name: \ud800\n", "\x7f" * 1000],
        "huge numbers": [GOOD.replace("1.0", "9" * 5000), GOOD.replace("1.0", "9" * 4000),
                         GOOD.replace("0.3", "0." + "3" * 60_000), "a: 0x" + "f" * 60_000,
                         GOOD.replace("1.0", "1e999999"), "a: " + "1:" * 20_000 + "1"],
        "bad values": [GOOD.replace("1.0", "2024-13-45"), "a: !!binary ZZZ",
                       "a: !!python/object/apply:os.system [id]", "? [1, 2]\n: 3\n" + GOOD,
                       "a: &a [1, *a]\n" + GOOD, "a: !!set {x, y}\n" + GOOD],
        "size": [GOOD + "#" * (limit - len(GOOD)), GOOD + "#" * limit,
                 "[" + ",".join(["1"] * (limit // 2 - 1)) + "]",
                 "\n".join(f"k{i}: {i}" for i in range(limit // 10)),
                 "a: '" + "x" * (limit - 8) + "'"],
        "local paths": [GOOD.replace(REPOS[0], p) for p in
                        ("/etc", "/nonexistent", "./mergebot-home", "../..", "~", "~root",
                         "bench", "/proc/self")],
    }


def random_recipes(count: int) -> list[str]:
    found: list[str] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(recipe_texts(REPOS[1:], base=REPOS[0]))
    def collect(text):
        found.append(text)

    collect()
    return found


def random_json(count: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(json_values)
    def collect(value):
        found.append(json.dumps(value).encode())

    collect()
    return found


def body_cases() -> list[bytes]:
    return [b"", b"{", b"\xff\xfe", b"[" * 390_000, b'{"recipe": ' * 50_000,
            json.dumps({"recipe": GOOD, "repo_id": 5, "private": "yes"}).encode(),
            json.dumps({"recipe": "x" * 10_000_000}).encode(), b"0" * 5_000_000,
            json.dumps({"recipe": ["a"] * 100_000}).encode()]


def webhook_cases() -> list[bytes]:
    push = {"event": {"action": "update", "scope": "repo.content"},
            "repo": {"type": "model", "name": REPOS[1], "private": False},
            "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "a" * 40, "newSha": "b" * 40}]}
    many = dict(push, updatedRefs=[{"ref": f"refs/heads/b{i}", "newSha": "c" * 40}
                                   for i in range(20_000)])
    return [b"[" * 900_000, b"{" * 10, json.dumps(many).encode(), b"x" * 2_000_000,
            json.dumps(dict(push, repo=[1] * 1000)).encode(),
            json.dumps(dict(push, updatedRefs="main")).encode()]


class Server:
    """The `mergebot serve` process and its memory readings."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url
        self.client = httpx2.Client(timeout=120)

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self) -> int:
        return self._status("VmRSS:")

    def cpu(self) -> float:
        """User + system seconds the server has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def send(self, path: str, body: bytes, headers: dict) -> tuple[int, float, float, int]:
        """(status or 0 for a dropped connection, wall seconds, CPU seconds, peak RSS above
        the RSS before)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        before, cpu = self.rss(), self.cpu()
        started = time.perf_counter()
        try:
            status = self.client.post(f"{self.url}{path}", content=body, headers=headers
                                      ).status_code
        except httpx2.TransportError:
            status = 0
        seconds = time.perf_counter() - started
        if self.proc.poll() is not None:
            return status, seconds, 0.0, 0
        return status, seconds, self.cpu() - cpu, max(self._status("VmHWM:") - before, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=300, help="random recipe texts")
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    models = data / "models"
    write_family(models, LlamaShape(hidden=64, intermediate=128, layers=2, vocab=128,
                                    heads=4, kv_heads=2), donors=2, delta_scale=0.01)
    procs: list[subprocess.Popen] = []
    try:
        hub, hub_url = start_localhub(data / "hub", "bench", TOKEN, None, env)
        procs.append(hub)
        api = HfApi(endpoint=hub_url, token=TOKEN)
        for name, repo in zip(("base", "donor-1", "donor-2"), REPOS, strict=True):
            api.create_repo(repo)
            api.upload_folder(folder_path=models / name, repo_id=repo)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--port", str(port), "--workers", "0",
             "--no-ui", "--log-level", "warning"],
            env={**env, "HF_ENDPOINT": hub_url, "HF_TOKEN": TOKEN, "WEBHOOK_SECRET": SECRET,
                 "MERGEBOT_HOME": str(data / "home"), "MERGEBOT_DEVICE": "cpu",
                 "MERGEBOT_MAX_QUEUED_PER_OWNER": "100000"})
        procs.append(proc)
        server = Server(proc, f"http://127.0.0.1:{port}")
        wait_http(f"{server.url}/healthz", proc)
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        for _ in range(5):  # warm up: imports, thread pool, caches
            status, *_ = server.send("/api/validate", json.dumps({"recipe": GOOD}).encode(),
                                       auth)
            assert status == 200, status
        idle = server.rss()

        cases: list[tuple[str, str, bytes, dict]] = []
        recipes = recipe_cases()
        recipes["random texts"] = random_recipes(args.random)
        for kind, texts in recipes.items():
            for text in texts:
                body = json.dumps({"recipe": text, "repo_id": "bench/out"}).encode()
                cases.append((f"recipe: {kind}", "/api/validate", body, auth))
                cases.append((f"recipe: {kind}", "/api/recipes", body, auth))
        for body in body_cases():
            for route in ("/api/validate", "/api/recipes"):
                cases.append(("request body", route, body, auth))
        webhook = {"X-Webhook-Secret": SECRET, "Content-Type": "application/json"}
        for body in webhook_cases() + random_json(100):
            cases.append(("webhook body", "/webhooks/hub", body, webhook))

        rows: dict[str, dict] = defaultdict(lambda: {"n": 0, "crashes": 0, "max_s": 0.0,
                                                     "max_cpu": 0.0, "max_mb": 0.0,
                                                     "statuses": set()})
        worst = {"s": (0.0, ""), "cpu": (0.0, ""), "mb": (0.0, "")}
        for kind, route, body, headers in cases:
            status, seconds, cpu, grew = server.send(route, body, headers)
            row = rows[kind]
            row["n"] += 1
            row["statuses"].add(status)
            row["crashes"] += status == 0 or status >= 500 or proc.poll() is not None
            row["max_s"] = max(row["max_s"], seconds)
            row["max_cpu"] = max(row["max_cpu"], cpu)
            row["max_mb"] = max(row["max_mb"], grew / 2**20)
            label = f"{kind} {route} {body[:60]!r}"
            worst["s"] = max(worst["s"], (seconds, label))
            worst["cpu"] = max(worst["cpu"], (cpu, label))
            worst["mb"] = max(worst["mb"], (grew / 2**20, label))
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}) on {label}")

        print(f"server idle RSS after warm-up: {idle / 2**20:.0f} MB; "
              f"requests: {sum(r['n'] for r in rows.values())}")
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"| {'class':<30} | tried | crashes | statuses | longest | most CPU | "
              "most memory |")
        for kind, row in rows.items():
            statuses = ",".join(str(s) for s in sorted(row["statuses"]))
            print(f"| {kind:<30} | {row['n']:5} | {row['crashes']:7} | {statuses} | "
                  f"{row['max_s'] * 1000:.0f} ms | {row['max_cpu'] * 1000:.0f} ms | "
                  f"{row['max_mb']:.1f} MB |")
        print(f"longest: {worst['s'][0] * 1000:.0f} ms ({worst['s'][1]})")
        print(f"most CPU: {worst['cpu'][0] * 1000:.0f} ms ({worst['cpu'][1]})")
        print(f"most memory: {worst['mb'][0]:.1f} MB above the RSS before ({worst['mb'][1]})")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
