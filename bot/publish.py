"""Merge a recipe from Hub sources and publish the result as ONE commit.

    result = merge_and_publish(PublishRequest(recipe_text, "me/merged", token, work_dir))

Order of work, so that nothing is half-published:
1. resolve every source to a commit SHA and plan from safetensors headers only (a bad
   recipe fails here: no download, no repo);
2. create the target repo if needed (``before_create`` first records that this job
   creates it), and note its head (``parent_commit``);
3. merge, uploading each output shard (LFS pre-upload) as soon as it is written and then
   deleting it locally, so downloads, math and uploads overlap and disk stays bounded
   (source shards are deleted once read, too);
4. the check stage (merge_engine's ``run_checks``, inside ``run_merge``) before anything
   is committed: a fault raises ``CheckError`` and the repo is left as it was;
5. one ``create_commit`` with the shards, index, config, tokenizer, recipe and README.md,
   with ``parent_commit`` set: a concurrent change of the repo fails the commit.
On any failure no commit is made, and a repo this job created (this call, or an earlier
attempt per ``repo_created_earlier``) is deleted again if it holds nothing beyond its
creation (:func:`delete_if_unused`).

A multi-stage recipe (several YAML documents) runs in the same job: step 1 plans every
stage (merge_engine's ``validate_stages``), step 3 merges the stages in order under the
work dir (``run_stages``), taking each intermediate from ``stage_cache`` when its key (its
text and its sources' SHAs, with those of the stages it reads) is there, and streams the
final stage's output as above; the card pins every stage. With ``publish_intermediates``,
each earlier stage's output is committed to the branch ``stage-<name>`` of the target
repo before the main commit (:func:`publish_intermediates`). :attr:`PublishResult.stages`
says which stages were merged, reused and published.

Publishing an adapter (``publish``, see :data:`PUBLISH_MODES`): a PEFT LoRA adapter of
(merge - base_model) is factorized from each output shard as it is written (merge_engine's
``run_merge(adapter=...)``) and committed, like the weights, only after the checks.
``adapter``: only the adapter (adapter_config.json, adapter_model.safetensors, README.md)
is committed to the target repo; the full shards are deleted as soon as they are
factorized, never uploaded. ``both``: the adapter goes to the sibling repo
``<repo>-lora`` (committed first, with the same job marker), then the full weights to the
target as above; a retry reuses whichever commit is already made.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from merge_engine import (
    DEFAULT_SHARD_BYTES,
    EVALUATION_PLOT,
    AdapterOptions,
    CheckOptions,
    CheckReport,
    EvalSet,
    EvalTable,
    HubAccess,
    InputError,
    MergeResult,
    Plan,
    Source,
    StagedRecipe,
    StageRun,
    check_adapter_base,
    formula,
    open_source,
    parse_stages,
    retry,
    run_merge,
    run_stages,
    validate,
    validate_stages,
    write_evaluation_plot,
)

from .errors import BotError, TransientError
from .stage_cache import StageDirCache

Progress = Callable[[str, float], None]
"""Called with (stage, fraction done): resolving, merging, uploading, committing."""
JOB_MARKER = "mergebot-job: "
STAGE_MARKER = "mergebot-stage: "
"""Followed by the stage key (merge_engine's ``stage_key``) of an intermediate's commit."""
STAGE_BRANCH = "stage-"
"""An intermediate is published on the branch ``stage-<name>`` of the target repo."""
DEFAULT_HUB = "https://huggingface.co"
PUBLISH_MODES = ("full", "adapter", "both")
"""What a merge publishes: the full weights, only a LoRA adapter of it, or both (the
adapter in the sibling repo :func:`adapter_repo`)."""
ADAPTER_SUFFIX = "-lora"


def adapter_repo(repo_id: str, publish: str) -> str | None:
    """Where the adapter goes: the target itself (``adapter``), its sibling
    ``<repo>-lora`` (``both``), or nowhere (``full``)."""
    return {"full": None, "adapter": repo_id, "both": repo_id + ADAPTER_SUFFIX}[publish]


@dataclass(frozen=True)
class PublishRequest:
    """One merge to publish; see the module docstring."""

    recipe_text: str
    repo_id: str
    token: str
    """Writes the target repo (the bot's token)."""
    work_dir: Path
    """Scratch space for downloads and the output; the caller removes it afterwards."""
    endpoint: str | None = None
    private: bool = False
    read_token: str | None = None
    """Reads the sources (default: ``token``)."""
    trigger: str = "Merge submitted"
    """The commit's title: what caused this version."""
    provenance: str | None = None
    """Markdown for the card's Provenance section."""
    job_key: str | None = None
    """Recorded in the commit message; when a commit with it already exists, nothing is
    merged and that commit is returned (exactly one commit per job across crashes)."""
    repo_created_earlier: bool = False
    """An earlier attempt of this job created the target repo (per the job's record): if
    it exists, it is this call's own, deleted on failure like a repo this call created."""
    before_create: Callable[[], None] | None = None
    """Called just before the target repo is created, to record that this job creates
    it; raising stops the creation."""
    device: str = "auto"
    random_seed: int | None = None
    out_shard_size: int = DEFAULT_SHARD_BYTES
    checks: CheckOptions = field(default_factory=CheckOptions)
    """How the merged model is checked before the commit (the device is the merge's)."""
    publish: str = "full"
    """One of :data:`PUBLISH_MODES`; ``adapter``/``both`` need :attr:`adapter`."""
    adapter: AdapterOptions | None = None
    stage_cache: StageDirCache | None = None
    """Multi-stage recipes: where intermediates are kept between jobs (None: none)."""
    publish_intermediates: bool = False
    """Multi-stage recipes: also commit each earlier stage's output to a branch
    ``stage-<name>`` of the target repo (see :func:`publish_intermediates`)."""

    evaluate: tuple[EvalSet, ...] = ()
    """Score the merged model (and its sources) on these sets before the commit."""
    eval_cache_dir: Path | None = None
    """Where the sources' scores are kept by repo, SHA and set (scored once)."""
    evaluation: EvalTable | None = None
    """A table for the card instead (a sweep's: every variant's scores, the chosen one
    marked), with its plot."""
    revision: str | None = None
    """Commit to this branch (created from ``main`` when missing) instead of ``main``."""
    commit: bool = True
    """False: merge, check and evaluate only; nothing is created or committed (the
    result has no commit)."""

    def __post_init__(self) -> None:
        if self.publish not in PUBLISH_MODES:
            raise BotError(f"publish must be one of {', '.join(PUBLISH_MODES)}, "
                           f"got {self.publish!r}")
        if self.publish != "full" and self.adapter is None:
            raise BotError(f"publish {self.publish} needs the adapter's options (max_rank)")
        if self.publish == "full" and self.adapter is not None:
            raise BotError("adapter options need publish adapter or both")

    def __repr__(self) -> str:  # never show tokens
        return f"PublishRequest(repo_id={self.repo_id!r}, job_key={self.job_key!r})"


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    commit_sha: str | None
    """None when the request asked for no commit."""
    url: str
    revisions: dict[str, str | None]
    """Repo id (or local path) of every model and adapter -> the commit SHA merged."""
    created_repo: bool
    reused_commit: bool
    checks: CheckReport | None = None
    adapter_repo: str | None = None
    """Where the adapter was committed (the target itself when only the adapter is)."""
    adapter_commit: str | None = None
    adapter_summary: str | None = None
    """Its ranks and errors, and the upload against the full weights' size, for the log
    (None when the commits were reused)."""
    stages: tuple[str, ...] = ()
    """Multi-stage recipes: a line per stage, ``stage 'mid' (1 of 2): merged`` (or
    ``reused``, taken from the stage cache)."""
    evaluation: EvalTable | None = None
    """The merged model's scores (and its sources'), when the request asked for them."""
    revision: str | None = None
    """The branch committed to (None: ``main``)."""


def source_revisions(sources: Iterable[Source]) -> dict[str, str | None]:
    """Repo id (or local path) -> commit SHA of every model and LoRA adapter merged."""
    revisions: dict[str, str | None] = {}
    for source in sources:
        revisions[source.ref.path] = source.revision
        if source.ref.lora is not None:
            revisions[source.ref.lora.path] = source.adapter_revision
    return revisions


def resolve_revisions(recipe_text: str, *, endpoint: str | None,
                      token: str | None) -> dict[str, str | None]:
    """The current commit SHA of every source of a recipe (metadata only), keyed like
    :attr:`PublishResult.revisions`."""
    access = HubAccess(endpoint=endpoint, token=token)
    recipe = parse_stages(recipe_text)
    return source_revisions(open_source(m.ref, access) for m in recipe.inputs())


def plan_stages(recipe_text: str, access: HubAccess,
                workspace: Path | None = None) -> tuple[StagedRecipe, list[Plan]]:
    """The recipe's stages and a header-only plan of each (one for an ordinary recipe)."""
    staged = parse_stages(recipe_text)
    if len(staged.stages) == 1:
        return staged, [validate(staged.final.recipe, access=access)]
    return staged, validate_stages(staged, access=access, workspace=workspace)


def planned_revisions(staged: StagedRecipe, plans: list[Plan]) -> dict[str, str | None]:
    """:func:`source_revisions` of every stage's sources that no stage makes."""
    names = {stage.name for stage in staged.stages} if len(plans) > 1 else set()
    return source_revisions(s for plan in plans for s in plan.sources
                            if not (s.ref.is_local and s.ref.path in names))


def find_job_commit(api: HfApi, repo_id: str, job_key: str,
                    revision: str | None = None) -> str | None:
    """The commit on ``repo_id`` (at ``revision``, default ``main``) made for ``job_key``,
    if any."""
    try:
        commits = retry(lambda: api.list_repo_commits(repo_id, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    marker = JOB_MARKER + job_key
    return next((c.commit_id for c in commits
                 if marker in f"{c.title}\n{c.message}".splitlines()), None)


def merge_and_publish(req: PublishRequest, progress: Progress | None = None) -> PublishResult:
    """Resolve, preflight, merge with streaming and publish one commit; see module doc.

    Raises merge_engine's ``InputError`` for recipe or source problems (do not retry),
    :class:`TransientError` when a retry may succeed, :class:`BotError` otherwise.
    """
    report = progress or (lambda stage, fraction: None)
    report("resolving", 0.0)
    access = HubAccess(endpoint=req.endpoint, token=req.read_token or req.token,
                       stream_dir=req.work_dir / "sources")
    staged, plans = plan_stages(req.recipe_text, access, req.work_dir)
    plan = plans[-1]
    if req.adapter is not None:
        if len(plans) > 1:
            raise InputError("publishing an adapter of a multi-stage recipe is not supported; "
                             "publish its full weights")
        check_adapter_base(plan.recipe)
    if len(plans) > 1 and (req.evaluation is not None or req.revision or not req.commit):
        raise InputError("a multi-stage recipe cannot be swept; submit it as a recipe")
    if req.evaluate and (len(plans) > 1 or req.publish != "full"):
        raise InputError("evaluation scores a single-stage recipe's full weights; leave out "
                         "the evaluation sets for a multi-stage recipe or an adapter")
    revisions = planned_revisions(staged, plans)
    hub_url = (req.endpoint or DEFAULT_HUB).rstrip("/")
    if not req.commit:
        merged, *_ = _merge(req, staged, plans, access, hub_url, None, report)
        return PublishResult(req.repo_id, None, f"{hub_url}/{req.repo_id}", revisions,
                             created_repo=False, reused_commit=False, checks=merged.checks,
                             evaluation=merged.evaluation)
    api = HfApi(endpoint=req.endpoint, token=req.token)
    sibling = adapter_repo(req.repo_id, req.publish)
    if req.job_key and (done := find_job_commit(api, req.repo_id, req.job_key, req.revision)):
        return PublishResult(req.repo_id, done, f"{hub_url}/{req.repo_id}", revisions,
                             created_repo=False, reused_commit=True, revision=req.revision,
                             adapter_repo=sibling,
                             adapter_commit=_adapter_commit(api, req, sibling, done))
    created = _ensure_repo(api, req)
    full = req.publish != "adapter"
    uploader = ShardUploader(api, req.repo_id, req.work_dir / "upload") if full else None
    sibling_created = False
    made_branches: list[str] = []  # intermediates' branches (multi-stage)
    new_branch: list[str] = []  # the sweep variant's branch, when this call made it
    try:
        parent = _call(lambda: _head(api, req, new_branch), f"read {req.repo_id}")
        # Checked again against the head our commit will name as its parent: a twin
        # dispatch that committed after the check above is in its history, and one that
        # commits after this read makes our parent_commit stale (the commit fails).
        if req.job_key and (done := find_job_commit(api, req.repo_id, req.job_key, parent)):
            if uploader is not None:
                uploader.cancel()
            return PublishResult(req.repo_id, done, f"{hub_url}/{req.repo_id}", revisions,
                                 created_repo=False, reused_commit=True,
                                 revision=req.revision, adapter_repo=sibling,
                                 adapter_commit=_adapter_commit(api, req, sibling, done))
        report("resolving", 1.0)
        adapter_dir = req.work_dir / "adapter"
        merged, plan, stages, staged_revisions = _merge(
            req, staged, plans, access, hub_url, uploader.submit if full else _discard, report,
            api, made_branches)
        revisions = staged_revisions or revisions
        out = merged.out_dir
        report("uploading", 0.0)
        operations = uploader.finish() if full else []
        report("uploading", 1.0)
        adapter_commit = summary = None
        if merged.adapter is not None:
            summary = _adapter_summary(merged, adapter_dir)
        if req.publish == "both":
            report("committing", 0.0)
            adapter_commit, sibling_created = _commit_adapter(api, req, sibling, adapter_dir)
        uploaded = {op.path_in_repo for op in operations}
        files = sorted(out.iterdir()) if full else sorted(adapter_dir.iterdir())
        operations += [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                       for p in files if p.is_file() and p.name not in uploaded]
        report("committing", 0.0)
        message = _commit_body(plan, req, stages, revisions)
        info = _call(lambda: api.create_commit(
            req.repo_id, operations, commit_message=req.trigger, commit_description=message,
            parent_commit=parent, revision=req.revision), f"commit to {req.repo_id}")
        if req.publish == "adapter":
            adapter_commit = info.oid
        report("committing", 1.0)
    except BaseException:
        if uploader is not None:
            uploader.cancel()
        for branch in new_branch:  # an empty branch of a failed variant goes again
            with contextlib.suppress(Exception):
                api.delete_branch(req.repo_id, branch=branch)
        if created:
            with contextlib.suppress(Exception):  # best effort while the error is raised
                for branch in made_branches:
                    api.delete_branch(req.repo_id, branch=branch)
        for repo, own in ((req.repo_id, created), (sibling, sibling_created)):
            if own:
                with contextlib.suppress(Exception):
                    delete_if_unused(api, repo)
        raise
    return PublishResult(req.repo_id, info.oid, f"{hub_url}/{req.repo_id}", revisions,
                         created_repo=created, reused_commit=False, checks=merged.checks,
                         adapter_repo=sibling, adapter_commit=adapter_commit,
                         adapter_summary=summary, stages=tuple(stages),
                         evaluation=merged.evaluation, revision=req.revision)


def _merge(req: PublishRequest, staged: StagedRecipe, plans: list[Plan], access: HubAccess,
           hub_url: str, on_shard_done, report: Progress, api: HfApi | None = None,
           made_branches: list[str] | None = None):
    """``run_merge`` (``run_stages`` for several stages) into ``work_dir/out`` with the
    request's checks, evaluation, adapter and card; a sweep's table gets its plot beside
    the card; with ``publish_intermediates`` (and ``api``) the intermediates are committed
    to their branches. -> (the final MergeResult, its plan, a log line per stage, the
    revisions of every stage's sources or None for one stage)."""
    card = {"hub_url": hub_url, "provenance": req.provenance, "repo_id": req.repo_id}
    if req.evaluation is not None:
        card["evaluation"] = req.evaluation
    out = req.work_dir / "out"
    options = dict(
        device=req.device, random_seed=req.random_seed, access=access,
        out_shard_size=req.out_shard_size, on_shard_done=on_shard_done, card_options=card,
        progress=lambda done, total: report("merging", done / total), checks=req.checks)
    final = dict(evaluate=list(req.evaluate) or None, eval_cache_dir=req.eval_cache_dir,
                 adapter=req.adapter,
                 adapter_dir=req.work_dir / "adapter" if req.adapter is not None else None)
    stages: list[str] = []
    if len(plans) == 1:
        merged = run_merge(plans[0].recipe, out, plan=plans[0], **options, **final)
        plan, revisions = plans[0], None
    else:
        branches = req.publish_intermediates and api is not None
        kept = req.work_dir / "intermediates" if branches else None
        outputs = {s.name: f"published on branch `{STAGE_BRANCH}{s.name}`"
                   for s in staged.stages[:-1]} if branches else None
        result = run_stages(staged, out, workspace=req.work_dir, cache=req.stage_cache,
                            on_stage=lambda run, i, n: stages.append(_stage_line(run, i, n)),
                            keep_intermediates=kept, outputs=outputs, final_options=final,
                            **options)
        merged, revisions = result.final, source_revisions(result.sources)
        plan = result.stages[-1].plan
        if branches:
            report("uploading", 0.0)
            stages += publish_intermediates(api, req, result.stages[:-1], made_branches)
    if req.evaluation is not None:
        write_evaluation_plot(req.evaluation, out / EVALUATION_PLOT)
    return merged, plan, stages, revisions


def _head(api: HfApi, req: PublishRequest, new_branch: list[str]) -> str:
    """The commit the new one goes on: ``main``'s, or the branch's (created from ``main``
    when it does not exist yet, and then added to ``new_branch``)."""
    if req.revision is None:
        return api.model_info(req.repo_id).sha
    refs = api.list_repo_refs(req.repo_id)
    for branch in refs.branches:
        if branch.name == req.revision:
            return branch.target_commit
    api.create_branch(req.repo_id, branch=req.revision, exist_ok=True)
    new_branch.append(req.revision)
    return api.model_info(req.repo_id, revision=req.revision).sha


def _discard(path: Path) -> None:
    """An output shard of an adapter-only publication: factorized already, not uploaded."""
    path.unlink()


def _adapter_summary(merged: MergeResult, adapter_dir: Path) -> str:
    """One log line: the adapter's ranks and worst error, its upload against the full
    weights' size."""
    extraction = merged.adapter
    worst = max(m.error for m in extraction.modules)
    upload = sum(p.stat().st_size for p in adapter_dir.iterdir() if p.is_file())
    line = (f"adapter: {len(extraction.modules)} modules, rank <= {extraction.rank}, worst "
            f"relative error {worst:.3g}; upload {_size(upload)} against "
            f"{_size(merged.output_bytes)} of full weights ({upload / merged.output_bytes:.2%})")
    if extraction.not_captured:
        line += (f"; {len(extraction.not_captured)} tensor(s) differ that LoRA cannot carry "
                 f"({', '.join(sorted(extraction.not_captured)[:3])}"
                 + (", ..." if len(extraction.not_captured) > 3 else "") + ")")
    return line


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _adapter_commit(api: HfApi, req: PublishRequest, sibling: str | None,
                    done: str) -> str | None:
    """The adapter commit of a job whose target commit exists already."""
    if sibling is None:
        return None
    if sibling == req.repo_id:
        return done
    return find_job_commit(api, sibling, req.job_key)


def _commit_adapter(api: HfApi, req: PublishRequest, repo_id: str,
                    adapter_dir: Path) -> tuple[str, bool]:
    """Commit the adapter to the sibling repo (created, like the target, if missing);
    (its commit, whether this call created the repo). An earlier attempt's commit of this
    job is reused."""
    if req.job_key and (done := find_job_commit(api, repo_id, req.job_key)):
        return done, False
    created = not _call(lambda: api.repo_exists(repo_id), f"look up {repo_id}")
    if created:
        _call(lambda: api.create_repo(repo_id, private=req.private, exist_ok=True),
              f"create {repo_id}")
    try:
        parent = _call(lambda: api.model_info(repo_id).sha, f"read {repo_id}")
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                      for p in sorted(adapter_dir.iterdir()) if p.is_file()]
        lines = [f"LoRA adapter of the merge published to {req.repo_id}"]
        if req.job_key:
            lines += ["", JOB_MARKER + req.job_key]
        info = _call(lambda: api.create_commit(
            repo_id, operations, commit_message=req.trigger,
            commit_description="\n".join(lines), parent_commit=parent),
            f"commit to {repo_id}")
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                delete_if_unused(api, repo_id)
        raise
    return info.oid, created


def publish_intermediates(api: HfApi, req: PublishRequest, runs: list[StageRun],
                          made: list[str]) -> list[str]:
    """Commit each intermediate (kept by ``run_stages``) to the branch ``stage-<name>`` of
    the target repo, replacing the branch's files, unless the branch's head already holds
    the same stage key (a retry, or a reused stage); branches created are added to
    ``made`` (removed again when the job fails on a repo it created). A log line each."""
    return [_publish_intermediate(api, req, run, made) for run in runs]


def _publish_intermediate(api: HfApi, req: PublishRequest, run: StageRun,
                          made: list[str]) -> str:
    branch = STAGE_BRANCH + run.name
    marker = STAGE_MARKER + run.key
    where = f"branch {branch} of {req.repo_id}"
    heads = _call(lambda: api.list_repo_refs(req.repo_id).branches, f"read {req.repo_id}")
    if branch not in {b.name for b in heads}:
        _call(lambda: api.create_branch(req.repo_id, branch=branch), f"create {where}")
        made.append(branch)
    head = _call(lambda: api.list_repo_commits(req.repo_id, revision=branch)[0],
                 f"read {where}")
    if marker in f"{head.title}\n{head.message}".splitlines():
        return f"stage {run.name!r}: {where} already holds it"
    files = sorted(p for p in run.kept.iterdir() if p.is_file())
    names = {p.name for p in files}
    old = _call(lambda: api.list_repo_files(req.repo_id, revision=branch), f"read {where}")
    operations = [CommitOperationDelete(path_in_repo=f) for f in old
                  if f not in names and f != ".gitattributes"]
    operations += [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                   for p in files]
    body = "\n".join([formula(run.plan), "", marker]
                     + ([JOB_MARKER + req.job_key] if req.job_key else []))
    info = _call(lambda: api.create_commit(
        req.repo_id, operations, commit_message=f"Stage {run.name}: {req.trigger}",
        commit_description=body, revision=branch, parent_commit=head.commit_id),
        f"commit to {where}")
    return f"stage {run.name!r}: committed {info.oid} to {where}"


def _stage_line(run: StageRun, i: int, count: int) -> str:
    how = "reused (its sources did not move)" if run.reused else "merged"
    return f"stage {run.name!r} ({i} of {count}): {how}"


def _commit_body(plan: Plan, req: PublishRequest, stages: list[str],
                 revisions: dict[str, str | None]) -> str:
    """The formula, every source at its revision (of every stage), the stages, the marker."""
    lines = [formula(plan), ""]
    if stages:
        lines += [f"{name}@{revision or 'local'}" for name, revision in revisions.items()]
        lines += ["", *stages]
    else:
        lines += [f"{s.name}@{s.revision or 'local'}" for s in plan.sources]
    if req.job_key:
        lines += ["", JOB_MARKER + req.job_key]
    return "\n".join(lines)


def _ensure_repo(api: HfApi, req: PublishRequest) -> bool:
    """Create the target repo unless it exists; True when it is this job's own (created
    now, or by an earlier attempt per ``req.repo_created_earlier``)."""
    if _call(lambda: api.repo_exists(req.repo_id), f"look up {req.repo_id}"):
        return req.repo_created_earlier
    if req.before_create is not None:
        req.before_create()
    _call(lambda: api.create_repo(req.repo_id, private=req.private, exist_ok=True),
          f"create {req.repo_id}")
    return True


def delete_if_unused(api: HfApi, repo_id: str) -> str | None:
    """Delete ``repo_id`` if it holds nothing beyond its creation: no commit but the Hub's
    initial one on ``main``, no file but ``.gitattributes``, no other branch, tag or pull
    request. Returns why it was kept, or None when it is gone (deleted now or before).
    A Hub failure raises :class:`BotError` (one sentence)."""
    if not _call(lambda: api.repo_exists(repo_id), f"look up {repo_id}"):
        return None
    reason = _call(lambda: _reason_to_keep(api, repo_id), f"read the history of {repo_id}")
    if reason is None:
        _call(lambda: api.delete_repo(repo_id, missing_ok=True), f"delete {repo_id}")
    return reason


def _reason_to_keep(api: HfApi, repo_id: str) -> str | None:
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    others = sorted({b.name for b in refs.branches} - {"main"})
    others += [t.name for t in refs.tags] + [p.name for p in refs.pull_requests or ()]
    if others:
        return f"it has other refs ({', '.join(others)})"
    if not refs.branches:
        return None  # not even the initial commit
    commits = api.list_repo_commits(repo_id)
    if len(commits) > 1:
        return f"it has {len(commits) - 1} commit(s) made after its creation"
    files = sorted(set(api.list_repo_files(repo_id)) - {".gitattributes"})
    if files:
        return f"it holds files ({', '.join(files[:5])})"
    return None


def _call(fn, what: str):
    """Run a Hub call with retries; turn its failure into one sentence."""
    try:
        return retry(fn)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status == 412:
            raise TransientError(
                f"could not {what}: the repo changed while the merge ran") from e
        if status in (401, 403):
            raise BotError(f"could not {what}: the bot's token may not write there") from e
        error = TransientError if status >= 500 or status == 429 else BotError
        raise error(f"could not {what}: HTTP {status}") from e
    except (OSError, httpx2.TransportError) as e:
        raise TransientError(f"could not {what}: {e}") from e


class ShardUploader:
    """Uploads finished output shards in the background (LFS pre-upload), then deletes
    them locally; :meth:`finish` returns their commit operations."""

    def __init__(self, api: HfApi, repo_id: str, staging: Path):
        self.api = api
        self.repo_id = repo_id
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue()
        self._operations: list[CommitOperationAdd] = []
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> None:
        """Take over a complete shard (called from the merge's writer thread): it moves
        into the staging directory at once, out of the merge's output, then uploads."""
        staged = self.staging / path.name
        path.rename(staged)
        self._queue.put(staged)

    def finish(self) -> list[CommitOperationAdd]:
        """Wait for every queued shard; re-raise the first upload failure."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return list(self._operations)

    def cancel(self) -> None:
        self._cancelled.set()
        self._queue.put(None)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            if self._cancelled.is_set() or self._error is not None:
                continue
            try:
                op = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
                _call(lambda op=op: self.api.preupload_lfs_files(self.repo_id, [op]),
                      f"upload {path.name} to {self.repo_id}")
                if getattr(op, "_upload_mode", None) == "lfs":
                    path.unlink()  # its bytes are on the Hub; the commit needs only the hash
                self._operations.append(op)
            except BaseException as e:  # noqa: BLE001 - re-raised by finish()
                self._error = e
