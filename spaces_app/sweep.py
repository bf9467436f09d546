"""The UI's sweep pieces: the axes and evaluation sets as typed in, and a sweep as
Markdown and a plot (pure functions of the API's JSON, but the plot's file).

Axes are typed one per line, ``models[1].parameters.weight = 0.1, 0.2, 0.3`` (values read
as YAML: numbers, names); evaluation sets as a YAML list, the API's ``evaluation`` field.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from merge_engine import EvalTable, RecipeError, RecipeLimits, load_yaml, write_evaluation_plot
from spaces_app.render import _STATUS_MARK, FINISHED, text_md

EVALUATION_EXAMPLE = """\
- name: general
  texts:
    - The quick brown fox jumps over the lazy dog.
    - A merge of two models is evaluated on texts like these.
# - name: wiki
#   dataset: wikitext        # a Hub dataset: its parquet files, pinned to a revision
#   config: wikitext-2-raw-v1
#   split: test
#   column: text
#   samples: 64
"""
SWEEP_FINISHED = ("succeeded", "failed")

EVALUATION_LIMITS = RecipeLimits(max_bytes=2 * 1024 * 1024, max_nodes=20_000,
                                 what="the evaluation sets' YAML")
"""The recipes' YAML budgets for the typed evaluation sets (8 sets of up to 1024 texts)."""


class InputProblem(ValueError):
    """What the user typed cannot be sent: one sentence."""


def parse_axes(text: str) -> dict[str, list]:
    """``path = v1, v2`` per line -> ``{path: [v1, v2]}``."""
    axes: dict[str, list] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, sep, values = line.partition("=")
        if not sep or not path.strip() or not values.strip():
            raise InputProblem(f"sweep line {number}: write 'models[1].parameters.weight = "
                               "0.1, 0.2, 0.3'")
        try:
            axes[path.strip()] = [yaml.safe_load(v.strip()) for v in values.split(",")]
        except yaml.YAMLError:
            raise InputProblem(f"sweep line {number}: the values must be numbers or "
                               "names") from None
    if not axes:
        raise InputProblem("give the sweep: a YAML path of the recipe and its values, e.g. "
                           "'models[1].parameters.weight = 0.1, 0.3, 0.5'")
    return axes


def parse_evaluation(text: str) -> list:
    """The evaluation sets' YAML as the API's list (its checks are the bot's)."""
    try:
        value = load_yaml(text or "", EVALUATION_LIMITS)[0]
    except RecipeError as exc:
        raise InputProblem(f"the evaluation sets are not valid YAML: {exc}") from None
    if not isinstance(value, list) or not value:
        raise InputProblem("give the evaluation sets as a YAML list, e.g. '- name: general' "
                           "with 'texts:' or 'dataset:'")
    return value


def sweep_md(sweep: dict, hub_url: str) -> str:
    """The sweep's state, then a row per variant (its state and perplexity on each set)
    and per source; the published variant in bold."""
    sets = [s["name"] for s in sweep["table"]["sets"]]
    mark = _STATUS_MARK.get(sweep["status"], "●")
    lines = [f"### {mark} Sweep {sweep['id']}: {sweep['status']}",
             f"{len(sweep['variants'])} variants of a recipe publishing to "
             f"[{sweep['repo_id']}]({hub_url}/{sweep['repo_id']}) · best by perplexity on "
             f"**{text_md(sweep['metric'])}** · publish: {sweep['publish']}"]
    if sweep.get("best"):
        lines.append(f"**Best:** {text_md(sweep['best'])}")
    if sweep.get("error"):
        lines.append(f"**Error:** {text_md(sweep['error'])}")
    state = {v["label"]: v for v in sweep["variants"]}
    header = ["model", "state", *(f"{text_md(n)} perplexity" for n in sets)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in sweep["table"]["rows"]:
        variant = state.get(row["label"])
        label = text_md(row["label"])
        if row["label"] == sweep.get("best"):
            label = f"**{label}**"
        if variant is None:
            status = "source"
        else:
            status = f"{_STATUS_MARK.get(variant['status'], '')} {variant['status']}"
            if variant["status"] not in FINISHED and variant.get("stage"):
                status += f" ({variant['stage']})"
        cells = [f"{row['scores'][n]['perplexity']:.3f}" if n in row["scores"] else "-"
                 for n in sets]
        lines.append("| " + " | ".join([label, status, *cells]) + " |")
    failed = [v for v in sweep["variants"] if v["status"] == "failed" and v.get("error")]
    lines += [""] + [f"- {text_md(v['label'])} failed: {text_md(v['error'])}" for v in failed]
    return "\n".join(lines).rstrip()


def sweep_plot(sweep: dict, directory: Path) -> str | None:
    """A PNG of perplexity against the swept value in ``directory``, one file per state of
    the table (so the browser fetches a new one as variants finish, and polling an
    unchanged sweep writes nothing); its path, or None while fewer than two variants have
    scores."""
    digest = hashlib.sha256(json.dumps(sweep["table"], sort_keys=True).encode()).hexdigest()
    path = directory / f"sweep-{int(sweep['id'])}-{digest[:16]}.png"
    if path.is_file():
        return str(path)
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial.png")
    if not write_evaluation_plot(EvalTable.from_json(sweep["table"]), partial):
        return None
    partial.replace(path)
    return str(path)
