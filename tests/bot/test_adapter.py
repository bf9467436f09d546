"""Publishing a merge as a LoRA adapter: instead of the full weights (``publish: adapter``)
or as well as them (``both``: the adapter in ``<repo>-lora``), against localhub.

The merge is base + 0.5 x a rank-2 change on every weight matrix, so its adapter at rank 2
is exact (relative error ~1e-7), and PEFT's ``merge_and_unload`` must give the merge back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from starlette.testclient import TestClient

from bot import queue
from bot.cli import main
from bot.server import create_app
from bot.store import Store
from bot.worker import Worker
from merge_engine.synth import write_model
from tests.bot.botutil import BOT, SHAPE
from tests.hubtools import USERS

BASE, TUNED = "alice/lr-base", "alice/lr-tuned"
RANK = 2
RECIPE = f"""\
merge_method: task_arithmetic
base_model: {BASE}
models:
  - model: {TUNED}
    parameters:
      weight: 0.5
dtype: float32
"""
ALICE = {"Authorization": f"Bearer {USERS['alice']}"}
ADAPTER_FILES = {".gitattributes", "README.md", "adapter_config.json",
                 "adapter_model.safetensors"}


def _change(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(shape[0], RANK, generator=gen)
    v = torch.randn(RANK, shape[1], generator=gen)
    return (u @ v) * 0.01


@pytest.fixture
def lowrank(bothub, tmp_path: Path) -> dict[str, Path]:
    """alice/lr-base (float32, 2 shards) and alice/lr-tuned = base + a rank-2 change on
    every weight matrix, on the hub; their local folders."""
    base = write_model(tmp_path / "lr-base", SHAPE, dtype=torch.float32, shard_bytes=60_000)
    tuned = tmp_path / "lr-tuned"
    tuned.mkdir()
    for path in base.iterdir():
        if path.suffix == ".safetensors":
            tensors = {name: t + _change(tuple(t.shape), i) if t.dim() == 2 else t
                       for i, (name, t) in enumerate(sorted(load_file(path).items()))}
            save_file(tensors, tuned / path.name, metadata={"format": "pt"})
        else:
            (tuned / path.name).write_bytes(path.read_bytes())
    api = bothub.api("alice")
    for repo, folder in ((BASE, base), (TUNED, tuned)):
        (folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {repo}\n")
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=folder, commit_message="weights")
    return {"base": base, "tuned": tuned}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in folder.glob("*.safetensors"):
        out |= load_file(path)
    return out


def _merged(local: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The merge, computed here: base + 0.5 (tuned - base)."""
    base, tuned = _weights(local["base"]), _weights(local["tuned"])
    return {k: base[k] + 0.5 * (tuned[k] - base[k]) for k in base}


def _add(store: Store, publish: str, repo_id: str = f"{BOT}/lr-merged", text: str = RECIPE,
         max_rank: int | None = RANK) -> tuple[int, int]:
    with store.write() as db:
        recipe_id = store.add_recipe(db, owner="alice", yaml=text, repo_id=repo_id,
                                     private=False, watch=True, sources=[BASE, TUNED],
                                     publish=publish, max_rank=max_rank)
        job_id, _ = queue.enqueue(db, recipe_id, "alice", "submitted by @alice", force=True)
    return recipe_id, job_id


def _card_table(card: str) -> dict[str, tuple[int, float]]:
    """module -> (rank, relative error) from the card's table."""
    rows = re.findall(r"^\| `([^`]+)` \| \[[0-9, ]+\] \| (\d+) \| ([0-9.e+-]+) \|$", card, re.M)
    return {module: (int(rank), float(error)) for module, rank, error in rows}


def _check_peft(hub, repo_id: str, revision: str, local: dict[str, Path],
                tmp_path: Path) -> None:
    """PEFT loads the adapter on the base; merge_and_unload gives the merge within the
    error each module's card row reports."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    folder = Path(hub.api(BOT).snapshot_download(repo_id, revision=revision,
                                                 local_dir=tmp_path / "adapter-dl"))
    table = _card_table((folder / "README.md").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(local["base"],
                                                              dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, folder).merge_and_unload().state_dict()
    expected = _merged(local)
    for name, want in expected.items():
        base = _weights(local["base"])[name]
        module = name.removesuffix(".weight")
        if module in table:
            got_change, want_change = merged[name] - base, want - base
            error = float((got_change - want_change).norm() / want_change.norm())
            assert error <= table[module][1] + 1e-5, name
        assert torch.allclose(merged[name], want, atol=1e-5), name


def test_adapter_only_publishes_a_peft_adapter_and_no_weights(lowrank, settings, store,
                                                               bothub, tmp_path):
    recipe_id, job_id = _add(store, "adapter")
    Worker(settings, store).run_once()
    job = store.get_job(job_id)
    log = store.log_tail(job_id)
    assert job.status == "succeeded", log
    repo = f"{BOT}/lr-merged"
    api = bothub.api(BOT)
    assert set(api.list_repo_files(repo)) == ADAPTER_FILES  # no full weights
    assert job.commit_sha == api.model_info(repo).sha
    assert not api.repo_exists(repo + "-lora")
    line = next(x for x in log if x.startswith("adapter: "))
    full = sum(t.numel() * t.element_size() for t in _weights(lowrank["base"]).values())
    upload = re.search(r"upload ([0-9.]+) kB against ([0-9.]+) kB of full weights", line)
    assert float(upload.group(2)) == pytest.approx(full / 1e3, abs=0.05)
    assert 0 < float(upload.group(1)) < float(upload.group(2)) / 2
    assert f"committed {job.commit_sha} to {repo} (the adapter only)" in log
    card = Path(api.hf_hub_download(repo, "README.md")).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert (meta["library_name"], meta["base_model"], meta["base_model_relation"],
            meta["license"]) == ("peft", BASE, "adapter", "apache-2.0")
    base_sha = bothub.api("alice").model_info(BASE).sha
    assert f"- base: `{BASE}` at `{base_sha}`" in card
    assert "largest rank kept: 2" in card and "merge_method: task_arithmetic" in card
    table = _card_table(card)
    assert len(table) == 16 and {rank for rank, _ in table.values()} == {RANK}
    assert max(error for _, error in table.values()) < 1e-5
    config = json.loads(Path(api.hf_hub_download(repo, "adapter_config.json")).read_text())
    assert config["base_model_name_or_path"] == BASE and config["revision"] == base_sha
    _check_peft(bothub, repo, job.commit_sha, lowrank, tmp_path)


def test_both_publishes_weights_and_the_adapter_beside_them_and_remerges_both(
        lowrank, settings, store, bothub, tmp_path):
    recipe_id, job_id = _add(store, "both")
    worker = Worker(settings, store)
    worker.run_once()
    job = store.get_job(job_id)
    assert job.status == "succeeded", store.log_tail(job_id)
    api, repo, sibling = bothub.api(BOT), f"{BOT}/lr-merged", f"{BOT}/lr-merged-lora"
    files = set(api.list_repo_files(repo))
    assert "config.json" in files and any(f.startswith("model") and f.endswith(".safetensors")
                                          for f in files)
    assert "adapter_config.json" not in files  # transformers would load it as an adapter
    assert set(api.list_repo_files(sibling)) == ADAPTER_FILES
    with store.read() as db:  # its pushes are the bot's own: no webhook loop
        assert store.is_output_repo(db, sibling)
    log = store.log_tail(job_id)
    adapter_sha = api.model_info(sibling).sha
    assert f"committed the adapter {adapter_sha} to {sibling}" in log
    # a source moves: the remerge republishes both, one commit each
    bothub.api("alice").upload_file(
        path_or_fileobj=b"# tuned\n", path_in_repo="NOTES.md", repo_id=TUNED)
    with store.write() as db:
        second, _ = queue.enqueue(db, recipe_id, "alice", "alice/lr-tuned changed")
    worker.run_once()
    assert store.get_job(second).status == "succeeded", store.log_tail(second)
    for name in (repo, sibling):
        titles = [c.title for c in api.list_repo_commits(name)]
        assert titles[:2] == ["alice/lr-tuned changed", "Submitted by @alice"], name
    _check_peft(bothub, sibling, api.model_info(sibling).sha, lowrank, tmp_path)


def test_a_failed_extraction_leaves_the_repos_untouched(lowrank, settings, store, bothub):
    repo = f"{BOT}/lr-merged"
    api = bothub.api(BOT)
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"keep\n", path_in_repo="KEEP.md", repo_id=repo)
    head = api.model_info(repo).sha
    _, job_id = _add(store, "both", text=RECIPE.replace("0.5", "0.0"))  # merge == base
    Worker(settings, store).run_once()
    job = store.get_job(job_id)
    assert job.status == "failed" and "have no differing weight matrix" in job.error
    assert api.model_info(repo).sha == head
    assert set(api.list_repo_files(repo)) == {".gitattributes", "KEEP.md"}
    assert not api.repo_exists(repo + "-lora")


# bad options: one sentence, 4xx from the API, exit 2 from the CLI ---------------------

@pytest.fixture
def client(lowrank, make_settings):
    with TestClient(create_app(make_settings(), workers=0)) as test_client:
        yield test_client


LINEAR = f"merge_method: linear\nmodels:\n  - model: {BASE}\n    parameters: {{weight: 1.0}}\n" \
         f"  - model: {TUNED}\n    parameters: {{weight: 1.0}}\n"


@pytest.mark.parametrize("body, loc, msg", [
    ({"publish": "adapter", "max_rank": 0}, "max_rank",
     "max_rank must be a whole number >= 1, got 0"),
    ({"publish": "adapter"}, "max_rank",
     "publishing an adapter ('publish': 'adapter') needs 'max_rank', its largest rank per "
     "module"),
    ({"publish": "both", "max_rank": 4, "sv_cutoff": 1.5}, "sv_cutoff",
     "sv_cutoff must be in [0, 1), got 1.5"),
    ({"publish": "lora", "max_rank": 4}, "publish",
     "'publish' must be one of 'full', 'adapter' or 'both', got 'lora'"),
    ({"max_rank": 4}, "max_rank",
     "'max_rank' is for an adapter; add \"publish\": \"adapter\" or \"both\""),
    ({"publish": "adapter", "max_rank": 4, "recipe": LINEAR}, "merge_method",
     "merge_method linear has no base_model to extract a LoRA adapter against; publish the "
     "full weights instead"),
    ({"publish": "adapter", "max_rank": 4,
      "recipe": RECIPE.replace(f"base_model: {BASE}", f"base_model: {BASE}+{TUNED}")},
     "base_model", f"base_model {BASE}+{TUNED} carries a LoRA adapter; an adapter can only be "
     "extracted against a plain model"),
])
def test_bad_adapter_options_are_422_with_one_sentence(client, body, loc, msg):
    body = {"recipe": RECIPE, "repo_id": f"{BOT}/lr-merged", **body}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert (error["loc"], error["msg"]) == (loc, msg)


def test_the_api_stores_the_publication(client):
    body = {"recipe": RECIPE, "repo_id": f"{BOT}/lr-merged", "publish": "full+adapter",
            "max_rank": 8, "sv_cutoff": 0.01}
    answer = client.post("/api/recipes", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    recipe = client.get(f"/api/recipes/{answer.json()['recipe_id']}").json()
    assert (recipe["publish"], recipe["max_rank"], recipe["sv_cutoff"]) == ("both", 8, 0.01)
    body = {"recipe": RECIPE, "repo_id": f"{BOT}/lr-merged"}
    again = client.post("/api/recipes", json=body, headers=ALICE).json()
    assert again["recipe_id"] == answer.json()["recipe_id"]
    recipe = client.get(f"/api/recipes/{again['recipe_id']}").json()
    assert (recipe["publish"], recipe["max_rank"], recipe["sv_cutoff"]) == ("full", None, 0.0)


@pytest.mark.parametrize("args, message", [
    (["--publish", "adapter", "--max-rank", "0"],
     "error: max_rank must be a whole number >= 1, got 0"),
    (["--publish", "both"],
     "error: --publish both needs --max-rank N, the adapter's largest rank per module"),
    (["--max-rank", "4"],
     "error: --max-rank and --sv-cutoff are for an adapter; add --publish adapter or "
     "--publish both"),
])
def test_mergebot_merge_bad_adapter_options_exit_2(args, message, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.setenv("HF_TOKEN", USERS["alice"])
    (tmp_path / "r.yml").write_text(RECIPE)
    assert main(["merge", str(tmp_path / "r.yml"), "--repo", "alice/x", *args]) == 2
    assert capsys.readouterr().err.strip() == message


def test_mergebot_merge_of_a_method_without_base_exit_2_and_no_repo(lowrank, bothub, tmp_path,
                                                                      capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", USERS["alice"])
    monkeypatch.setenv("HF_ENDPOINT", bothub.url)
    (tmp_path / "r.yml").write_text(LINEAR)
    code = main(["merge", str(tmp_path / "r.yml"), "--repo", "alice/x", "--publish", "adapter",
                 "--max-rank", "4", "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: merge_method linear has no base_model to extract a LoRA adapter against; "
        "publish the full weights instead")
    assert not bothub.api("alice").repo_exists("alice/x")
