"""``mergebot merge`` end to end: a subprocess talking to localhub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from merge_engine import EvalSet, evaluate_model
from merge_engine.trained import sentences
from tests.hubtools import USERS

from .conftest import publish_folder

NORTH = EvalSet("north", tuple(sentences("north", 8, 5)))


def run_mergebot(family, tmp_path, recipe_text: str, *args: str):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(recipe_text)
    env = {**os.environ, "HF_ENDPOINT": family.hub.url, "HF_TOKEN": USERS["alice"],
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return subprocess.run([sys.executable, "-m", "bot.cli", "merge", str(recipe), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_merge_prints_the_repo_and_the_commit(family, tmp_path):
    proc = run_mergebot(family, tmp_path, family.recipe(), "--repo", "alice/cli-merge",
                        "--private", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    url, sha = proc.stdout.split()
    api = family.hub.api("alice")
    assert url == f"{family.hub.url}/alice/cli-merge"
    assert api.list_repo_commits("alice/cli-merge")[0].commit_id == sha
    assert api.model_info("alice/cli-merge").private
    assert not family.hub.api("bob").repo_exists("alice/cli-merge")
    assert USERS["alice"] not in proc.stdout + proc.stderr


def test_a_bad_recipe_is_one_line_exit_2_and_no_repo(family, tmp_path):
    proc = run_mergebot(family, tmp_path, family.recipe().replace("weight", "wieght", 1),
                        "--repo", "alice/cli-merge")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: models[0].parameters.wieght")
    assert "did you mean 'weight'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not family.hub.api("alice").repo_exists("alice/cli-merge")


def test_merge_with_eval_texts_publishes_the_table(hub, trained_family, tmp_path):
    repos = ["alice/t-base", "alice/t-north", "alice/t-south"]
    for path, repo in zip(trained_family, repos, strict=True):
        publish_folder(hub, shutil.copytree(path, tmp_path / "upload" / path.name), repo)
    (tmp_path / "north.txt").write_text("\n".join(NORTH.texts) + "\n")
    recipe = (f"merge_method: task_arithmetic\nbase_model: {repos[0]}\ndtype: float32\n"
              f"models:\n  - model: {repos[1]}\n    parameters:\n      weight: 0.5\n"
              f"  - model: {repos[2]}\n    parameters:\n      weight: 0.5\n")
    proc = run_mergebot(SimpleNamespace(hub=hub), tmp_path, recipe, "--repo", "alice/scored",
                        "--device", "cpu", "--eval-texts", str(tmp_path / "north.txt"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("evaluated")]
    assert len(lines) == 4 and lines[0].startswith("evaluated the merge on north: NLL")
    folder = hub.api("alice").snapshot_download("alice/scored", local_dir=tmp_path / "out")
    [direct] = evaluate_model(folder, [NORTH], device="cpu")
    assert f"NLL {direct.nll:.4f}" in lines[0]
    assert "## Evaluation" in (Path(folder) / "README.md").read_text()

    bad = run_mergebot(SimpleNamespace(hub=hub), tmp_path, recipe, "--repo", "alice/other",
                       "--eval-dataset", "org/wiki,samples=5000")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "evaluation[0].samples" in bad.stderr
    assert not hub.api("alice").repo_exists("alice/other")
