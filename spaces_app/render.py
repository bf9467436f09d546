"""Markdown for the UI: preflight results, recipe errors at their YAML line, jobs, cards.

Pure functions from the API's JSON (and the recipe text) to strings; no I/O.
"""

from __future__ import annotations

import re

FINISHED = ("succeeded", "failed", "skipped")
_STATUS_MARK = {"queued": "…", "running": "●", "succeeded": "✓", "failed": "✗", "skipped": "–"}
"""Plain symbols that common fonts have (no emoji font needed)."""


def size(nbytes: int | None) -> str:
    """``1.2 GB`` style (powers of 1000, as the Hub shows sizes)."""
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def short_sha(sha: str | None) -> str:
    return sha[:12] if sha else "local"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|~&#"})


def text_md(text: str) -> str:
    """``text`` shown as itself in Markdown: every character that Markdown or HTML would
    read (``<stream end>``, ``*``, ``_``, ``|``...) backslash-escaped."""
    return str(text).translate(_MD_SPECIAL)


def message_md(message: str) -> str:
    """A one-line failure (not about a place in the recipe), whole, as text."""
    return f"### ✗ {text_md(message)}"


def errors_md(errors: list[dict], recipe_text: str) -> str:
    """Each error as ``loc (line N): msg``, the message whole and as text, with the
    recipe lines around it."""
    lines = recipe_text.splitlines()
    parts = ["### ✗ The recipe cannot be merged"]
    for error in errors:
        loc, msg, line = error.get("loc") or "", error.get("msg") or "", error.get("line")
        where = f"`{loc}`" if loc else "recipe"
        if line:
            where += f" (line {line})"
        parts.append(f"- **{where}**: {text_md(msg)}")
        if line and 0 < line <= len(lines):
            lo, hi = max(line - 2, 1), min(line + 1, len(lines))
            snippet = [
                f"{'>' if n == line else ' '} {n:3d} | {lines[n - 1]}" for n in range(lo, hi + 1)
            ]
            parts.append("```\n" + "\n".join(snippet) + "\n```")
    return "\n\n".join(parts)


def models_table(models: list[dict], hub_url: str) -> str:
    """A Markdown table of the models (role, name, revision link, weight, other
    parameters, and license and size where the rows have them); empty columns left out."""
    table = []
    for m in models:
        revision = m.get("revision")
        rev = "local"
        if revision:
            rev = f"[`{short_sha(revision)}`]({hub_url}/{m['name']}/tree/{revision})"
        others = ", ".join(f"{k}={v}" for k, v in (m.get("others") or {}).items())
        table.append(
            {
                "role": m["role"],
                "model": m["name"],
                "revision": rev,
                "weight": m.get("weight") or "",
                "other parameters": others,
                "license": (m.get("license") or "unknown") if "license" in m else "",
                "size": size(m["bytes"]) if "bytes" in m else "",
            }
        )
    columns = [c for c in table[0] if any(row[c] for row in table)] if table else []
    rows = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    rows += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    return "\n".join(rows)


def _parameters_md(parameters: dict, label: str) -> str:
    shown = ", ".join(f"`{k}` = {v}" for k, v in parameters.items())
    return f"**{label}:** {shown}"


def experts_md(moe: dict) -> str:
    """An MoE recipe's routing and one line per expert: its model and prompts."""
    lines = [f"**Experts** ({moe['architecture']}, `gate_mode: {moe['gate_mode']}`, "
             f"{moe['experts_per_token']} per token):", ""]
    entries = [(str(i), e) for i, e in enumerate(moe["experts"])]
    for label, e in entries + [("shared", e) for e in moe.get("shared_experts") or []]:
        prompts = ", ".join(f"+`{p}`" for p in e["positive_prompts"])
        prompts += "".join(f", -`{p}`" for p in e["negative_prompts"])
        lines.append(f"- {label}: `{e['model']}` {prompts}".rstrip())
    return "\n".join(lines)


def summary_md(summary: dict, hub_url: str) -> str:
    """The formula with its real weights, a table of models, output size and warnings;
    for a multi-part recipe, then each module's formula, models and parameters."""
    parts = [
        f"### ✓ Ready to merge ({summary['method']})",
        f"```\n{summary['formula']}\n```",
        models_table(summary["models"], hub_url),
    ]
    if summary.get("parameters"):
        parts.append(_parameters_md(summary["parameters"], "Parameters"))
    parts += [
        f"**Output:** {size(summary.get('output_bytes'))}, "
        f"{summary.get('parameter_count', 0):,} parameters.",
    ]
    moe = summary.get("moe")
    if moe:
        parts.append(experts_md(moe))
    for module in summary.get("modules") or []:
        parts += [f"#### Module `{module['name']}` "
                  f"({module.get('parameter_count', 0):,} parameters)",
                  models_table(module["models"], hub_url)]
        if module.get("parameters"):
            parts.append(_parameters_md(module["parameters"], "Module parameters"))
    backend = summary.get("backend") or {}
    if backend.get("flavor"):
        parts.append(
            f"**Runs on:** Hugging Face Jobs, `{backend['flavor']}`, about "
            f"{backend['estimated_seconds'] / 60:.0f} min, estimated "
            f"${backend['estimated_cost_usd']:.2f}."
        )
    warnings = summary.get("warnings") or []
    if warnings:
        parts.append("**Warnings**\n\n" + "\n".join(f"- ⚠ {w}" for w in warnings))
    return "\n\n".join(parts)


def progress_bar(fraction: float | None, width: int = 20) -> str:
    fraction = min(max(fraction or 0.0, 0.0), 1.0)
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled) + f" {fraction * 100:.0f} %"


CHECK_PREFIXES = ("check passed: ", "check skipped: ", "perplexity ", "greedy generation: ")
"""Log lines of the bot's check stage (merge_engine's ``CheckReport.lines``)."""


def checks_md(log: list[str] | str) -> str:
    """The check stage's lines of a job log as a "Checks" block ("" when there are none)."""
    lines = log if isinstance(log, list) else str(log).splitlines()
    found = [line for line in lines if line.startswith(CHECK_PREFIXES)]
    if not found:
        return ""
    body = "\n".join(line.replace("`", "'") for line in found)  # shown as text
    return f"\n\n#### Checks\n\n```text\n{body}\n```"


def job_md(job: dict, hub_url: str) -> str:
    """A job's status, stage and progress, sources, and the published commit or error."""
    status = job.get("status", "?")
    mark = _STATUS_MARK.get(status, "")
    repo = job.get("repo_id", "")
    parts = [f"### {mark} Job {job.get('id')} · {status} · `{repo}`"]
    if status == "running":
        bar = progress_bar(job.get("progress"))
        parts.append(f"**Stage:** {job.get('stage') or 'starting'}  \n`{bar}`")
    elif status == "queued":
        parts.append("Waiting for a worker.")
    parts.append(
        f"Trigger: {job.get('trigger', '')} · attempts: {job.get('attempts', 0)}"
        + (f" · {job['triggers']} triggers absorbed" if (job.get("triggers") or 1) > 1 else "")
    )
    shas = job.get("source_shas") or {}
    if shas:
        parts.append(
            "Sources: " + ", ".join(f"{name}@`{short_sha(sha)}`" for name, sha in shas.items())
        )
    commit = job.get("commit")
    if status == "succeeded" and commit:
        parts.append(
            f"**Published:** [{repo}]({hub_url}/{repo}) at commit "
            f"[`{short_sha(commit)}`]({hub_url}/{repo}/commit/{commit})"
        )
    if status == "skipped" and commit:
        parts.append(
            "**Skipped:** the recipe and its sources' revisions are unchanged since commit "
            f"[`{short_sha(commit)}`]({hub_url}/{repo}/commit/{commit}) of "
            f"[{repo}]({hub_url}/{repo}); nothing new to publish. Tick *force a new merge* "
            "and submit again to merge anyway."
        )
    elif status == "skipped":
        parts.append("**Skipped:** nothing to merge (the recipe was deleted).")
    if job.get("error"):
        parts.append(f"**Error:** {text_md(job['error'])}")
    run = job.get("run") or {}
    if run.get("hf_job_id"):
        parts.append(f"**Hugging Face Job:** [`{run['hf_job_id']}`]({run.get('hf_job_url', '')})"
                     f" on `{run.get('flavor')}`")
        if run.get("hf_job_log"):
            parts.append("```\n" + "\n".join(run["hf_job_log"][-10:]) + "\n```")
    return "\n\n".join(parts)


_SHA_LINK = re.compile(r"\[`([0-9a-f]{12})[0-9a-f]{28}`\]\(")


def card_md(readme: str) -> str:
    """A model card for ``gr.Markdown``: its body, then its YAML front matter as code.
    Links shown as a full commit SHA show its first 12 characters (the link keeps all 40),
    so the models table fits a half-width column."""
    readme = _SHA_LINK.sub(r"[`\1`](", readme)
    if readme.startswith("---\n"):
        end = readme.find("\n---", 4)
        if end != -1:
            front, body = readme[4:end], readme[end + 4 :].lstrip("\n")
            return f"{body.rstrip()}\n\n**Card metadata**\n\n```yaml\n{front}\n```\n"
    return readme


REMERGE = "↻ remerge"
"""The history's action cell: selecting it remerges that row's recipe."""


def history_rows(recipes: list[dict]) -> list[list]:
    """One table row per recipe: id, target repo, method, watch, private, last commit,
    breakage, and the remerge action."""
    rows = []
    for r in recipes:
        method = _method(r.get("recipe", ""))
        rows.append(
            [
                r["id"],
                r["repo_id"],
                method,
                "yes" if r.get("watch") else "no",
                "yes" if r.get("private") else "no",
                short_sha(r.get("last_commit")) if r.get("last_commit") else "",
                r.get("broken") or "",
                REMERGE,
            ]
        )
    return rows


HISTORY_HEADERS = [
    "recipe", "repo", "method", "watch", "private", "last commit", "broken", "action"
]


def _method(recipe_text: str) -> str:
    """The recipe's ``merge_method``; ``moe`` for an MoE recipe (``experts:``)."""
    for line in recipe_text.splitlines():
        if line.strip().startswith("merge_method:"):
            return line.split(":", 1)[1].split("#", 1)[0].strip()
    return "moe" if any(line.startswith("experts:") for line in recipe_text.splitlines()) else ""
