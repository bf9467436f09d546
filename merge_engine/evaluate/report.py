"""An evaluation table as the model card shows it: a Markdown section (what each set is,
a row per model with its swept values and its NLL and perplexity on every set, the
published row marked) and ``model-index`` results for the front matter, in the form the
Hub reads (``huggingface_hub``'s ``EvalResult``s)."""

from __future__ import annotations

from merge_engine.evaluate.plot import EVALUATION_PLOT, plottable
from merge_engine.evaluate.sets import EvalSet
from merge_engine.evaluate.table import EvalRow, EvalTable


def _value(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def published_row(table: EvalTable) -> EvalRow | None:
    """The row the card is about: the chosen one, else the single merge's."""
    for row in table.rows:
        if (table.chosen is not None and row.label == table.chosen) or (
                table.chosen is None and row.kind == "merge"):
            return row
    return None


def _set_line(s: EvalSet, table: EvalTable, hub: str) -> str:
    revision = next((r.scores[s.name].revision for r in table.rows
                     if s.name in r.scores and r.scores[s.name].revision), s.revision)
    scored = next((r.scores[s.name] for r in table.rows if s.name in r.scores), None)
    size = f"{scored.samples} texts, {scored.tokens} tokens" if scored else f"{s.samples} texts"
    if s.dataset is None:
        return f"- **{s.name}**: {len(s.texts)} texts pasted in ({size} scored)"
    where = f"[{s.dataset}]({hub}/datasets/{s.dataset}"
    where += f"/tree/{revision})" if revision else ")"
    parts = [f"config `{s.config}`"] * bool(s.config) + [f"split `{s.split}`",
                                                         f"column `{s.column}`"]
    at = f" at `{revision}`" if revision else ""
    return f"- **{s.name}**: {where}{at}, {', '.join(parts)} ({size})"


def _label(row: EvalRow, hub: str) -> str:
    if row.kind == "source" and row.revision:
        return f"[{row.label}]({hub}/{row.label}/tree/{row.revision})"
    return "this merge" if row.kind == "merge" else row.label


def evaluation_section(table: EvalTable, hub: str) -> list[str]:
    """The card's "Evaluation" section."""
    swept = table.swept()
    chosen = published_row(table)
    lines = ["## Evaluation", "",
             "Mean token negative log-likelihood (NLL, nats per predicted token) and perplexity "
             "(exp NLL; lower is better) of each model, with its own tokenizer, on:", ""]
    lines += [_set_line(s, table, hub) for s in table.sets]
    header = ["model", "kind", *swept]
    for s in table.sets:
        header += [f"{s.name} NLL", f"{s.name} perplexity"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.rows:
        label = _label(row, hub)
        if row is chosen and table.chosen is not None:
            label = f"**{label}** (published)"
        cells = [label, row.kind, *(_value(row.values[k]) if k in row.values else "-"
                                    for k in swept)]
        for s in table.sets:
            score = row.scores.get(s.name)
            cells += ([f"{score.nll:.4f}", f"{score.perplexity:.3f}"] if score
                      else [row.note or "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    if table.metric is not None:
        lines += ["", f"The published model is the best by perplexity on {table.metric}."]
    if plottable(table):
        lines += ["", f"![perplexity against {swept[0]}]({EVALUATION_PLOT})"]
    return lines


def model_index(table: EvalTable, model_name: str) -> list[dict] | None:
    """``model-index`` of the published row: its perplexity on each set read from a Hub
    dataset (pasted texts are no dataset the Hub could name); None when there is none."""
    row = published_row(table)
    if row is None:
        return None
    results = []
    for s in table.sets:
        score = row.scores.get(s.name)
        if s.dataset is None or score is None:
            continue
        dataset = {"type": s.dataset, "name": s.name, "split": s.split}
        if s.config:
            dataset["config"] = s.config
        if score.revision:
            dataset["revision"] = score.revision
        results.append({
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": dataset,
            "metrics": [{"type": "perplexity", "value": round(score.perplexity, 4),
                         "name": "Perplexity"}],
        })
    return [{"name": model_name, "results": results}] if results else None
