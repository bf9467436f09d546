"""The UI driven through its API with gradio_client, against the running offline demo:
check (formula, errors at their line), submit, job status with the card, history,
remerge, and the remerge a donor push triggers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spaces_app.demo import DEMO_LAYERS, DEMO_TOKEN, REPOS
from spaces_app.examples import examples
from tests.bot.botutil import wait_for
from tests.spaces.conftest import Demo

gradio_client = pytest.importorskip("gradio_client")

EXAMPLES = examples(*REPOS, layers=DEMO_LAYERS)
SEED = EXAMPLES[0].text


@pytest.fixture(scope="module")
def client(demo: Demo):
    return gradio_client.Client(demo.url, verbose=False)


def follow(client, recipe_id: int | None, job_id: int | None, timeout: float = 120.0):
    """Poll /job until the job followed is finished; its (markdown, log, card, job id)."""

    def finished():
        status, log, card, job, _timer = client.predict(recipe_id, job_id, api_name="/job")
        if any(word in status for word in ("succeeded", "failed", "skipped")):
            return status, log, card, job
        return None

    return wait_for(finished, timeout, every=0.5, what=f"recipe {recipe_id} / job {job_id}")


def test_named_endpoints(client) -> None:
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/check", "/submit", "/job", "/history", "/remerge"} <= names


def test_check_shows_formula_revisions_licenses_and_sizes(client, demo: Demo) -> None:
    answer = client.predict(SEED, api_name="/check")
    assert "Ready to merge (task_arithmetic)" in answer
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in answer
    for repo in REPOS:
        assert f"| {repo} | [`" in answer  # each model with its pinned revision
    assert "apache-2.0" in answer and "| mit |" in answer
    assert "different licenses" in answer  # the warning
    assert "**Output:** 5.7 MB" in answer


@pytest.mark.parametrize("example", EXAMPLES[1:], ids=lambda e: e.label.split(" ")[0])
def test_every_example_checks(client, example) -> None:
    answer = client.predict(example.text, api_name="/check")
    method = example.text.split("merge_method: ")[1].split()[0]
    assert f"Ready to merge ({method})" in answer, answer


def test_check_shows_an_error_at_its_yaml_line(client) -> None:
    bad = SEED.replace("      weight: 0.3", "      wieght: 0.3")
    answer = client.predict(bad, api_name="/check")
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if "wieght" in text)
    assert f"**`models[1].parameters.wieght` (line {line})**" in answer
    assert "did you mean 'weight'?" in answer
    assert f">  {line} |       wieght: 0.3" in answer


def test_check_names_a_missing_model(client) -> None:
    answer = client.predict(SEED.replace("demo/donor-2", "demo/nope"), api_name="/check")
    assert "cannot be merged" in answer and "demo/nope" in answer


def test_submit_then_job_status_and_card(client, demo: Demo) -> None:
    message, recipe_id, job_id, _timer = client.predict(
        SEED, "client-seed", False, True, api_name="/submit"
    )
    assert f"job {job_id}" in message and "mergebot/client-seed" in message
    status, log, card, job = follow(client, recipe_id, job_id)
    assert "succeeded" in status, (status, log, demo.logs())
    assert job == job_id
    assert "**Published:** [mergebot/client-seed]" in status
    assert "stage: merging" in log and "succeeded" in log
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in card
    assert "base_model_relation: merge" in card  # the front matter, shown as YAML

    caption, table = client.predict(api_name="/history")
    assert "demo" in caption
    assert [recipe_id, "mergebot/client-seed", "task_arithmetic"] == table["data"][0][:3]

    # remerge with the same sources: a new job, which the bot may publish or skip
    message, _, new_job, _ = client.predict(recipe_id, api_name="/remerge")
    assert f"job {new_job}" in message and new_job != job_id
    status, *_ = follow(client, None, new_job)
    assert "succeeded" in status or "skipped" in status


def test_the_frankenmerge_example_publishes_a_deeper_model(client, demo: Demo,
                                                           tmp_path: Path) -> None:
    """Submitted from the UI: the published config has the stacked layer count."""
    from huggingface_hub import HfApi

    stack = EXAMPLES[-1]
    _, recipe_id, job_id, _ = client.predict(stack.text, "client-stack", False, False,
                                             api_name="/submit")
    status, log, _card, _ = follow(client, recipe_id, job_id)
    assert "succeeded" in status, (status, log, demo.logs())
    api = HfApi(endpoint=demo.hub_url, token=DEMO_TOKEN)
    config = json.loads(Path(api.hf_hub_download("mergebot/client-stack", "config.json",
                                                  cache_dir=tmp_path)).read_text())
    upper = DEMO_LAYERS - DEMO_LAYERS // 4
    assert config["num_hidden_layers"] == 2 * upper


def test_submit_refused_recipe_shows_errors(client) -> None:
    message, recipe_id, job_id, _ = client.predict(
        SEED.replace("demo/base", "./local/base"), "client-bad", False, False, api_name="/submit"
    )
    assert recipe_id is None and job_id is None
    assert "cannot be merged" in message and "local path" in message


def test_a_donor_push_brings_a_remerge(client, demo: Demo) -> None:
    _, recipe_id, job_id, _ = client.predict(SEED, "client-watch", False, True, api_name="/submit")
    status, *_ = follow(client, recipe_id, job_id)
    assert "succeeded" in status
    pushed = demo.push_donor(2)
    new_sha = pushed.split(" at ")[1].split(";")[0]

    def remerged():
        status, _log, card, job, _ = client.predict(recipe_id, None, api_name="/job")
        done = job != job_id and "succeeded" in status
        return (status, card) if done else None

    status, card = wait_for(remerged, 120, every=0.5, what="the remerge after the push")
    assert "main moved" in status
    assert f"demo/donor-2@`{new_sha[:12]}`" in status
    assert new_sha in card  # the new card records the new revision


def test_the_demo_offers_no_mock_sign_in(demo: Demo) -> None:
    import httpx2

    with httpx2.Client(base_url=demo.url, follow_redirects=False, timeout=10) as http:
        assert "Sign in with Hugging Face" not in http.get("/").text
        assert http.get("/login/huggingface").status_code == 404


def test_the_publish_control_publishes_only_an_adapter(client, demo: Demo,
                                                       tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    _, recipe_id, job_id, _ = client.predict(SEED, "client-adapter", False, False, False,
                                             False, "adapter", 4, api_name="/submit")
    status, log, card, _ = follow(client, recipe_id, job_id)
    assert "succeeded" in status, (status, log, demo.logs())
    assert re.search(r"^adapter: \d+ modules, rank <= 4, .* of full weights", log, re.M)
    assert "| module | shape | rank | relative error |" in card
    assert "Differences LoRA cannot carry" in card  # the donors' norms differ
    assert "tensor(s) differ that LoRA cannot carry (model." in log
    api = HfApi(endpoint=demo.hub_url, token=DEMO_TOKEN)
    assert set(api.list_repo_files("mergebot/client-adapter")) == {
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"}
