"""Sweeps: one recipe merged at several values of one or two of its parameters, each
variant evaluated, the best published.

A sweep row holds the recipe, its axes, the evaluation sets, the metric (a set's name:
lower perplexity is better) and the publish mode; a variant row per combination holds the
variant's own recipe (:func:`merge_engine.expand_sweep`) and, once evaluated, its scores.
Its jobs (:func:`bot.queue.enqueue_sweep`) are ordinary jobs of the target repo's recipe,
one per variant, then one that publishes (queued by :mod:`bot.queue` when no variant is
left to run):
- ``best`` (default): a variant's job merges, checks and evaluates the variant on the
  worker's disk and keeps only its scores (the variants run side by side:
  :mod:`bot.queue`); the publishing job merges the best variant
  again (the merge is deterministic: same recipe, same sources at the same SHAs, same
  seed) and publishes it with the whole table on its card. Merging the best again costs
  one merge but keeps nothing on a worker's disk between jobs, so any worker of a fleet
  can run any of the sweep's jobs.
- ``branches``: each variant's job publishes its variant to a branch of the target repo
  named after its values (:func:`branch_name`), with its own row on the card; the
  publishing job puts the best on ``main`` with the whole table.
A variant that fails leaves its row marked failed; the sweep fails only when all do.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from merge_engine import EvalRow, EvalScore, EvalSet, EvalTable

from .store import Job, Store, job_from_row

MODES = ("best", "branches")
RUNNING, PUBLISHING, SUCCEEDED, FAILED = "running", "publishing", "succeeded", "failed"


@dataclass(frozen=True)
class SweepVariant:
    index: int
    label: str
    values: dict[str, object]
    yaml: str
    scores: dict[str, EvalScore] | None


@dataclass(frozen=True)
class Sweep:
    id: int
    recipe_id: int
    owner: str
    yaml: str
    axes: dict[str, list]
    evaluation: list[EvalSet]
    metric: str
    publish: str
    status: str
    sources: list[EvalRow]
    best: int | None
    commit_sha: str | None
    error: str | None
    created_at: float
    finished_at: float | None
    variants: tuple[SweepVariant, ...]

    def table(self, jobs: dict[int, Job] | None = None) -> EvalTable:
        """The results so far: a row per variant (a note says why one has no scores),
        then the sources; the chosen variant, once picked, is ``chosen``."""
        rows = []
        for v in self.variants:
            job = (jobs or {}).get(v.index)
            note = None
            if v.scores is None:
                note = (f"failed: {job.error}" if job is not None and job.status == "failed"
                        else job.status if job is not None else "queued")
            rows.append(EvalRow(label=v.label, kind="variant", values=dict(v.values),
                                scores=dict(v.scores or {}), note=note,
                                revision=job.commit_sha if job is not None else None))
        chosen = self.variants[self.best].label if self.best is not None else None
        return EvalTable(sets=list(self.evaluation), rows=rows + list(self.sources),
                         metric=self.metric, chosen=chosen)

    def pick_best(self) -> SweepVariant | None:
        """The scored variant with the lowest perplexity on the metric (first on ties)."""
        scored = [v for v in self.variants if v.scores and self.metric in v.scores]
        return min(scored, key=lambda v: v.scores[self.metric].perplexity, default=None)


def branch_name(variant: SweepVariant) -> str:
    """The branch of ``branches`` mode: the variant's values, e.g. ``weight-0.3``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", variant.label.replace("=", "-"))
    name = re.sub(r"\.{2,}|-{2,}", "-", name).strip("-.")
    return f"sweep-{name}"[:120] if name else f"sweep-variant-{variant.index}"


def _scores(raw: str | None) -> dict[str, EvalScore] | None:
    return None if raw is None else {k: EvalScore(**v) for k, v in json.loads(raw).items()}


def _dump_scores(scores: dict[str, EvalScore]) -> str:
    return json.dumps({k: s.to_json() for k, s in scores.items()}, sort_keys=True)


def add_sweep(db, *, recipe_id: int, owner: str, yaml: str, axes: dict[str, list],
              evaluation: list[EvalSet], metric: str, publish: str, variants: list) -> int:
    """Insert a sweep and its variants (``merge_engine.Variant`` list); its id."""
    table = EvalTable(sets=list(evaluation))
    row = db.execute(
        "INSERT INTO sweeps (recipe_id, owner, yaml, axes, evaluation, metric, publish, status,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (recipe_id, owner, yaml, json.dumps(axes), json.dumps(table.to_json()["sets"]), metric,
         publish, RUNNING, time.time()),
    ).fetchone()
    sweep_id = int(row["id"])
    db.executemany(
        "INSERT INTO sweep_variants (sweep_id, idx, label, vals, yaml) VALUES (?, ?, ?, ?, ?)",
        [(sweep_id, i, v.label, json.dumps(v.values), v.text) for i, v in enumerate(variants)],
    )
    return sweep_id


def get_sweep(store: Store, sweep_id: int) -> Sweep | None:
    with store.read() as db:
        row = db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            return None
        variants = db.execute("SELECT * FROM sweep_variants WHERE sweep_id = ? ORDER BY idx",
                              (sweep_id,)).fetchall()
    sets = EvalTable.from_json({"sets": json.loads(row["evaluation"]), "rows": []}).sets
    return Sweep(
        id=row["id"], recipe_id=row["recipe_id"], owner=row["owner"], yaml=row["yaml"],
        axes=json.loads(row["axes"]), evaluation=sets, metric=row["metric"],
        publish=row["publish"], status=row["status"],
        sources=[EvalRow.from_json(r) for r in json.loads(row["sources"] or "[]")],
        best=row["best"], commit_sha=row["commit_sha"], error=row["error"],
        created_at=row["created_at"], finished_at=row["finished_at"],
        variants=tuple(SweepVariant(v["idx"], v["label"], json.loads(v["vals"]), v["yaml"],
                                    _scores(v["scores"])) for v in variants),
    )


def sweep_jobs(store: Store, sweep_id: int) -> tuple[dict[int, Job], Job | None]:
    """The latest job of each variant (by index) and the publishing job, if queued."""
    with store.read() as db:
        rows = db.execute("SELECT * FROM jobs WHERE sweep_id = ? ORDER BY id",
                          (sweep_id,)).fetchall()
    jobs = [job_from_row(r) for r in rows]
    variants = {j.variant: j for j in jobs if j.variant is not None}
    publishing = next((j for j in reversed(jobs) if j.variant is None), None)
    return variants, publishing


def record_variant(store: Store, sweep_id: int, index: int, scores: dict[str, EvalScore],
                   sources: list[EvalRow]) -> None:
    """A variant's scores; the sources' rows too, the first time a variant brings them."""
    with store.write() as db:
        db.execute("UPDATE sweep_variants SET scores = ? WHERE sweep_id = ? AND idx = ?",
                   (_dump_scores(scores), sweep_id, index))
        if sources:
            db.execute("UPDATE sweeps SET sources = ? WHERE id = ? AND sources IS NULL",
                       (json.dumps([r.to_json() for r in sources]), sweep_id))


def record_best(store: Store, sweep_id: int, index: int) -> None:
    with store.write() as db:
        db.execute("UPDATE sweeps SET best = ? WHERE id = ?", (index, sweep_id))


def to_api(sweep: Sweep, repo_id: str, variant_jobs: dict[int, Job],
           publishing: Job | None) -> dict:
    """The whole sweep as the API shows it."""
    table = sweep.table(variant_jobs)
    variants = []
    for v in sweep.variants:
        job = variant_jobs.get(v.index)
        variants.append({
            "index": v.index, "label": v.label, "values": v.values, "recipe": v.yaml,
            "job_id": job.id if job else None, "status": job.status if job else "queued",
            "stage": job.stage if job else None, "progress": job.progress if job else None,
            "error": job.error if job else None,
            "branch": branch_name(v) if sweep.publish == "branches" and job is not None
            and job.status == "succeeded" else None,
            "commit": job.commit_sha if job else None,
            "scores": {k: s.to_json() for k, s in (v.scores or {}).items()},
        })
    best = sweep.variants[sweep.best].label if sweep.best is not None else None
    return {
        "id": sweep.id, "recipe_id": sweep.recipe_id, "repo_id": repo_id, "owner": sweep.owner,
        "status": sweep.status, "publish": sweep.publish, "metric": sweep.metric,
        "axes": sweep.axes, "recipe": sweep.yaml, "variants": variants, "best": best,
        "publish_job_id": publishing.id if publishing else None,
        "commit": sweep.commit_sha, "error": sweep.error, "table": table.to_json(),
        "created_at": sweep.created_at, "finished_at": sweep.finished_at,
    }
