"""hf-jobs specifics: sizing and flavor choice from the plan, the Job's error line
deciding retry or failure, and what the job view and Check show."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub import JobHardwareInfo

from bot import queue
from bot.backends import Dispatch, HfJobsBackend, sizing
from bot.errors import BotError, TransientError
from bot.localhub.jobs import hardware_json
from bot.publish import PublishRequest
from merge_engine import InputError, SourceError, validate
from tests.bot.botutil import BOT, recipe_yaml

HARDWARE = [JobHardwareInfo(**row) for row in hardware_json()]


def test_needs_follow_the_streaming_bound(model_dirs):
    paths = list(model_dirs.values())
    recipe = recipe_yaml(base=str(paths[0]), donors=(str(paths[1]), str(paths[2])))
    plan = validate(recipe)
    need = sizing.needs(plan, out_shard_bytes=5_000_000_000)
    shard = max(p.stat().st_size for path in paths for p in path.glob("*.safetensors"))
    # one shard per model here: (3 models + 1) x 2 shards (tensor bytes: the file less its
    # JSON header)
    assert 8 * (shard - 16_384) <= need.disk_bytes <= 8 * shard
    largest = max(t.numel for s in plan.sources for t in s.tensors.values())
    assert need.gpu_bytes == 4 * 2 * largest * 4
    assert sizing.pick(HARDWARE, need, None).name == "t4-small"  # cheapest GPU flavor


def test_pick_cheapest_that_fits_override_and_none():
    need = sizing.Needs(disk_bytes=60 * 10**9, gpu_bytes=20 * 10**9, input_bytes=0,
                        output_bytes=0)
    # 22 GB of GPU and 66 GB of disk with the margin: L4 (24 GB, 400 GB, $0.80/h) beats
    # the A10G small ($1.00/h); the T4s have 16 GB.
    assert sizing.pick(HARDWARE, need, None).name == "l4x1"
    assert sizing.pick(HARDWARE, need, "a100-large").name == "a100-large"
    with pytest.raises(BotError, match="'b300' is not a Jobs flavor"):
        sizing.pick(HARDWARE, need, "b300")
    huge = sizing.Needs(disk_bytes=10**13, gpu_bytes=10**9, input_bytes=0, output_bytes=0)
    with pytest.raises(BotError, match="no Jobs flavor has .* GB of disk"):
        sizing.pick(HARDWARE, huge, None)
    t4 = next(hw for hw in HARDWARE if hw.name == "t4-small")
    assert sizing.cost_usd(t4, 61) == round(2 * t4.unit_cost_usd, 4)  # per started minute
    seventy_b = sizing.Needs(0, 0, input_bytes=3 * 140 * 10**9, output_bytes=140 * 10**9)
    assert seventy_b.seconds(100.0) == pytest.approx(180 + 5600)
    assert seventy_b.timeout(100.0) == int(2 * (180 + 5600) + 600)


@pytest.mark.parametrize(
    ("line", "code", "error", "text"),
    [
        ("mergebot-error: input: models[1].parameters.weight: missing", 2, InputError,
         "models[1].parameters.weight: missing"),
        ("mergebot-error: source: source alice/x was deleted", 2, SourceError,
         "source alice/x was deleted"),
        ("mergebot-error: transient: could not commit: HTTP 503", 1, TransientError,
         "could not commit: HTTP 503"),
        ("mergebot-error: fatal: the disk is full", 1, BotError, "the disk is full"),
        ("Killed", 137, TransientError, "exit code: 137"),
    ],
)
def test_the_error_line_decides(sources, make_settings, store, line, code, error, text):
    settings = make_settings(backend="hf-jobs", jobs_image="x", jobs_poll_seconds=0.1)
    httpx2.post(f"{sources.url}/_localhub/jobs/faults",
                json={"action": "exit", "exit_code": code, "log": [line]}).raise_for_status()
    with store.write() as db:
        recipe = store.add_recipe(db, owner="alice", yaml=recipe_yaml(), repo_id=f"{BOT}/e",
                                  private=False, watch=False, sources=[])
        job_id, _ = queue.enqueue(db, recipe, "alice", "test")
    work = settings.work_root / "e"
    work.mkdir(parents=True)
    request = PublishRequest(recipe_yaml(), f"{BOT}/e", settings.token, work,
                             endpoint=settings.endpoint, job_key=f"job-{job_id}")
    with pytest.raises(error) as raised:
        HfJobsBackend(settings, store).run(Dispatch(job_id, 1, request), lambda s, f: None)
    assert text in str(raised.value)
    if error is TransientError:
        assert not isinstance(raised.value, InputError)
