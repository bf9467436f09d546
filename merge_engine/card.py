"""The model card (README.md) of a merged model, generated from the plan and the result.

Front matter follows the Hub's model-card metadata (``base_model`` list of the Hub repos
merged, ``base_model_relation: merge``, ``tags``, ``library_name``, ``pipeline_tag``,
``license``) plus a machine-readable ``merge`` block: the base model and every donor with
its exact revision (and LoRA adapter), the recipe-wide ``parameters``, for a ``slices:``
recipe every slice with each source's ``layer_range`` and parameters and, for a multi-part
``modules:`` recipe, every module with its own models, parameters and slices. The body
says the same in tables (a section per module), then gives the recipe pinned to the
revisions merged. With an evaluation (:mod:`merge_engine.evaluate`), an "Evaluation"
section gives every model's scores (and the plot of a sweep), and ``model-index`` in the
front matter the published model's perplexity on each Hub dataset, with its revision.
"""

from __future__ import annotations

import re

import yaml

from merge_engine.check import CheckReport
from merge_engine.check.behaviour import TEXT
from merge_engine.evaluate import EvalTable, evaluation_section, model_index
from merge_engine.io.sources import Source
from merge_engine.plan.build import Plan
from merge_engine.plan.summary import (
    ModelRow,
    Part,
    SliceRow,
    fmt,
    formula,
    license_note,
    licenses,
    model_rows,
    parts,
    plain,
    recipe_parameters,
    slice_rows,
)
from merge_engine.version import __version__

DEFAULT_HUB = "https://huggingface.co"


class _Dumper(yaml.SafeDumper):
    """YAML with lists of numbers (layer ranges, gradients) on one line: ``[0, 16]``."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    numbers = bool(data) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                 for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=numbers)


_Dumper.add_representer(list, _represent_list)


def _license(plan: Plan) -> tuple[str | None, str | None]:
    """(license for the front matter, a sentence when the sources disagree)."""
    found = licenses(plan)
    values = {v for v in found.values() if v}
    if not values:
        return None, None
    if len(values) == 1 and all(found.values()):
        return values.pop(), None
    note = license_note(found)
    return "other", f"{note[0].upper()}{note[1:]}."


def _pipeline_tag(plan: Plan) -> str | None:
    reference = plan.sources[0]
    if reference.card_data.get("pipeline_tag"):
        return reference.card_data["pipeline_tag"]
    if _is_vision_language(plan):
        return "image-text-to-text"
    arch = (reference.config.get("architectures") or [""])[0]
    return "text-generation" if arch.endswith("ForCausalLM") else None


def _is_vision_language(plan: Plan) -> bool:
    """A vision-language model (Llava, Gemma3, Qwen2-VL, ...): its config has a vision part."""
    config = plan.sources[0].config
    return "vision_config" in config or plan.recipe.parts != ()


def _use_snippet(plan: Plan, model_id: str, tokenizer: bool) -> list[str]:
    """How to load the output with transformers (a processor for vision-language models;
    neither when the output has no tokenizer files)."""
    if _is_vision_language(plan):
        auto, pre = "AutoModelForImageTextToText", "AutoProcessor"
        var = "processor"
    else:
        auto, pre, var = "AutoModelForCausalLM", "AutoTokenizer", "tokenizer"
    load = f'model = {auto}.from_pretrained(model_id, dtype="auto")'
    if not tokenizer:
        return [f"from transformers import {auto}", "", f'model_id = "{model_id}"', load]
    return [f"from transformers import {auto}, {pre}", "", f'model_id = "{model_id}"',
            f"{var} = {pre}.from_pretrained(model_id)", load]


def _hub_ids(plan: Plan) -> list[str]:
    """Every Hub repo merged (models and adapters), once each; local directories are left
    out, as the Hub's ``base_model`` takes repo ids only."""
    ids = []
    for source in plan.sources:
        if source.revision is not None:
            ids.append(source.ref.path)
        if source.adapter_revision is not None:
            ids.append(source.adapter.name)
    return list(dict.fromkeys(ids))


def _entry(source: Source) -> dict:
    """``{model, revision}`` of one input, with its LoRA adapter's (``model`` is the
    combined reference, ``revision`` the base model's)."""
    entry: dict = {"model": source.name, "revision": source.revision}
    if source.adapter is not None:
        entry["lora"] = {"model": source.adapter.name, "revision": source.adapter_revision}
    return entry


def _uses(row: ModelRow, plan: Plan) -> dict:
    """Where a model is used: with modules, the modules merging it; with slices, the slices
    using it (their entries give its parameters there); else its parameters (a donor's)."""
    if plan.recipe.parts:
        return {"modules": list(row.modules)}
    if plan.recipe.slices is not None:
        return {"slices": list(row.slices)}
    return {"parameters": row.values} if row.role == "donor" else {}


def _inputs_entry(plan: Plan) -> dict:
    """``base_model`` (when the method has one) and ``models``: each input with its
    revision and where it is used."""
    entry: dict = {}
    pairs = list(zip(model_rows(plan), plan.sources, strict=True))
    for row, source in pairs:
        if row.role == "base":
            entry["base_model"] = {**_entry(source), **_uses(row, plan)}
    entry["models"] = [{**_entry(s), **_uses(r, plan)} for r, s in pairs if r.role == "donor"]
    return entry


def _module_entry(part: Part) -> dict:
    """One module for ``merge.modules``: its inputs, its own ``parameters`` and slices."""
    entry = _inputs_entry(part.plan)
    entry["parameters"] = {k: plain(v) for k, v in part.plan.recipe.module_parameters.items()}
    if part.plan.recipe.slices is not None:
        entry["slices"] = [_slice_entry(part.plan, row) for row in slice_rows(part.plan)]
    return entry


def _slice_entry(plan: Plan, row: SliceRow) -> dict:
    """One slice for the ``merge`` block: output layers, base, sources, own parameters."""
    entry: dict = {"output_layers": list(row.layers)}
    base = next((s for s in row.sources if s.role == "base"), None)
    if base is not None:
        entry["base_model"] = plan.sources[base.source].name
    entry["sources"] = []
    for src in row.sources:
        item = {**_entry(plan.sources[src.source]), "layer_range": list(src.layer_range)}
        if src.role == "donor":
            item["parameters"] = {k: plain(v) for k, v in src.params.items()}
        entry["sources"].append(item)
    if row.parameters:
        entry["parameters"] = {k: plain(v) for k, v in row.parameters.items()}
    return entry


def front_matter(plan: Plan, seed: int | None, evaluation: EvalTable | None = None,
                 name: str = "Merged model") -> dict:
    """The card's YAML metadata (``name``: the model's, for ``model-index``)."""
    license_id, _ = _license(plan)
    meta: dict = {}
    hub_ids = _hub_ids(plan)
    if hub_ids:
        meta["base_model"] = hub_ids
        meta["base_model_relation"] = "merge"
    if license_id:
        meta["license"] = license_id
    meta["tags"] = ["merge", "mergekit", "mergebot", plan.recipe.merge_method]
    meta["library_name"] = "transformers"
    tag = _pipeline_tag(plan)
    if tag:
        meta["pipeline_tag"] = tag
    block: dict = {"method": plan.recipe.merge_method, "engine": f"mergebot {__version__}",
                   **_inputs_entry(plan)}
    parameters = recipe_parameters(plan)
    if parameters:
        block["parameters"] = {k: plain(v) for k, v in parameters.items()}
    if plan.recipe.slices is not None:
        block["slices"] = [_slice_entry(plan, row) for row in slice_rows(plan)]
    if plan.recipe.parts:
        block["modules"] = {part.name: _module_entry(part) for part in parts(plan)}
    if seed is not None:
        block["random_seed"] = seed
    meta["merge"] = block
    index = model_index(evaluation, name) if evaluation is not None else None
    if index:
        meta["model-index"] = index
    return meta


def pinned_recipe(plan: Plan) -> str:
    """The recipe with every Hub reference pinned to the commit SHA that was merged."""
    text = plan.recipe.text
    for source in plan.sources:
        if source.revision or source.adapter_revision:
            written = re.escape(str(source.ref))
            text = re.sub(rf"(?<![\w./@+-]){written}(?![\w./@+-])",
                          lambda _, pinned=source.pinned: pinned, text)
    return text


def _linked(name: str, revision: str | None, hub: str) -> tuple[str, str]:
    """(model, revision) cells of the models table for one repo or directory."""
    if revision is None:
        return name, "local files"
    return f"[{name}]({hub}/{name})", f"[`{revision}`]({hub}/{name}/commit/{revision})"


def _at_revision(name: str, revision: str | None, hub: str) -> str:
    """A repo linked at the exact revision merged (a directory as it is)."""
    return name if revision is None else f"[{name}]({hub}/{name}/tree/{revision})"


def _model_cells(row: ModelRow, hub: str) -> tuple[str, str]:
    """(model, revision) cells of one input, its LoRA adapter included."""
    model, rev = _linked(row.model or row.name, row.revision, hub)
    if row.adapter is not None:
        lora_model, lora_rev = _linked(row.adapter, row.adapter_revision, hub)
        model, rev = f"{model} + LoRA {lora_model}", f"{rev} + {lora_rev}"
    return model, rev


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}: {fmt(v)}" for k, v in params.items()) or "-"


def _models_table(rows: list[ModelRow], hub: str) -> list[str]:
    """A row per input: role, model and revision linked, weight, other parameters."""
    lines = ["| role | model | revision | weight (alpha) | other parameters |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        model, rev = _model_cells(r, hub)
        others = ", ".join(f"{k}: {v}" for k, v in r.others.items()) or "-"
        lines.append(f"| {r.role} | {model} | {rev} | {r.weight or '-'} | {others} |")
    return lines


def _modules_table(rows: list[ModelRow], hub: str) -> list[str]:
    """A row per input of a multi-part recipe: role, model and revision, its modules."""
    lines = ["| role | model | revision | modules |", "| --- | --- | --- | --- |"]
    for r in rows:
        model, rev = _model_cells(r, hub)
        lines.append(f"| {r.role} | {model} | {rev} | {', '.join(r.modules)} |")
    return lines


def _module_section(part: Part, hub: str) -> list[str]:
    """One module: its formula, its models table, its own parameters and its slices."""
    view = part.plan
    lines = [f"## Module `{part.name}`", "", "```text", formula(view), "```", "",
             *_models_table(model_rows(view), hub)]
    if view.recipe.module_parameters:
        lines += ["", f"Module parameters: {_params_text(view.recipe.module_parameters)}."]
    if view.recipe.slices is not None:
        lines += ["", *_slices_table(view, hub, f"### Slices of `{part.name}`")]
    return lines


def _slices_table(plan: Plan, hub: str, heading: str = "## Slices") -> list[str]:
    """The Slices section: a row per source of each slice (slice columns on its first)."""
    global_names = plan.method.global_params
    lines = [
        heading, "",
        "Each slice makes the output layers shown from the same number of layers of each of "
        "its sources; ranges are `[start, end]` with the end excluded, as in the recipe. "
        "Models link to the exact revision merged.", "",
        "| slice | output layers | role | model | layer_range | weight (alpha) "
        "| other parameters | slice parameters |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in slice_rows(plan):
        own = {k: v for k, v in row.parameters.items() if k in global_names}
        for j, src in enumerate(row.sources):
            source = plan.sources[src.source]
            model = _at_revision(source.ref.path, source.revision, hub)
            if source.adapter is not None:
                adapter = _at_revision(source.adapter.name, source.adapter_revision, hub)
                model = f"{model} + LoRA {adapter}"
            others = {k: v for k, v in src.params.items() if k != "weight"}
            weight = fmt(src.params["weight"]) if "weight" in src.params else "-"
            first = [str(row.index), str(list(row.layers))] if j == 0 else ["", ""]
            cells = [*first, src.role, model, str(list(src.layer_range)), weight,
                     _params_text(others), _params_text(own) if j == 0 else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _checks_section(report: CheckReport) -> list[str]:
    """The check stage's results: structural lines, perplexities, the sample generation."""
    lines = ["## Checks", "", "Checked before publishing:", ""]
    lines += [f"- {line}" for line in report.structure]
    lines += [f"- skipped: {line}" for line in report.skipped]
    if report.perplexity is not None:
        lines += ["", f"Perplexity on a built-in English paragraph ({len(TEXT.split())} words; "
                  "lower is better):", "", "| model | perplexity |", "| --- | --- |",
                  f"| this merge | {report.perplexity:.2f} |"]
        lines += [f"| {s.name} | " + (f"{s.perplexity:.2f}" if s.perplexity is not None
                                      else s.note) + " |" for s in report.sources]
        if report.limit is not None:
            lines += ["", f"Limit: {report.limit:.2f}"
                      + (" (exceeded; the submission allowed it)." if report.allowed_high
                         else ".")]
    if report.generation is not None:
        lines += ["", "Greedy generation:", "", "```text",
                  f"{report.prompt}{report.generation}", "```"]
    return lines


def render_card(plan: Plan, *, seed: int | None = None, hub_url: str | None = None,
                provenance: str | None = None, repo_id: str | None = None,
                checks: CheckReport | None = None, tokenizer: bool = True,
                evaluation: EvalTable | None = None) -> str:
    """The whole README.md; ``tokenizer``: the output has tokenizer files (the usage
    snippet loads one); ``evaluation``: the scores to show (its plot, when it has one, is
    ``evaluation.png`` beside the card: :func:`merge_engine.evaluate.write_evaluation_plot`)."""
    hub = (hub_url or DEFAULT_HUB).rstrip("/")
    rows = model_rows(plan)
    _, license_note = _license(plan)
    title = repo_id.split("/")[-1] if repo_id else plan.recipe.name or "Merged model"
    donors = [r.name for r in rows if r.role == "donor"]
    base = next((r.name for r in rows if r.role == "base"), None)
    what = (f"a `{plan.recipe.merge_method}` merge of {', '.join(donors)}"
            + (f" onto {base}" if base else ""))
    meta = yaml.dump(front_matter(plan, seed, evaluation, title), Dumper=_Dumper,
                     sort_keys=False).rstrip()
    modules = parts(plan)
    intro = f"This model is {what}, made with mergebot."
    if modules:
        intro += (f" Each of its modules ({', '.join(part.name for part in modules)}) is merged "
                  "with its own models and parameters, shown below.")
    lines = ["---", meta, "---", "", f"# {title}", "", intro, "", "## Merge", ""]
    if modules:
        lines += _modules_table(rows, hub)
    else:
        lines += ["```text", formula(plan), "```", "", *_models_table(rows, hub)]
    parameters = recipe_parameters(plan)
    if parameters:
        lines += ["", f"Recipe-wide parameters: {_params_text(parameters)}."]
    if license_note:
        lines += ["", license_note]
    if plan.warnings:
        lines += ["", "Warnings from the merge:", ""] + [f"- {w}" for w in plan.warnings]
    if plan.recipe.slices is not None:
        lines += ["", *_slices_table(plan, hub)]
    for part in modules:
        lines += ["", *_module_section(part, hub)]
    if checks is not None:
        lines += ["", *_checks_section(checks)]
    if evaluation is not None:
        lines += ["", *evaluation_section(evaluation, hub)]
    seed_flag = f" --random-seed {seed}" if seed is not None else ""
    lines += [
        "", "## Recipe", "", "```yaml", plan.recipe.text.rstrip(), "```", "",
        "## Reproduce", "",
        "With every source pinned to the revision merged above:", "",
        "```yaml", pinned_recipe(plan).rstrip(), "```", "",
        "```bash", f"merge-engine run recipe.yml ./merged{seed_flag}", "```", "",
        "## Use", "", "```python",
        *_use_snippet(plan, repo_id or "path/to/this/model", tokenizer),
        "```",
    ]
    if provenance:
        lines += ["", "## Provenance", "", provenance]
    return "\n".join(lines) + "\n"
