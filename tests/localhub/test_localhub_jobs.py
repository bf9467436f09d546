"""localhub's Jobs API, driven by the real HfApi: run, inspect, list by label, logs,
cancel, timeout, hardware and injected faults."""

from __future__ import annotations

import time

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from tests.hubtools import Hub

SCRIPT = (
    "import os, sys; print('token', os.environ.get('HF_TOKEN') == 'sekrit'); "
    "print('mode', os.environ['MODE']); print('hub', os.environ['HF_ENDPOINT']); sys.exit(3)"
)


def wait_stage(api, job_id: str, stages: tuple[str, ...], timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        info = api.inspect_job(job_id=job_id, namespace="alice")
        if info.status.stage in stages:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def test_run_inspect_logs_list_by_label(hub: Hub):
    api = hub.api("alice")
    job = api.run_job(image="mergebot:test", command=["python", "-c", SCRIPT],
                      env={"MODE": "plain"}, secrets={"HF_TOKEN": "sekrit"},
                      labels={"app": "t", "n": "1"}, flavor="t4-small", namespace="alice")
    info = wait_stage(api, job.id, ("COMPLETED", "ERROR"))
    assert info.status.stage == "ERROR" and "exit code: 3" in info.status.message
    assert info.secrets == {"HF_TOKEN": None}  # secret values are never shown back
    assert info.environment == {"MODE": "plain"} and info.flavor == "t4-small"
    logs = list(api.fetch_job_logs(job_id=job.id, namespace="alice"))
    assert logs == ["token True", "mode plain", f"hub {hub.url}"]
    assert list(api.fetch_job_logs(job_id=job.id, namespace="alice", tail=1)) == [logs[-1]]
    other = api.run_job(image="x", command=["python", "-c", "pass"], labels={"app": "u"},
                        namespace="alice")
    assert wait_stage(api, other.id, ("COMPLETED",)).status.message is None
    found = list(api.list_jobs(labels={"app": "t"}, namespace="alice"))
    assert [j.id for j in found] == [job.id]
    assert list(api.list_jobs(labels={"app": "t", "n": "2"}, namespace="alice")) == []
    assert {j.id for j in api.list_jobs(namespace="alice", status="COMPLETED")} == {other.id}
    # Another user's namespace is not yours.
    with pytest.raises(HfHubHTTPError) as err:
        hub.api("bob").inspect_job(job_id=job.id, namespace="alice")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        hub.api("bob").inspect_job(job_id=job.id, namespace="bob")
    assert err.value.response.status_code == 404


def test_cancel_and_timeout_kill_the_process(hub: Hub, tmp_path):
    api = hub.api("alice")
    marker = tmp_path / "alive"
    touch = f"pathlib.Path({str(marker)!r}).touch()"
    loop = f"import time, pathlib\nwhile True: {touch}; time.sleep(0.05)"
    job = api.run_job(image="x", command=["python", "-c", loop], namespace="alice")
    wait_stage(api, job.id, ("RUNNING",))
    api.cancel_job(job_id=job.id, namespace="alice")
    assert wait_stage(api, job.id, ("CANCELED",)).status.stage == "CANCELED"
    marker.unlink(missing_ok=True)
    time.sleep(0.3)
    assert not marker.exists()  # killed, not just reported
    timed = api.run_job(image="x", command=["python", "-c", "import time; time.sleep(60)"],
                        timeout=1, namespace="alice")
    info = wait_stage(api, timed.id, ("ERROR",), timeout=15)
    assert info.status.message == "Job timed out after 1 seconds"


def test_hardware_and_faults(hub: Hub):
    api = hub.api("alice")
    hardware = {hw.name: hw for hw in api.list_jobs_hardware()}
    assert hardware["a100-large"].accelerator.vram == "80 GB"
    assert hardware["t4-small"].unit_label == "minute" and hardware["t4-small"].unit_cost_usd > 0
    faults = f"{hub.url}/_localhub/jobs/faults"
    httpx2.post(faults, json={"action": "exit", "exit_code": 2,
                              "log": ["mergebot-error: input: bad"]}).raise_for_status()
    httpx2.post(faults, json={"action": "hang", "timeout": 0.5}).raise_for_status()
    assert httpx2.post(faults, json={"action": "explode"}).status_code == 400
    first = api.run_job(image="x", command=["python", "-c", "pass"], namespace="alice")
    second = api.run_job(image="x", command=["python", "-c", "pass"], namespace="alice")
    third = api.run_job(image="x", command=["python", "-c", "pass"], namespace="alice")
    info = wait_stage(api, first.id, ("ERROR",))
    assert "exit code: 2" in info.status.message
    assert list(api.fetch_job_logs(job_id=first.id, namespace="alice")) == [
        "mergebot-error: input: bad"]
    info = wait_stage(api, second.id, ("ERROR",))
    assert "timed out" in info.status.message
    assert wait_stage(api, third.id, ("COMPLETED",)).status.stage == "COMPLETED"


def test_delay_fault_holds_a_request_then_serves_it(hub: Hub):
    hub.api("alice").create_repo("alice/slow")
    httpx2.post(f"{hub.url}/_localhub/faults",
                json={"path_regex": "/api/models/alice/slow$", "delay": 0.5}).raise_for_status()
    start = time.monotonic()
    assert hub.api("alice").model_info("alice/slow").id == "alice/slow"
    assert time.monotonic() - start >= 0.5
    assert hub.stats()["faults_triggered"] == 1
