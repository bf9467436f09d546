"""Pure parts of the UI: rendering, error locations, the API client's error mapping,
configuration, examples, the demo's token rule, and the Space folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'gradio[oauth]')")

from merge_engine.recipe import parse_recipe
from spaces_app import preflight, render
from spaces_app.app import MOCK_OAUTH_TOKEN, AppConfig, Handlers, build_app
from spaces_app.client import ApiError, MergebotClient, _error
from spaces_app.examples import SEED_MODELS, examples
from spaces_app.stage import stage


def test_examples_parse_and_start_with_the_seed_recipe() -> None:
    items = examples()
    assert [e.label.split(" ")[0] for e in items] == [
        "seed", "ties", "dare_ties", "slerp", "model_stock", "frankenmerge"]
    seed = parse_recipe(items[0].text)
    assert seed.merge_method == "task_arithmetic"
    assert [m.ref.path for m in seed.inputs()] == list(SEED_MODELS)
    for item in items[1:]:
        parse_recipe(item.text)
    custom = examples("a/base", "a/one", "a/two")[0].text
    assert "base_model: a/base" in custom and "model: a/two" in custom
    stack = parse_recipe(examples()[-1].text).slices
    assert [s.sources[0].layer_range for s in stack] == [(0, 30), (10, 40)]


def test_line_of_finds_yaml_paths() -> None:
    text = examples()[0].text
    weight_line = next(n for n, t in enumerate(text.splitlines(), 1) if "weight: 0.3" in t)
    assert preflight.line_of(text, "models[1].parameters.weight") == weight_line
    assert preflight.line_of(text, "") is None
    broken = text.replace("weight: 0.3", "wieght: 0.3")
    assert preflight.line_of(broken, "models[1].parameters.wieght") == weight_line


def test_local_preflight_reports_errors_with_lines(tmp_path: Path) -> None:
    answer = preflight.check("merge_method: nope\n", endpoint=None, token=None)
    assert answer["ok"] is False
    assert answer["errors"][0]["loc"] == "merge_method"
    assert "unknown merge method" in answer["errors"][0]["msg"]
    missing = (
        f"merge_method: linear\nmodels:\n  - model: {tmp_path}/none\n"
        "    parameters:\n      weight: 1.0\n"
    )
    answer = preflight.check(missing, endpoint=None, token=None)
    assert answer["ok"] is False and "does not exist" in answer["errors"][0]["msg"]
    assert preflight.check("  \n", endpoint=None, token=None)["errors"][0]["msg"].startswith(
        "the recipe is empty"
    )


def test_local_preflight_summarizes_a_plan(family: list[Path]) -> None:
    answer = preflight.check(local_recipe(family), endpoint=None, token=None)
    assert answer["ok"] is True, answer
    assert answer["formula"] == "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)"
    assert [m["role"] for m in answer["models"]] == ["base", "donor", "donor"]
    assert all(m["bytes"] > 0 for m in answer["models"])
    assert answer["output_bytes"] > 0
    json.dumps(answer)  # plain JSON, the shape of a bot /api/validate answer
    shown = render.summary_md(answer, "https://hub.example")
    assert "| base |" in shown and "local" in shown
    assert "other parameters" not in shown  # empty columns are left out


def test_the_check_shows_ignored_parameters(family: list[Path]) -> None:
    answer = preflight.check(local_recipe(family) + "parameters:\n  embed_slerp: true\n",
                             endpoint=None, token=None)
    assert answer["ok"] is True, answer
    ignored = "parameters.embed_slerp (line 11): ignored: not a parameter of task_arithmetic"
    assert answer["warnings"] == [ignored]
    assert f"- ⚠ {ignored}" in render.summary_md(answer, "https://hub.example")


def test_an_moe_check_shows_its_experts_size_and_prompts(family: list[Path]) -> None:
    base, a, b = family
    text = (f"base_model: {base}\ngate_mode: random\nexperts_per_token: 1\nexperts:\n"
            f"  - source_model: {a}\n    positive_prompts: [code]\n"
            f"  - source_model: {b}\n")
    answer = preflight.check(text, endpoint=None, token=None)
    assert answer["ok"] is True, answer
    shown = render.summary_md(answer, "https://hub.example")
    assert "(moe)" in shown and "`gate_mode: random`" in shown
    assert f"- 0: `{a}` +`code`" in shown and f"- 1: `{b}`" in shown
    assert f"{answer['parameter_count']:,} parameters" in shown


def test_a_multi_part_check_shows_each_module(tmp_path: Path) -> None:
    """Each module's models with their own weights, and its own parameters."""
    from ..test_card_modules import weighted
    from ..test_modules import write_llava

    a, b = write_llava(tmp_path / "a", 0), write_llava(tmp_path / "b", 1)
    answer = preflight.check(weighted(a, b), endpoint=None, token=None)
    assert answer["ok"] is True, answer
    shown = render.summary_md(answer, "https://hub.example")
    sections = shown.split("#### Module ")
    assert [s.split("`")[1] for s in sections[1:]] == [
        "text_decoder", "vision_tower", "multi_modal_projector"]
    assert f"| donor | {b} | local | 0.9 |" in sections[2]
    assert f"| donor | {b} | local | 0.25 |\n| donor | {a} | local | 0.75 |" in sections[3]
    assert "**Module parameters:** `weight` = 0.25" in sections[3]
    assert "license" not in sections[1] and "license" in sections[0]


def test_errors_md_points_at_the_line() -> None:
    text = "a: 1\nb: 2\nc: 3\nd: 4\n"
    shown = render.errors_md([{"loc": "c", "msg": "bad value", "line": 3}], text)
    assert "**`c` (line 3)**: bad value" in shown
    assert ">   3 | c: 3" in shown and "    2 | b: 2" in shown and "    4 | d: 4" in shown
    assert "**recipe**: oops" in render.errors_md([{"loc": "", "msg": "oops"}], text)


def test_job_md_and_card_md() -> None:
    job = {
        "id": 4,
        "status": "running",
        "stage": "merging",
        "progress": 0.5,
        "trigger": "submitted by @alice",
        "attempts": 1,
        "repo_id": "bot/merged",
        "source_shas": {"a/base": "0123456789abcdef"},
    }
    shown = render.job_md(job, "https://hub.example")
    assert "Job 4 · running" in shown and "merging" in shown and "50 %" in shown
    assert "a/base@`0123456789ab`" in shown
    done = {**job, "status": "succeeded", "commit": "f" * 40}
    assert f"(https://hub.example/bot/merged/commit/{'f' * 40})" in render.job_md(
        done, "https://hub.example"
    )
    failed = render.job_md({**job, "status": "failed", "error": "no such repo"}, "h")
    assert "**Error:** no such repo" in failed
    card = render.card_md("---\nlicense: mit\n---\n\n# Title\n")
    assert card.startswith("# Title\n") and card.endswith("```yaml\nlicense: mit\n```\n")
    assert render.card_md("# plain\n") == "# plain\n"
    run = {"backend": "hf-jobs", "flavor": "l4x1", "hf_job_id": "abc123",
           "hf_job_url": "https://hub.example/jobs/bot/abc123",
           "hf_job_log": ["mergebot-stage: merging 0.500"]}
    on_jobs = render.job_md({**job, "run": run}, "h")
    assert "[`abc123`](https://hub.example/jobs/bot/abc123) on `l4x1`" in on_jobs
    assert "mergebot-stage: merging 0.500" in on_jobs
    assert "Hugging Face Job" not in render.job_md({**job, "run": {"backend": "local"}}, "h")
    sha = "0123456789ab" + "c" * 28
    row = render.card_md(f"| a/b | [`{sha}`](http://hub/a/b/commit/{sha}) |\n")
    assert row == f"| a/b | [`0123456789ab`](http://hub/a/b/commit/{sha}) |\n"


def test_checks_md_shows_the_check_lines_of_a_job_log() -> None:
    log = ["stage: merging", "check passed: config.json matches the weights",
           "perplexity of the merge: 93.89", "perplexity of a/base: 95.66",
           "greedy generation: 'The capital' -> 'of `x`'", "committed abc to bot/merged"]
    shown = render.checks_md(log)
    assert shown.startswith("\n\n#### Checks\n\n```text\n")
    assert "check passed: config.json matches the weights\nperplexity of the merge: 93.89\n" \
        "perplexity of a/base: 95.66\ngreedy generation: 'The capital' -> 'of 'x''\n```" in shown
    assert "stage: merging" not in shown and "committed" not in shown
    assert render.checks_md(["stage: merging"]) == ""


def test_summary_md_shows_the_jobs_flavor_and_cost() -> None:
    summary = {"method": "linear", "formula": "m = a", "models": [], "output_bytes": 1,
               "parameter_count": 1, "warnings": [],
               "backend": {"backend": "hf-jobs", "flavor": "t4-small",
                           "estimated_seconds": 600, "estimated_cost_usd": 0.0667}}
    assert "**Runs on:** Hugging Face Jobs, `t4-small`, about 10 min, estimated $0.07." in (
        render.summary_md(summary, "h"))


def test_sizes_and_history_rows() -> None:
    assert render.size(999) == "999 B" and render.size(5_700_000) == "5.7 MB"
    rows = render.history_rows(
        [
            {
                "id": 2,
                "repo_id": "bot/x",
                "recipe": "merge_method: ties  # c\n",
                "watch": True,
                "private": False,
                "last_commit": "a" * 40,
                "broken": None,
            }
        ]
    )
    assert rows == [[2, "bot/x", "ties", "yes", "no", "a" * 12, "", render.REMERGE]]
    assert len(render.HISTORY_HEADERS) == len(rows[0])


def test_messages_are_shown_whole_as_text() -> None:
    yaml_error = "while parsing a flow sequence expected ',' or ']', but got '<stream end>'"
    shown = render.errors_md([{"loc": "", "msg": yaml_error, "line": 1}], "models: [a\n")
    assert "\\<stream end\\>" in shown and "',' or '\\]'" in shown
    assert ">   1 | models: [a" in shown  # the line around it
    assert render.message_md("a_b *c* <d>") == "### ✗ a\\_b \\*c\\* \\<d\\>"
    failed = render.job_md({"id": 1, "status": "failed", "error": "x <y>"}, "h")
    assert "**Error:** x \\<y\\>" in failed


def test_a_skipped_job_links_the_commit_that_holds_it() -> None:
    job = {"id": 5, "status": "skipped", "repo_id": "bot/m", "commit": "c" * 40}
    shown = render.job_md(job, "http://hub")
    assert "unchanged since commit [`cccccccccccc`](http://hub/bot/m/commit/" + "c" * 40 in shown
    assert "force a new merge" in shown
    assert "recipe was deleted" in render.job_md({**job, "commit": None}, "http://hub")


def test_history_row_action_picks_its_recipe() -> None:
    import gradio as gr

    handlers = Handlers(MergebotClient("http://bot"), AppConfig())
    row = [7, "bot/x", "ties", "yes", "no", "", "", render.REMERGE]
    pick = gr.SelectData(None, {"index": [0, 7], "value": render.REMERGE, "row_value": row})
    assert handlers.pick(pick) == 7
    other = gr.SelectData(None, {"index": [0, 1], "value": "bot/x", "row_value": row})
    assert handlers.pick(other) is None


def test_no_sign_in_button_off_a_space(monkeypatch: pytest.MonkeyPatch) -> None:
    from spaces_app.app import login_available

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_demo_user_token")  # Gradio would mock a login
    assert login_available(AppConfig()) is False
    monkeypatch.setenv("SPACE_ID", "me/space")
    assert login_available(AppConfig()) is True


def test_demo_keeps_its_hub_port_and_prints_working_paths(tmp_path: Path) -> None:
    from spaces_app import demo

    assert demo.hub_port_for(tmp_path, None) == demo.DEFAULT_HUB_PORT
    (tmp_path / demo.STATE).write_text(json.dumps({"hub_port": 9123}))
    assert demo.hub_port_for(tmp_path, None) == 9123
    assert demo.hub_port_for(tmp_path, 9200) == 9200
    assert demo.hub_port_for(tmp_path, 0) not in (0, 9123)
    run = demo.commands(tmp_path, "http://127.0.0.1:7860")
    assert f"{sys.executable} -m spaces_app.demo push-donor 1 --home {tmp_path}" in run["push"]
    assert f"HF_TOKEN={demo.DEMO_TOKEN}" in run["submit"]
    assert str(tmp_path / demo.RECIPE_FILE) in run["submit"]


def test_client_error_mapping() -> None:
    err = _error(422, {"errors": [{"loc": "models[0].model", "msg": "not found"}]})
    assert err.status == 422 and str(err) == "models[0].model: not found"
    assert err.errors == [{"loc": "models[0].model", "msg": "not found"}]
    assert str(_error(403, {"error": "the bot cannot write there"})) == "the bot cannot write there"
    assert str(_error(502, None)) == "the bot answered HTTP 502"


def test_client_unreachable_is_one_sentence() -> None:
    client = MergebotClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ApiError) as info:
        client.job(1)
    assert info.value.status == 0 and "unreachable" in str(info.value)
    assert client.healthy() is False


def test_client_sends_the_bearer_token() -> None:
    seen = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return httpx2.Response(201, json={"recipe_id": 1, "job_id": 2, "repo_id": "b/m"})

    transport = httpx2.MockTransport(handler)
    original = httpx2.Client

    class Patched(original):
        def __init__(self, **kwargs):
            super().__init__(transport=transport, **kwargs)

    httpx2.Client = Patched
    try:
        answer = MergebotClient("http://bot").submit("x: 1\n", "hf_tok", repo_id="m")
    finally:
        httpx2.Client = original
    assert answer["job_id"] == 2
    assert seen["auth"] == "Bearer hf_tok"
    assert seen["body"] == {"recipe": "x: 1\n", "repo_id": "m", "private": False, "watch": True,
                            "allow_high_perplexity": False}


def local_recipe(family: list[Path]) -> str:
    base, one, two = family
    return (
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        f"  - model: {one}\n    parameters:\n      weight: 1.0\n"
        f"  - model: {two}\n    parameters:\n      weight: 0.3\n"
    )


def bot_answering(monkeypatch: pytest.MonkeyPatch, status: int, body: object) -> list:
    """Make every client request get ``status`` with JSON ``body``; the requests seen."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(status, json=body)

    original = httpx2.Client

    class Patched(original):
        def __init__(self, **kwargs):
            super().__init__(transport=httpx2.MockTransport(handler), **kwargs)

    monkeypatch.setattr(httpx2, "Client", Patched)
    return seen


def test_check_asks_the_bot_with_the_users_token(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = {
        "ok": True,
        "method": "linear",
        "formula": "merged = 0.5 * a + 0.5 * b",
        "models": [{"role": "donor", "name": "o/a", "revision": "f" * 40, "bytes": 10}],
        "warnings": ["a warning"],
    }
    seen = bot_answering(monkeypatch, 200, summary)
    handlers = Handlers(MergebotClient("http://bot"), AppConfig(demo_token="hf_user"))
    shown = handlers.check("merge_method: linear\n", None)
    assert "Ready to merge (linear)" in shown and "a warning" in shown
    assert seen[0].url.path == "/api/validate" and seen[0].headers["authorization"] == (
        "Bearer hf_user"
    )


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (422, {"ok": False, "errors": [{"loc": "merge_method", "msg": "bad", "line": 1}]},
         "**`merge_method` (line 1)**: bad"),
        (429, {"error": "you have 2 checks running; wait for one to finish"},
         "✗ you have 2 checks running; wait for one to finish"),
        (401, {"error": "the token is not a valid Hub token"},
         "✗ the token is not a valid Hub token"),
    ],
)
def test_the_bots_refusals_are_shown_not_bypassed(
    monkeypatch: pytest.MonkeyPatch, family: list[Path], status, body, shown
) -> None:
    bot_answering(monkeypatch, status, body)
    handlers = Handlers(MergebotClient("http://bot"), AppConfig(demo_token="hf_user"))
    answer = handlers.check(local_recipe(family), None)
    assert shown in answer and "Ready to merge" not in answer


def test_check_runs_locally_only_when_no_bot_answers(
    monkeypatch: pytest.MonkeyPatch, family: list[Path]
) -> None:
    config = AppConfig(demo_token="hf_user")
    unreachable = Handlers(MergebotClient("http://127.0.0.1:9", timeout=2), config)
    assert "Ready to merge (task_arithmetic)" in unreachable.check(local_recipe(family), None)
    bot_answering(monkeypatch, 404, {"detail": "Not Found"})  # the UI served alone
    alone = Handlers(MergebotClient("http://ui"), config)
    assert "Ready to merge (task_arithmetic)" in alone.check(local_recipe(family), None)


def test_demo_token_only_off_a_space_and_only_without_a_real_token() -> None:
    env = {"MERGEBOT_DEMO_TOKEN": "hf_demo", "HF_ENDPOINT": "http://127.0.0.1:1/"}
    config = AppConfig.from_env(env)
    assert config.demo_token == "hf_demo" and config.hub_url == "http://127.0.0.1:1"
    assert AppConfig.from_env({**env, "SPACE_ID": "a/b"}).demo_token is None
    assert "hf_demo" not in repr(config)

    class Token:
        def __init__(self, token: str) -> None:
            self.token = token

    handlers = Handlers(MergebotClient("http://bot"), config)
    assert handlers.token(None) == "hf_demo"
    assert handlers.token(Token(MOCK_OAUTH_TOKEN)) == "hf_demo"
    assert handlers.token(Token("hf_real")) == "hf_real"
    assert Handlers(MergebotClient("http://bot"), AppConfig()).token(None) is None


def test_submit_and_check_without_a_token_ask_to_sign_in() -> None:
    handlers = Handlers(MergebotClient("http://127.0.0.1:9"), AppConfig())
    assert handlers.check("merge_method: linear\n", None).startswith("Sign in")
    message, recipe_id, job_id, _ = handlers.submit("x: 1\n", "m", False, True, None)
    assert message.startswith("Sign in") and recipe_id is None and job_id is None
    message, *_ = handlers.remerge(3, None)
    assert message.startswith("Sign in")


def test_build_app_without_a_login_outside_a_space(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio as gr

    monkeypatch.delenv("SPACE_ID", raising=False)
    blocks = build_app(MergebotClient("http://bot"), AppConfig(login=False))
    assert isinstance(blocks, gr.Blocks)
    assert not any(isinstance(b, gr.LoginButton) for b in blocks.blocks.values())
    names = {fn.api_name for fn in blocks.fns.values() if fn.api_visibility == "public"}
    assert {"check", "submit", "job", "history", "remerge"} <= names


def test_stage_builds_the_space_folder(tmp_path: Path) -> None:
    out = stage(tmp_path / "space")
    front = (out / "README.md").read_text().split("---\n")[1]
    card = yaml.safe_load(front)
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["hf_oauth"] is True and "read-repos" in card["hf_oauth_scopes"]
    assert card["suggested_hardware"]
    assert (out / "spaces_app" / "app.py").exists() and (out / "merge_engine" / "api.py").exists()
    assert not list(out.rglob("__pycache__"))
    requirements = (out / "requirements.txt").read_text()
    assert "gradio[oauth]>=6.31,<7" in requirements
    # the staged app imports from its own folder, without this checkout on sys.path
    code = "import app, spaces_app, merge_engine; print(spaces_app.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=out,
        env={
            "MERGEBOT_API_URL": "http://127.0.0.1:9",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(out))


def test_deploy_workflow_runs_on_release_tags_with_the_token_secret() -> None:
    path = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "deploy-space.yml"
    workflow = yaml.safe_load(path.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["tags"] == ["v*"]
    steps = workflow["jobs"]["deploy"]["steps"]
    upload = next(s for s in steps if "spaces_app.stage" in s.get("run", ""))
    assert upload["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "--push" in upload["run"]


def test_demo_serves_the_ui_alone_without_the_bot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from spaces_app import demo
    from spaces_app.mount import GradioASGI

    monkeypatch.setitem(sys.modules, "bot.server", None)  # importing it raises ImportError
    app = demo.build_asgi(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:10")
    assert isinstance(app, GradioASGI)
    assert "the bot service is not importable" in capsys.readouterr().err


def test_the_publish_control_asks_for_an_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = bot_answering(monkeypatch, 201, {"recipe_id": 1, "job_id": 2, "repo_id": "b/m"})
    handlers = Handlers(MergebotClient("http://bot"), AppConfig(demo_token="hf_user"))
    message, _, job_id, _ = handlers.submit("x: 1\n", "m", False, True, False, False,
                                            "adapter", 16.0, None)
    assert job_id == 2 and message.startswith("Submitted")
    body = json.loads(seen[-1].content)
    assert (body["publish"], body["max_rank"], body["sv_cutoff"]) == ("adapter", 16, 0.0)
    handlers.submit("x: 1\n", "m", False, True, False, False, "full", 16.0, None)
    assert "publish" not in json.loads(seen[-1].content)  # full weights: no adapter fields


def test_submit_sends_evaluation_sets_and_publish_intermediates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = bot_answering(monkeypatch, 201, {"recipe_id": 1, "job_id": 2, "repo_id": "b/m"})
    handlers = Handlers(MergebotClient("http://bot"), AppConfig(demo_token="hf_user"))
    sets = "- name: mine\n  texts: [A text., Another one.]\n- name: wiki\n  dataset: org/wiki\n"
    message, _, job_id, _ = handlers.submit("x: 1\n", "m", False, True, False, False, "full",
                                            16.0, sets, True, None)
    assert job_id == 2 and message.startswith("Submitted")
    body = json.loads(seen[-1].content)
    assert body["evaluation"] == [{"name": "mine", "texts": ["A text.", "Another one."]},
                                  {"name": "wiki", "dataset": "org/wiki"}]
    assert body["publish_intermediates"] is True
    handlers.submit("x: 1\n", "m", False, True, False, False, "full", 16.0, "  \n", False, None)
    body = json.loads(seen[-1].content)
    assert "evaluation" not in body and "publish_intermediates" not in body  # left blank
    calls = len(seen)
    message, _, job_id, _ = handlers.submit("x: 1\n", "m", False, True, False, False, "full",
                                            16.0, "name: [unclosed", False, None)
    assert job_id is None and "not valid YAML" in message and len(seen) == calls  # not sent
