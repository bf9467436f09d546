"""Multi-stage recipes through the bot, on localhub: submitted through the API, run in one
job, the card pins every stage, and a source's webhook remerges only the stages
downstream of it (the others come from the stage cache; without it, they run again)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd
from safetensors.torch import load_file, save_file
from starlette.testclient import TestClient

from bot.server import create_app
from bot.worker import Worker
from merge_engine import run_merge
from tests.bot.botutil import BOT, SECRET
from tests.hubtools import USERS

ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
TARGET = f"{BOT}/chained"


def two_stages(second_donor: str | None = None) -> str:
    """``mid`` merges the donors; ``final`` adds mid's change (and ``second_donor``'s) to
    alice/base, which only the second stage reads."""
    extra = (f"  - model: {second_donor}\n    parameters:\n      weight: 0.5\n"
             if second_donor else "")
    return (
        "name: mid\nmerge_method: linear\nmodels:\n"
        "  - model: alice/donor-1\n    parameters:\n      weight: 0.5\n"
        "  - model: alice/donor-2\n    parameters:\n      weight: 0.5\n"
        "---\n"
        "name: final\nmerge_method: task_arithmetic\nbase_model: alice/base\nmodels:\n"
        "  - model: mid\n    parameters:\n      weight: 1.0\n" + extra
    )


@pytest.fixture
def client(sources, make_settings):
    with TestClient(create_app(make_settings(), workers=0)) as client:
        yield client


def push(hub, repo: str, client: TestClient, content: bytes) -> str:
    """A commit on ``repo``'s main, delivered to the bot as the Hub's webhook."""
    old = hub.api("alice").model_info(repo).sha
    new = hub.api("alice").create_commit(repo, [CommitOperationAdd("notes.txt", content)],
                                         commit_message="notes").oid
    body = {"event": {"action": "update", "scope": "repo.content"},
            "repo": {"type": "model", "name": repo, "private": False, "headSha": new},
            "updatedRefs": [{"ref": "refs/heads/main", "oldSha": old, "newSha": new}]}
    answer = client.post("/webhooks/hub", json=body, headers={"X-Webhook-Secret": SECRET})
    assert answer.json()["action"] == "enqueued", answer.text
    return new


def run_job(client: TestClient) -> tuple[object, list[str]]:
    """Run the next job; (the job, its stage lines)."""
    store = client.app.state.store
    job = Worker(client.app.state.settings, store).run_once()
    done = store.get_job(job.id)
    log = store.log_tail(job.id, 200)
    assert done.status == "succeeded", log
    return done, [line for line in log if line.startswith("stage '")]


def card(hub, repo_id: str) -> dict:
    path = hub.api(BOT).hf_hub_download(repo_id, "README.md")
    return yaml.safe_load(Path(path).read_text().split("---\n")[1])


def test_a_push_remerges_only_the_stages_downstream(sources, client):
    checked = client.post("/api/validate", json={"recipe": two_stages()}, headers=ALICE)
    assert checked.status_code == 200, checked.text
    assert [s["name"] for s in checked.json()["stages"]] == ["mid", "final"]
    answer = client.post("/api/recipes", json={"recipe": two_stages(), "repo_id": TARGET,
                                               "watch": True}, headers=ALICE)
    assert answer.status_code == 201, answer.text
    recipe = client.get("/api/recipes/1").json()
    assert recipe["sources"] == ["alice/donor-1", "alice/donor-2", "alice/base"]

    job, stages = run_job(client)
    assert stages == ["stage 'mid' (1 of 2): merged", "stage 'final' (2 of 2): merged"]
    heads = {r: sources.api("alice").model_info(r).sha for r in recipe["sources"]}
    assert job.source_shas == heads
    meta = card(sources, TARGET)["merge"]
    assert meta["stage"] == "final"
    assert [m["revision"] for m in meta["stages"][0]["models"]] == [
        heads["alice/donor-1"], heads["alice/donor-2"]]
    assert meta["base_model"] == {"model": "alice/base", "revision": heads["alice/base"]}

    # a source of the first stage moved: both stages are merged again
    donor = push(sources, "alice/donor-1", client, b"v2")
    job, stages = run_job(client)
    assert stages == ["stage 'mid' (1 of 2): merged", "stage 'final' (2 of 2): merged"]
    assert card(sources, TARGET)["merge"]["stages"][0]["models"][0]["revision"] == donor

    # a source only the second stage reads moved: the first stage comes from the cache
    base = push(sources, "alice/base", client, b"v2")
    job, stages = run_job(client)
    assert stages == ["stage 'mid' (1 of 2): reused (its sources did not move)",
                      "stage 'final' (2 of 2): merged"]
    assert job.source_shas == {**heads, "alice/donor-1": donor, "alice/base": base}
    meta = card(sources, TARGET)["merge"]
    assert meta["base_model"]["revision"] == base
    assert meta["stages"][0]["output"] == "intermediate, reused from an earlier run"
    assert meta["stages"][0]["models"][0]["revision"] == donor  # still pinned

    # the cache is gone: the first stage runs again rather than failing
    shutil.rmtree(client.app.state.settings.stage_cache_dir)
    push(sources, "alice/base", client, b"v3")
    _, stages = run_job(client)
    assert stages == ["stage 'mid' (1 of 2): merged", "stage 'final' (2 of 2): merged"]
    commits = sources.api(BOT).list_repo_commits(TARGET)
    assert sum("mergebot-job: " in (c.message or "") for c in commits) == 4


def test_a_failing_second_stage_publishes_nothing(sources, client, model_dirs, tmp_path):
    """The second stage's merge fails (a donor with an infinite weight) after the first
    stage was merged: the job fails naming the stage, and there is no repo, no work dir,
    no intermediate left behind."""
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["alice/donor-2"], broken)
    weights = load_file(broken / "model.safetensors")
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("inf")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    api = sources.api("alice")
    api.create_repo("alice/broken")
    api.upload_folder(repo_id="alice/broken", folder_path=broken, commit_message="weights")

    answer = client.post("/api/recipes", json={"recipe": two_stages("alice/broken"),
                                               "repo_id": TARGET}, headers=ALICE)
    assert answer.status_code == 201, answer.text
    store, settings = client.app.state.store, client.app.state.settings
    job = Worker(settings, store).run_once()
    failed = store.get_job(job.id)
    assert failed.status == "failed", store.log_tail(job.id)
    assert failed.error.startswith("stage 'final' (document 2): ")
    assert "infinite" in failed.error
    assert not sources.api(BOT).repo_exists(TARGET)
    assert not any(settings.work_root.iterdir())


def test_intermediates_published_on_branches(sources, client, model_dirs, tmp_path):
    """With publish_intermediates, mid goes to the branch stage-mid (byte-identical to
    merging that stage by hand), once per stage key: a remerge that reuses mid leaves the
    branch as it is."""
    body = {"recipe": two_stages(), "repo_id": TARGET, "watch": True,
            "publish_intermediates": True}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    _, stages = run_job(client)
    assert stages[:2] == ["stage 'mid' (1 of 2): merged", "stage 'final' (2 of 2): merged"]
    assert stages[2].startswith("stage 'mid': committed ")
    assert stages[2].endswith(f" to branch stage-mid of {TARGET}")
    api = sources.api(BOT)
    branch = Path(api.snapshot_download(TARGET, revision="stage-mid", cache_dir=tmp_path / "c"))
    hand = tmp_path / "hand"
    recipe = two_stages().split("---\n")[0]
    for repo, path in model_dirs.items():
        recipe = recipe.replace(f"model: {repo}\n", f"model: {path}\n")
    run_merge(recipe, hand, device="cpu")
    mine, want = load_file(branch / "model.safetensors"), load_file(hand / "model.safetensors")
    assert mine.keys() == want.keys()
    assert all(torch.equal(mine[k].view(torch.uint8), want[k].view(torch.uint8)) for k in want)
    mid_card = yaml.safe_load((branch / "README.md").read_text().split("---\n")[1])
    assert mid_card["merge"]["stage"] == "mid"
    assert card(sources, TARGET)["merge"]["stages"][0]["output"] == \
        "published on branch `stage-mid`"
    before = [c.commit_id for c in api.list_repo_commits(TARGET, revision="stage-mid")]

    push(sources, "alice/base", client, b"v2")
    _, stages = run_job(client)
    assert stages == ["stage 'mid' (1 of 2): reused (its sources did not move)",
                      "stage 'final' (2 of 2): merged",
                      f"stage 'mid': branch stage-mid of {TARGET} already holds it"]
    assert [c.commit_id for c in api.list_repo_commits(TARGET, revision="stage-mid")] == before


def test_publish_intermediates_needs_several_stages(client):
    body = {"recipe": two_stages().split("---\n")[1].replace("model: mid", "model: alice/x"),
            "repo_id": TARGET, "publish_intermediates": True}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == "publish_intermediates"


@pytest.mark.parametrize(("recipe", "loc", "line", "msg"), [
    (two_stages().replace("alice/donor-1", "final"), "stage 'mid' (document 1), models[0].model",
     4, "'final' is stage 'final' (document 2), which runs later"),
    (two_stages().replace("base_model: alice/base", "base_model: ./base"),
     "stage 'final' (document 2), base_model", 13, "'./base' is a local path"),
    (two_stages().replace("name: final\n", ""), "document 2", 11, "needs a 'name:'"),
])
def test_api_errors_name_the_stage(client, recipe, loc, line, msg):
    answer = client.post("/api/validate", json={"recipe": recipe}, headers=ALICE)
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert (error["loc"], error["line"]) == (loc, line) and msg in error["msg"]
