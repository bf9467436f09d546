"""The UI's sweeps: what is typed in, the sweep view's table and plot, and a sweep
submitted and followed through the running demo with gradio_client."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'gradio[oauth]')")

from bot import sweeps
from bot.store import Job
from merge_engine import EvalRow, EvalScore, expand_sweep, parse_eval_sets
from spaces_app.demo import DEMO_LAYERS, REPOS
from spaces_app.examples import examples
from spaces_app.sweep import InputProblem, parse_axes, parse_evaluation, sweep_md, sweep_plot
from tests.bot.botutil import recipe_yaml
from tests.hostile import alias_bomb
from tests.spaces.conftest import Demo

WEIGHT = "models[1].parameters.weight"


def test_axes_and_sets_as_typed():
    assert parse_axes(f"{WEIGHT} = 0.1, 0.3\n# a note\nmerge_method = ties, dare_ties") == {
        WEIGHT: [0.1, 0.3], "merge_method": ["ties", "dare_ties"]}
    for bad in ("", f"{WEIGHT} 0.1", f"{WEIGHT} = "):
        with pytest.raises(InputProblem):
            parse_axes(bad)
    assert parse_evaluation("- name: a\n  texts: [x]") == [{"name": "a", "texts": ["x"]}]
    with pytest.raises(InputProblem, match="YAML list"):
        parse_evaluation("name: a")
    with pytest.raises(InputProblem, match="the evaluation sets' YAML has more than 20,000 YAML"):
        parse_evaluation(alias_bomb())  # a few hundred bytes, 9^8 strings once expanded


def job(index: int, status: str, error: str | None = None) -> Job:
    return Job(id=10 + index, recipe_id=1, owner="alice", trigger="t", triggers=1, force=True,
               status=status, stage="merging" if status == "running" else None, progress=None,
               attempts=1, not_before=0, lease_owner=None, lease_expires=None,
               source_shas=None, commit_sha=None, error=error, created_at=0, started_at=None,
               finished_at=None, created_repo=None, sweep_id=1, variant=index)


def a_sweep(scored: int, best: int | None = None) -> dict:
    """The API's JSON of a 3-variant sweep with ``scored`` variants evaluated."""
    variants = expand_sweep(recipe_yaml(), {WEIGHT: [0.2, 0.5, 0.8]})
    sets = parse_eval_sets([{"name": "north", "texts": ["a"]}, {"name": "south",
                                                                 "texts": ["b"]}])

    def scores(i: int) -> dict:
        return {n: EvalScore(n, 1.0, p, 10, 1, None)
                for n, p in (("north", 5.0 + i), ("south", 9.0 - 2 * i))}

    sweep = sweeps.Sweep(
        id=1, recipe_id=1, owner="alice", yaml=recipe_yaml(), axes={WEIGHT: [0.2, 0.5, 0.8]},
        evaluation=sets, metric="south", publish="best", status="running",
        sources=[EvalRow("alice/base", "source", scores=scores(0))], best=best,
        commit_sha=None, error=None, created_at=0, finished_at=None,
        variants=tuple(sweeps.SweepVariant(i, v.label, v.values, v.text,
                                           scores(i) if i < scored else None)
                       for i, v in enumerate(variants)))
    jobs = {i: job(i, "succeeded" if i < scored else "running") for i in range(3)}
    return sweeps.to_api(sweep, "mergebot/swept", jobs, None)


def test_the_view_fills_in_as_variants_finish(tmp_path: Path):
    early = sweep_md(a_sweep(1), "http://hub")
    assert "Sweep 1: running" in early and "[mergebot/swept](http://hub/mergebot/swept)" in early
    assert "| weight=0.2 | ✓ succeeded | 5.000 | 9.000 |" in early
    assert "| weight=0.5 | ● running (merging) | - | - |" in early
    assert "| alice/base | source | 5.000 | 9.000 |" in early
    assert sweep_plot(a_sweep(1), tmp_path) is None  # one scored variant: no line yet
    two = sweep_plot(a_sweep(2), tmp_path)
    assert two is not None and Path(two).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep_plot(a_sweep(2), tmp_path) == two  # an unchanged sweep writes nothing new
    done = a_sweep(3, best=2)
    assert sweep_plot(done, tmp_path) != two
    assert "| **weight=0.8** | ✓ succeeded | 7.000 | 5.000 |" in sweep_md(done, "http://hub")


gradio_client = pytest.importorskip("gradio_client")


def test_a_sweep_of_the_demo_models_is_refused_at_once(demo: Demo):
    """The demo's models have no tokenizer, so no variant could be scored: the sweep is
    refused at submission with the reason (no variant runs), like a bad axis."""
    client = gradio_client.Client(demo.url, verbose=False)
    recipe = examples(*REPOS, layers=DEMO_LAYERS)[0].text
    message, sweep_id, _timer = client.predict(
        recipe, "ui-sweep", False, f"{WEIGHT} = 0.2, 0.4", "- name: t\n  texts: [hello]",
        "", "best", api_name="/submit_sweep")
    assert sweep_id is None, message
    assert "evaluation" in message and "demo/base has no tokenizer.json" in message, message
    bad = client.predict(recipe, "ui-sweep", False, "models[9].parameters.weight = 1",
                         "- name: t\n  texts: [hello]", "", "best", api_name="/submit_sweep")
    assert "sweep.models[9].parameters.weight" in bad[0] and bad[1] is None
