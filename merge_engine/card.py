"""The model card (README.md) of a merged model, generated from the plan and the result.

Front matter follows the Hub's model-card metadata (``base_model`` list, ``base_model_relation:
merge``, ``tags``, ``library_name``, ``pipeline_tag``, ``license``) plus a machine-readable
``merge`` block; the body says what was merged, with which weights and exact revisions.
"""

from __future__ import annotations

import re

import yaml

from . import __version__
from .plan import Plan
from .summary import ModelRow, formula, model_rows

DEFAULT_HUB = "https://huggingface.co"


def _license(plan: Plan) -> tuple[str | None, str | None]:
    """(license for the front matter, a sentence when the sources disagree)."""
    found = {s.name: s.card_data.get("license") for s in plan.sources}
    values = {v for v in found.values() if v}
    if not values:
        return None, None
    if len(values) == 1 and all(found.values()):
        return values.pop(), None
    named = ", ".join(f"{n}: {v or 'unknown'}" for n, v in found.items())
    return "other", f"The sources have different licenses ({named}); check each before use."


def _pipeline_tag(plan: Plan) -> str | None:
    reference = plan.sources[0]
    if reference.card_data.get("pipeline_tag"):
        return reference.card_data["pipeline_tag"]
    arch = (reference.config.get("architectures") or [""])[0]
    return "text-generation" if arch.endswith("ForCausalLM") else None


def _lora_entry(row: ModelRow) -> dict:
    """The adapter of a ``model+adapter`` row, for the ``merge`` block (``name`` is the
    combined reference, ``revision`` the base model's)."""
    if row.adapter is None:
        return {}
    return {"lora": {"model": row.adapter, "revision": row.adapter_revision}}


def _linked(name: str, revision: str | None, hub: str) -> tuple[str, str]:
    """(model, revision) cells of the models table for one repo or directory."""
    if revision is None:
        return name, "local files"
    return f"[{name}]({hub}/{name})", f"[`{revision}`]({hub}/{name}/commit/{revision})"


def front_matter(plan: Plan, seed: int | None) -> dict:
    """The card's YAML metadata."""
    rows = model_rows(plan)
    license_id, _ = _license(plan)
    names = [n for r in rows for n in (r.model or r.name, r.adapter) if n]
    meta: dict = {"base_model": list(dict.fromkeys(names)), "base_model_relation": "merge"}
    if license_id:
        meta["license"] = license_id
    meta["tags"] = ["merge", "mergekit", "mergebot", plan.recipe.merge_method]
    meta["library_name"] = "transformers"
    tag = _pipeline_tag(plan)
    if tag:
        meta["pipeline_tag"] = tag
    block = {"method": plan.recipe.merge_method, "engine": f"mergebot {__version__}"}
    base = [r for r in rows if r.role == "base"]
    if base:
        block["base_model"] = {"model": base[0].name, "revision": base[0].revision,
                               **_lora_entry(base[0])}
    block["models"] = [{"model": r.name, "revision": r.revision, **_lora_entry(r),
                        "parameters": r.values}
                       for r in rows if r.role == "donor"]
    if seed is not None:
        block["random_seed"] = seed
    meta["merge"] = block
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


def render_card(plan: Plan, *, seed: int | None = None, hub_url: str | None = None,
                provenance: str | None = None, repo_id: str | None = None) -> str:
    """The whole README.md."""
    hub = (hub_url or DEFAULT_HUB).rstrip("/")
    rows = model_rows(plan)
    _, license_note = _license(plan)
    title = repo_id.split("/")[-1] if repo_id else plan.recipe.name or "Merged model"
    donors = [r.name for r in rows if r.role == "donor"]
    base = next((r.name for r in rows if r.role == "base"), None)
    what = (f"a `{plan.recipe.merge_method}` merge of {', '.join(donors)}"
            + (f" onto {base}" if base else ""))
    lines = [
        "---", yaml.safe_dump(front_matter(plan, seed), sort_keys=False).rstrip(), "---", "",
        f"# {title}", "", f"This model is {what}, made with mergebot.", "",
        "## Merge", "", "```text", formula(plan), "```", "",
        "| role | model | revision | weight (alpha) | other parameters |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        model, rev = _linked(r.model or r.name, r.revision, hub)
        if r.adapter is not None:
            lora_model, lora_rev = _linked(r.adapter, r.adapter_revision, hub)
            model, rev = f"{model} + LoRA {lora_model}", f"{rev} + {lora_rev}"
        others = ", ".join(f"{k}: {v}" for k, v in r.others.items()) or "-"
        lines.append(f"| {r.role} | {model} | {rev} | {r.weight or '-'} | {others} |")
    if license_note:
        lines += ["", license_note]
    if plan.warnings:
        lines += ["", "Warnings from the merge:", ""] + [f"- {w}" for w in plan.warnings]
    seed_flag = f" --random-seed {seed}" if seed is not None else ""
    lines += [
        "", "## Recipe", "", "```yaml", plan.recipe.text.rstrip(), "```", "",
        "## Reproduce", "",
        "With every source pinned to the revision merged above:", "",
        "```yaml", pinned_recipe(plan).rstrip(), "```", "",
        "```bash", f"merge-engine run recipe.yml ./merged{seed_flag}", "```", "",
        "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model_id = "{repo_id or "path/to/this/model"}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        'model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")',
        "```",
    ]
    if provenance:
        lines += ["", "## Provenance", "", provenance]
    return "\n".join(lines) + "\n"
