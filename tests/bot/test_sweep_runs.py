"""Sweeps run end to end through the bot on localhub: a tiny llama family actually trained
on two languages (donor 1 on ``north``, donor 2 on ``south``), submitted through the API,
run by a worker, published with the evaluation table on the card."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot import sweeps
from bot.store import Store
from bot.store_pg import PostgresStore
from bot.worker import Worker
from merge_engine import HubAccess, evaluate_model, parse_eval_sets, run_merge
from merge_engine.trained import sentences
from tests.bot.botutil import BOT, wait_for
from tests.bot.test_api import ALICE, make_client  # noqa: F401
from tests.bot.test_service import bot_factory  # noqa: F401

REPOS = ("alice/t-base", "alice/t-north", "alice/t-south")
WEIGHT = "models[1].parameters.weight"
EVALUATION = [{"name": "north", "texts": sentences("north", 12, seed=7)},
              {"name": "south", "texts": sentences("south", 12, seed=7)}]


def recipe() -> str:
    base, north, south = REPOS
    return (f"merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\nmodels:\n"
            f"  - model: {north}\n    parameters:\n      weight: 0.5\n"
            f"  - model: {south}\n    parameters:\n      weight: 0.3\n")


@pytest.fixture
def trained_hub(sources, trained_family):
    api = sources.api("alice")
    for repo, path in zip(REPOS, trained_family, strict=True):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=path, commit_message="trained")
    return sources


def run_sweep(client: TestClient, settings, **fields) -> dict:
    """Submit a sweep, run the worker until it ends; the sweep as the API shows it."""
    body = {"recipe": recipe(), "repo_id": f"{BOT}/swept", "sweep": {WEIGHT: [0.0, 0.5, 1.0]},
            "evaluation": EVALUATION, "metric": "south", **fields}
    answer = client.post("/api/sweeps", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["sweep_id"]
    worker = Worker(settings, Store(settings.db_path))
    for _ in range(20):
        if worker.run_once() is None:
            break
    found = client.get(f"/api/sweeps/{sweep_id}").json()
    assert found["status"] in ("succeeded", "failed"), found
    return found


def card_rows(readme: str) -> dict[str, list[str]]:
    """The Evaluation table's cells by row label (markup removed)."""
    section = readme.split("## Evaluation", 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| model") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            label = re.sub(r"\*\*|\s*\(published\)|\[|\]\(.*?\)", "", cells[0])
            rows[label] = cells[1:]
    return rows


def test_a_sweep_has_the_real_shape_and_its_card_matches_each_variant(
        trained_hub, make_client, settings, tmp_path):  # noqa: F811
    client = make_client()
    sweep = run_sweep(client, settings)
    assert sweep["status"] == "succeeded", sweep
    variants = sweep["variants"]
    assert [v["status"] for v in variants] == ["succeeded"] * 3
    south = [v["scores"]["south"]["perplexity"] for v in variants]
    north = [v["scores"]["north"]["perplexity"] for v in variants]
    assert south[0] > south[1] > south[2], south  # donor 2's language: better as α grows
    assert north[0] < north[1] < north[2], north  # donor 1's: worse
    assert sweep["best"] == "weight=1.0" and sweep["commit"]

    api = trained_hub.api(BOT)
    assert api.model_info(f"{BOT}/swept").sha == sweep["commit"]
    readme = Path(api.hf_hub_download(f"{BOT}/swept", "README.md")).read_text()
    assert "![perplexity against" in readme
    assert "evaluation.png" in api.list_repo_files(f"{BOT}/swept")
    assert "The published model is the best by perplexity on south." in readme
    rows = card_rows(readme)
    assert set(REPOS) <= set(rows)  # the sources, scored once, are in the table
    sets = parse_eval_sets(EVALUATION)
    access = HubAccess(endpoint=trained_hub.url, token=ALICE["Authorization"][7:],
                       cache_dir=tmp_path / "cache")
    for variant in variants:  # merge each variant by hand and evaluate it directly
        out = run_merge(variant["recipe"], tmp_path / variant["label"], device="cpu",
                        access=access).out_dir
        direct = evaluate_model(out, sets, device="cpu")
        cells = rows[variant["label"]]
        assert cells[:2] == ["variant", repr(variant["values"][WEIGHT])]
        assert [float(c) for c in cells[2:]] == pytest.approx(  # the card rounds to 4 and 3
            [x for s in direct for x in (s.nll, s.perplexity)], abs=6e-4)
    recipe_after = client.get(f"/api/recipes/{sweep['recipe_id']}").json()
    assert "weight: 1.0" in recipe_after["recipe"]  # a remerge merges what was published


def test_branches_and_a_failed_variant(trained_hub, make_client, settings):  # noqa: F811
    client = make_client()
    sweep = run_sweep(client, settings, publish="branches", sweep={WEIGHT: [0.5, 1000.0]})
    assert sweep["status"] == "succeeded", sweep
    ok, bad = sweep["variants"]
    assert ok["status"] == "succeeded" and bad["status"] == "failed"
    assert "perplexity" in bad["error"], bad  # refused by the checks, after its branch was made
    assert sweep["best"] == ok["label"]
    table = {r["label"]: r for r in sweep["table"]["rows"]}
    assert table[bad["label"]]["note"].startswith("failed") and not table[bad["label"]]["scores"]

    api = trained_hub.api(BOT)
    refs = api.list_repo_refs(f"{BOT}/swept")
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches[ok["branch"]] == ok["commit"]
    bad_branch = sweeps.branch_name(sweeps.SweepVariant(1, bad["label"], {}, "", None))
    assert bad["branch"] is None and bad_branch == "sweep-weight-1000.0"
    assert bad_branch not in branches  # the failed variant's empty branch went again
    assert branches["main"] == sweep["commit"]
    def branch_file(name: str) -> str:
        path = api.hf_hub_download(f"{BOT}/swept", name, revision=ok["branch"])
        return Path(path).read_text()

    assert branch_file("mergekit_config.yml") == ok["recipe"]  # the variant itself
    assert card_rows(branch_file("README.md"))["this merge"][0] == "merge"  # its own scores
    main_card = Path(api.hf_hub_download(f"{BOT}/swept", "README.md")).read_text()
    rows = card_rows(main_card)
    assert rows[bad["label"]][2].startswith("failed")
    assert ok["branch"] == "sweep-weight-0.5"


def test_a_sweep_fails_only_when_every_variant_fails(trained_hub, make_client, settings):  # noqa: F811
    client = make_client()
    sweep = run_sweep(client, settings, sweep={WEIGHT: [1000.0]})
    assert sweep["status"] == "failed" and "no variant" in sweep["error"]
    assert not trained_hub.api(BOT).repo_exists(f"{BOT}/swept")


def test_the_cli_submits_waits_for_and_shows_a_sweep(trained_hub, bot_factory,  # noqa: F811
                                                     tmp_path):
    bot = bot_factory(trained_hub).start(workers=1)
    (tmp_path / "recipe.yml").write_text(recipe())
    for item in EVALUATION:
        (tmp_path / f"{item['name']}.txt").write_text("\n".join(item["texts"]) + "\n")
    env = {**bot.env, "HF_TOKEN": ALICE["Authorization"][7:], "MERGEBOT_URL": bot.url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    out = cli("submit", "recipe.yml", "--repo", f"{BOT}/cli-swept", "--sweep",
              f"{WEIGHT}=0.0,1.0", "--eval-texts", "north.txt", "--eval-texts",
              "south=south.txt", "--metric", "south", "--wait")
    assert out.returncode == 0, (out.stderr, bot.logs())
    sweep_id = int(out.stdout.strip())
    assert "2 variants" in out.stderr and "succeeded: weight=1.0" in out.stderr
    shown = cli("sweep", str(sweep_id))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"sweep {sweep_id} ({BOT}/cli-swept): succeeded")
    assert any(line.startswith("  * weight=1.0") and "succeeded" in line for line in lines)
    assert any(line.strip().startswith("weight=0.0") for line in lines)
    assert any("alice/t-south" in line and "source" in line for line in lines)

    bad = cli("submit", "recipe.yml", "--sweep", "models[4].parameters.weight=1",
              "--eval-texts", "north.txt")
    assert bad.returncode == 2 and "sweep.models[4].parameters.weight" in bad.stderr
    alone = cli("submit", "recipe.yml", "--eval-texts", "north.txt", "--metric", "north")
    assert alone.returncode == 2 and "go with --sweep" in alone.stderr
    single = cli("submit", "recipe.yml", "--repo", f"{BOT}/cli-scored", "--eval-texts",
                 "north.txt", "--wait")  # no --sweep: one merge, scored
    assert single.returncode == 0, (single.stderr, bot.logs())
    readme = trained_hub.api(BOT).hf_hub_download(f"{BOT}/cli-scored", "README.md")
    rows = card_rows(Path(readme).read_text())
    assert set(rows) == {"this merge", *REPOS} and rows["this merge"][0] == "merge"
    assert cli("sweep", "999").returncode == 1


def test_a_fleet_on_postgres_runs_the_variants_side_by_side(trained_hub, make_client,  # noqa: F811
                                                          make_settings, pg_url):
    """Two workers sharing a Postgres database: the variants of a best sweep spread over
    both, and the sweep is published once."""
    settings = make_settings(database_url=pg_url)
    client = make_client(database_url=pg_url)
    body = {"recipe": recipe(), "repo_id": f"{BOT}/fleet-swept",
            "sweep": {WEIGHT: [0.0, 0.5, 1.0]}, "evaluation": EVALUATION, "metric": "south"}
    answer = client.post("/api/sweeps", json=body, headers=ALICE)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["sweep_id"]
    store = PostgresStore(pg_url)
    stop = threading.Event()
    workers = [Worker(settings, store, name=f"w{i}") for i in range(2)]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        sweep = wait_for(lambda: (s := client.get(f"/api/sweeps/{sweep_id}").json())["status"]
                         in ("succeeded", "failed") and s, timeout=240, every=0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        store.close()
    assert sweep["status"] == "succeeded" and sweep["best"] == "weight=1.0", sweep
    claimed_by = {line.rsplit(" ", 1)[-1] for v in sweep["variants"]
                  for line in client.get(f"/api/jobs/{v['job_id']}").json()["log"]
                  if "claimed by" in line}
    assert claimed_by == {"w0", "w1"}
    commits = trained_hub.api(BOT).list_repo_commits(f"{BOT}/fleet-swept")
    assert [c.title for c in commits].count(f"Sweep {sweep_id}: weight=1.0, the best of 3 "
                                            "variants on south") == 1
