"""``mergebot merge`` end to end: a subprocess talking to localhub."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.hubtools import USERS


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
