"""Workers: claim a job, merge and publish it, record the outcome; and Hub webhook upkeep.

Contracts of :meth:`Worker.process`:
- While a job runs, a heartbeat thread extends its lease every ``lease/4`` seconds and
  records the stage and progress. A worker killed at any point loses nothing: its lease
  expires, another worker claims the job and starts it again, and ``job_key="job-N"``
  makes ``merge_and_publish`` reuse a commit the dead attempt already made, so the target
  repo gets exactly one commit per job.
- Unless the job is forced, a recipe whose sources' current SHAs equal those of its last
  good merge ends ``skipped`` without downloading anything; the job records the commit
  that already holds this merge, and its log says why.
- Recipe or source problems (merge_engine ``InputError``) fail the job at once; a
  ``SourceError`` also marks the recipe broken with the reason. Transient failures are
  retried with exponential backoff until ``max_attempts``; anything else fails the job
  with one sentence (the traceback goes to the process log, not to the user).
- Each attempt works in its own dir (:mod:`bot.workdirs`), removed when the attempt ends,
  whatever the outcome. A killed worker's dir is removed by the job's next attempt as it
  starts, or, when no attempt is left, by the worker that gives the job up before its
  next claim; a worker also sweeps the dirs no live lease owns when it starts.
- A multi-stage recipe runs all its stages in the job (:mod:`bot.publish`); intermediates
  are kept in the stage cache (:mod:`bot.stage_cache`), so a job started by a source's
  webhook merges again only the stages downstream of that source, and its log says, a
  line per stage, which were merged and which reused.
- Where the merge runs is the backend's business (:mod:`bot.backends`: in this process,
  or a Hugging Face Job); the worker keeps the lease, the outcome and the retries. A
  recipe deleted while its job runs cancels it (the job ends ``skipped``), unless the
  commit is already being made.
- A sweep's job (:mod:`bot.sweeps`) merges its variant's recipe with the sweep's seed and
  its evaluation sets, and stores the scores (in ``best`` mode it publishes nothing; in
  ``branches`` mode it commits to the variant's branch); the sweep's publishing job
  merges the best variant again and publishes it to ``main`` with the whole table, and
  the recipe's YAML becomes that variant's. Sweeps run on the local backend only.
- The job records its target repo before creating it; a later attempt that finds it
  treats it as its own. Between jobs a worker runs the due repo cleanups of jobs that
  ended without success (:mod:`bot.cleanup`): a repo such a job created is deleted if it
  holds nothing beyond its creation.

:class:`WebhookSync` makes the bot's Hub webhooks (those pointing at its public URL) match
the sources of live watched recipes: one webhook per source repo, created when missing,
deleted when no recipe needs it. It runs after submissions and periodically in workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from huggingface_hub import HfApi

from merge_engine import (
    AdapterOptions,
    CheckError,
    CheckOptions,
    InputError,
    SourceError,
    hub_refs_only,
)

from . import cleanup, queue, sweeps, workdirs
from .backends import Backend, Cancelled, Dispatch, LocalBackend, make_backend
from .database import open_store
from .errors import BotError, is_transient, public_message
from .publish import PublishRequest, PublishResult, merge_and_publish, resolve_revisions
from .settings import Settings
from .stage_cache import StageDirCache
from .store import Job, Recipe, Store

log = logging.getLogger(__name__)

Publish = Callable[..., PublishResult]
Resolve = Callable[..., dict]


def worker_name() -> str:
    """A name unique to this thread of this process on this host."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """Heartbeats a job's lease from a thread; ``report`` is the merge's progress callback;
    ``cancelled`` is set once the job's recipe is seen deleted."""

    def __init__(self, settings: Settings, store: Store, job: Job, worker: str) -> None:
        self._settings, self._store, self._job, self._worker = settings, store, job, worker
        self._stage: str | None = None
        self._progress: float | None = None
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-job-{job.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self._store.append_log(self._job.id, f"stage: {stage}")
        self._stage, self._progress = stage, round(float(fraction), 4)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.heartbeat_seconds):
            try:
                held = queue.heartbeat(
                    self._store,
                    self._job.id,
                    self._worker,
                    lease=self._settings.lease_seconds,
                    stage=self._stage,
                    progress=self._progress,
                )
            except Exception:  # a locked or busy database must not kill the heartbeat
                log.exception("heartbeat of job %s failed", self._job.id)
                continue
            if not held:
                self.lost.set()
                return
            try:
                recipe = self._store.get_recipe(self._job.recipe_id)
            except Exception:  # checked again at the next beat
                log.exception("job %s: reading its recipe failed", self._job.id)
                continue
            if recipe is None or recipe.deleted:
                self.cancelled.set()


@dataclass
class Worker:
    """Runs jobs from the queue on ``backend`` (default: the one the settings name);
    ``publish`` (the local backend's merge) and ``resolve`` are seams for tests."""

    settings: Settings
    store: Store
    name: str = field(default_factory=worker_name)
    publish: Publish = merge_and_publish
    resolve: Resolve = resolve_revisions
    webhooks: WebhookSync | None = None
    backend: Backend | None = None

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = (LocalBackend(self.publish) if self.settings.backend == "local"
                            else make_backend(self.settings, self.store))

    def run(self, stop: threading.Event) -> None:
        """Sweep orphaned work dirs, then process jobs until ``stop`` is set (a running
        job is finished first)."""
        log.info("worker %s started", self.name)
        try:
            workdirs.sweep(self.settings.work_root, self.store)
        except Exception:  # a locked database or a busy disk must not stop the worker
            log.exception("worker %s: sweeping work dirs failed", self.name)
        next_sync = 0.0
        while not stop.is_set():
            if self.webhooks is not None and time.monotonic() >= next_sync:
                self.webhooks.run()
                next_sync = time.monotonic() + self.settings.webhook_sync_seconds
            try:
                job = self.run_once()
            except Exception:  # the loop survives a broken database moment
                log.exception("worker %s: claiming failed", self.name)
                job = None
            if job is None:
                stop.wait(self.settings.poll_seconds)
        log.info("worker %s stopped", self.name)

    def run_once(self) -> Job | None:
        """Give up on jobs out of attempts (removing their work dirs), claim and process
        one job, then run the due repo cleanups; the claimed job (before processing), or
        None."""
        for job_id in queue.give_up(self.store, max_attempts=self.settings.max_attempts):
            workdirs.remove(self.settings.work_root, job_id)
        job = queue.claim(
            self.store,
            self.name,
            lease=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
        )
        if job is not None:
            self.process(job)
        cleanup.clean_repos(self.settings, self.store)
        return job

    def process(self, job: Job) -> None:
        workdirs.remove(self.settings.work_root, job.id, up_to=job.attempts)  # dead attempts'
        recipe = self.store.get_recipe(job.recipe_id)
        if recipe is None or recipe.deleted:
            self.store.append_log(job.id, "the recipe was deleted")
            self._finish(job, queue.SKIPPED)
            return
        work_dir = workdirs.path(self.settings.work_root, job)
        try:
            work_dir.mkdir(parents=True)
            with LeaseKeeper(self.settings, self.store, job, self.name) as lease:
                self._run_job(job, recipe, work_dir, lease)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _run_job(self, job: Job, recipe: Recipe, work_dir: Path, lease: LeaseKeeper) -> None:
        """Merge and publish under ``hub_refs_only`` (a bot recipe names Hub repos only, never
        this machine's folders); errors are recorded without server paths."""
        settings = self.settings
        try:
            with hub_refs_only():
                result = self._merge(job, recipe, work_dir, lease)
        except Cancelled as exc:
            self.store.append_log(job.id, str(exc))
            self._finish(job, queue.SKIPPED)
        except InputError as exc:
            if isinstance(exc, CheckError) and exc.report is not None:
                self._log_checks(job, exc.report)
            message = public_message(str(exc))
            self._finish(job, queue.FAILED, error=message,
                         broken=message if isinstance(exc, SourceError) else None)
        except Exception as exc:
            message = public_message(str(exc) or type(exc).__name__)
            if is_transient(exc) and job.attempts < settings.max_attempts:
                delay = settings.backoff(job.attempts)
                if not queue.retry_later(self.store, job.id, self.name, error=message, delay=delay):
                    log.warning("job %s: lease lost before it could be retried", job.id)
                return
            if not is_transient(exc):
                log.exception("job %s failed", job.id)
            self._finish(job, queue.FAILED, error=message)
        else:
            if result is None:
                return
            if lease.lost.is_set():
                self.store.append_log(job.id, f"{self.name}: lease was lost during the merge")
            if result.checks is not None:
                self._log_checks(job, result.checks)
            for line in result.stages:
                self.store.append_log(job.id, line)
            if result.adapter_summary is not None:
                self.store.append_log(job.id, result.adapter_summary)
            variant = job.sweep_id is not None and job.variant is not None
            if variant:
                self._record_variant(job, result)
            elif result.evaluation is not None and job.sweep_id is None:
                self._log_scores(job, result.evaluation)
            if result.commit_sha is None:
                self.store.append_log(job.id, "merged and evaluated; the sweep publishes its "
                                              "best variant when every variant is done")
            else:
                verb = "reused existing commit" if result.reused_commit else "committed"
                if result.adapter_repo not in (None, result.repo_id):
                    self.store.append_log(job.id, f"{verb} the adapter {result.adapter_commit} "
                                                  f"to {result.adapter_repo}")
                what = " (the adapter only)" if result.adapter_repo == result.repo_id else ""
                where = f"{result.repo_id}@{result.revision}" if result.revision else (
                    result.repo_id)
                self.store.append_log(job.id, f"{verb} {result.commit_sha} to {where}" + what)
            self._finish(
                job,
                queue.SUCCEEDED,
                source_shas=result.revisions,
                commit=result.commit_sha,
                success=not variant,
                recipe_yaml=self._published_variant(job),
            )

    def _merge(self, job: Job, recipe: Recipe, work_dir: Path,
               lease: LeaseKeeper) -> PublishResult | None:
        """The published result, or None when the job was skipped (sources unchanged)."""
        settings = self.settings
        if not job.force and recipe.last_shas is not None:
            current = self.resolve(recipe.yaml, endpoint=settings.endpoint, token=settings.token)
            if current == recipe.last_shas:
                self.store.append_log(
                    job.id,
                    "skipped: the recipe and its sources' revisions are unchanged since "
                    f"commit {recipe.last_commit}; ask for a forced merge to merge anyway",
                )
                self._finish(job, queue.SKIPPED, source_shas=current, commit=recipe.last_commit)
                return None
        request = PublishRequest(
                recipe_text=recipe.yaml,
                repo_id=recipe.repo_id,
                token=settings.token or "",
                work_dir=work_dir,
                endpoint=settings.endpoint,
                private=recipe.private,
                trigger=_commit_title(job),
                provenance=_provenance(job, recipe),
                job_key=f"job-{job.id}",
                repo_created_earlier=job.created_repo == recipe.repo_id,
                before_create=lambda: self._record_created_repo(job, recipe.repo_id),
                device=settings.device,
                checks=CheckOptions(
                    perplexity_factor=settings.perplexity_factor,
                    allow_high_perplexity=recipe.allow_high_perplexity,
                    cache_dir=settings.home / "perplexities",
                ),
                publish=recipe.publish,
                adapter=(None if recipe.publish == "full"
                         else AdapterOptions(recipe.max_rank, recipe.sv_cutoff)),
                stage_cache=StageDirCache(settings.stage_cache_dir, settings.stage_cache_bytes),
                publish_intermediates=recipe.publish_intermediates,
                evaluate=tuple(recipe.evaluation),
                eval_cache_dir=settings.home / "evaluations",
            )
        if job.sweep_id is not None:
            request = self._sweep_request(job, request)
        dispatch = Dispatch(job.id, job.attempts, request, lease.cancelled.is_set)
        return self.backend.run(dispatch, lease.report)

    def _sweep_request(self, job: Job, request: PublishRequest) -> PublishRequest:
        """A sweep's job: its variant (evaluated; published to its branch in ``branches``
        mode), or the best variant with the whole table (the publishing job). Every job
        of a sweep merges with the same seed, so merging the best again gives the model
        its scores were measured on."""
        if self.backend.name != "local":
            raise BotError(f"sweeps run on the local backend (this bot's workers or a fleet "
                           f"of them), not on {self.backend.name}")
        sweep = sweeps.get_sweep(self.store, job.sweep_id)
        common = {"random_seed": sweep.id, "eval_cache_dir": self.settings.home / "evaluations"}
        if job.variant is not None:
            variant = sweep.variants[job.variant]
            branch = sweeps.branch_name(variant) if sweep.publish == "branches" else None
            return replace(request, recipe_text=variant.yaml, evaluate=tuple(sweep.evaluation),
                           commit=branch is not None, revision=branch,
                           trigger=f"Sweep {sweep.id}: {variant.label}", **common)
        best = sweep.pick_best()
        if best is None:
            raise BotError(f"sweep {sweep.id} has no variant scored on {sweep.metric!r}")
        sweeps.record_best(self.store, sweep.id, best.index)
        variant_jobs, _ = sweeps.sweep_jobs(self.store, sweep.id)
        table = replace(sweep, best=best.index).table(variant_jobs)
        self.store.append_log(job.id, f"best variant: {best.label} (perplexity "
                                      f"{best.scores[sweep.metric].perplexity:.4g} on "
                                      f"{sweep.metric})")
        return replace(request, recipe_text=best.yaml, evaluation=table, evaluate=(),
                       trigger=f"Sweep {sweep.id}: {best.label}, the best of "
                               f"{len(sweep.variants)} variants on {sweep.metric}", **common)

    def _published_variant(self, job: Job) -> str | None:
        """The YAML a sweep's publishing job published (its best variant), else None."""
        if job.sweep_id is None or job.variant is not None:
            return None
        sweep = sweeps.get_sweep(self.store, job.sweep_id)
        return sweep.variants[sweep.best].yaml if sweep.best is not None else None

    def _record_variant(self, job: Job, result: PublishResult) -> None:
        """Store a variant's scores (and the sources', the first time) and log them."""
        table = result.evaluation
        merged = next((r for r in table.rows if r.kind == "merge"), None) if table else None
        if merged is None:
            raise BotError(f"job {job.id}: the variant was merged but not evaluated")
        sources = [r for r in table.rows if r.kind == "source"]
        sweeps.record_variant(self.store, job.sweep_id, job.variant, merged.scores, sources)
        figures = ", ".join(f"perplexity {s.perplexity:.4g} on {name}"
                            for name, s in merged.scores.items())
        self.store.append_log(job.id, f"evaluated: {figures}")

    def _log_scores(self, job: Job, table) -> None:
        """An evaluated merge's scores, one log line per model and set."""
        for row in table.rows:
            model = "the merge" if row.kind == "merge" else row.label
            for name, score in row.scores.items():
                self.store.append_log(job.id, f"evaluated {model} on {name}: NLL "
                                              f"{score.nll:.4f}, perplexity {score.perplexity:.4g}")
            if row.note:
                self.store.append_log(job.id, f"not evaluated {model}: {row.note}")

    def _log_checks(self, job: Job, report) -> None:
        """The check stage's figures and sample generation, one log line each."""
        for line in report.lines():
            self.store.append_log(job.id, line)

    def _record_created_repo(self, job: Job, repo_id: str) -> None:
        if not queue.record_created_repo(self.store, job.id, self.name, repo_id):
            raise BotError(f"the lease of job {job.id} was lost before {repo_id} was created")

    def _finish(
        self,
        job: Job,
        status: str,
        *,
        source_shas: dict | None = None,
        commit: str | None = None,
        error: str | None = None,
        broken: str | None = None,
        success: bool = False,
        recipe_yaml: str | None = None,
    ) -> None:
        """Record the outcome (and the recipe's new state: its last good merge, its YAML
        when a sweep published a variant of it) in one transaction."""
        with self.store.write() as db:
            held = queue.finish(
                self.store,
                job.id,
                self.name,
                status,
                source_shas=source_shas,
                commit=commit,
                error=error,
                db=db,
            )
            if not held:
                log.warning("job %s: lease lost; outcome %s not recorded", job.id, status)
                return
            if recipe_yaml is not None:
                self.store.set_recipe_yaml(db, job.recipe_id, recipe_yaml)
            if success and source_shas is not None:
                self.store.record_success(db, job.recipe_id, source_shas, commit)
            if broken is not None:
                self.store.set_broken(db, job.recipe_id, broken)


def _commit_title(job: Job) -> str:
    """The commit's first line: what caused this version (capitalised, unless it starts
    with a repo id, which keeps its case)."""
    first = job.trigger.split(" ", 1)[0]
    title = job.trigger if "/" in first else job.trigger[0].upper() + job.trigger[1:]
    if job.triggers > 1:
        title += f" (+{job.triggers - 1} more)"
    return title


def _provenance(job: Job, recipe: Recipe) -> str:
    return (
        f"Merged by mergebot for @{recipe.owner} (recipe {recipe.id}, job {job.id}). "
        f"Trigger: {job.trigger}."
        + (" Rebuilt automatically when a source's `main` moves." if recipe.watch else "")
    )


@dataclass
class WebhookSync:
    """Reconciles the bot's Hub webhooks with the watched sources; see module docstring."""

    settings: Settings
    store: Store
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.webhook_url and s.webhook_secret and s.token)

    def run(self) -> dict[str, list[str]]:
        """Create and delete webhooks; {"created": [repo...], "deleted": [repo...]}."""
        done: dict[str, list[str]] = {"created": [], "deleted": []}
        if not self.enabled:
            return done
        with self._lock:
            try:
                self._reconcile(done)
            except Exception as exc:  # retried at the next run
                log.warning("could not update the Hub webhooks: %s", exc)
        return done

    def _reconcile(self, done: dict[str, list[str]]) -> None:
        s = self.settings
        api = HfApi(endpoint=s.endpoint, token=s.token)
        wanted = self.store.watched_sources()
        seen: set[str] = set()
        for hook in api.list_webhooks():
            if hook.url != s.webhook_url:
                continue
            names = [w.name for w in hook.watched if w.type == "model"]
            repo = names[0] if len(names) == 1 else None
            if repo in wanted and repo not in seen:
                seen.add(repo)
                continue
            api.delete_webhook(hook.id)
            done["deleted"].append(repo or hook.id)
        for repo in sorted(wanted - seen):
            api.create_webhook(
                url=s.webhook_url,
                watched=[{"type": "model", "name": repo}],
                domains=["repo"],
                secret=s.webhook_secret,
            )
            done["created"].append(repo)
        if done["created"] or done["deleted"]:
            log.info("webhooks: created %s, deleted %s", done["created"], done["deleted"])


def run_workers(
    settings: Settings,
    count: int,
    stop: threading.Event,
    *,
    store: Store | None = None,
    sync: WebhookSync | None = None,
) -> list[threading.Thread]:
    """Start ``count`` worker threads (the first also keeps the Hub webhooks in sync);
    they end when ``stop`` is set."""
    store = store or open_store(settings)
    sync = sync or WebhookSync(settings, store)
    threads = []
    for i in range(count):
        worker = Worker(settings, store, webhooks=sync if i == 0 else None)
        thread = threading.Thread(
            target=worker.run, args=(stop,), name=f"mergebot-worker-{i}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads
