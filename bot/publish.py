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
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from merge_engine import (
    DEFAULT_SHARD_BYTES,
    EVALUATION_PLOT,
    CheckOptions,
    CheckReport,
    EvalSet,
    EvalTable,
    HubAccess,
    Plan,
    Source,
    formula,
    open_source,
    parse_recipe,
    retry,
    run_merge,
    validate,
    write_evaluation_plot,
)

from .errors import BotError, TransientError

Progress = Callable[[str, float], None]
"""Called with (stage, fraction done): resolving, merging, uploading, committing."""
JOB_MARKER = "mergebot-job: "
DEFAULT_HUB = "https://huggingface.co"


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
    recipe = parse_recipe(recipe_text)
    return source_revisions(open_source(m.ref, access) for m in recipe.inputs())


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
    plan = validate(req.recipe_text, access=access)
    revisions = source_revisions(plan.sources)
    hub_url = (req.endpoint or DEFAULT_HUB).rstrip("/")
    if not req.commit:
        merged = _merge(req, plan, access, hub_url, None, report)
        return PublishResult(req.repo_id, None, f"{hub_url}/{req.repo_id}", revisions,
                             created_repo=False, reused_commit=False, checks=merged.checks,
                             evaluation=merged.evaluation)
    api = HfApi(endpoint=req.endpoint, token=req.token)
    if req.job_key and (done := find_job_commit(api, req.repo_id, req.job_key, req.revision)):
        return PublishResult(req.repo_id, done, f"{hub_url}/{req.repo_id}", revisions,
                             created_repo=False, reused_commit=True, revision=req.revision)
    created = _ensure_repo(api, req)
    uploader = ShardUploader(api, req.repo_id, req.work_dir / "upload")
    new_branch: list[str] = []
    try:
        parent = _call(lambda: _head(api, req, new_branch), f"read {req.repo_id}")
        report("resolving", 1.0)
        merged = _merge(req, plan, access, hub_url, uploader.submit, report)
        out = merged.out_dir
        report("uploading", 0.0)
        operations = uploader.finish()
        report("uploading", 1.0)
        uploaded = {op.path_in_repo for op in operations}
        operations += [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                       for p in sorted(out.iterdir()) if p.is_file() and p.name not in uploaded]
        report("committing", 0.0)
        message = _commit_body(plan, req)
        info = _call(lambda: api.create_commit(
            req.repo_id, operations, commit_message=req.trigger, commit_description=message,
            parent_commit=parent, revision=req.revision), f"commit to {req.repo_id}")
        report("committing", 1.0)
    except BaseException:
        uploader.cancel()
        for branch in new_branch:  # an empty branch of a failed variant goes again
            with contextlib.suppress(Exception):
                api.delete_branch(req.repo_id, branch=branch)
        if created:
            with contextlib.suppress(Exception):  # best effort while the error is raised
                delete_if_unused(api, req.repo_id)
        raise
    return PublishResult(req.repo_id, info.oid, f"{hub_url}/{req.repo_id}", revisions,
                         created_repo=created, reused_commit=False, checks=merged.checks,
                         evaluation=merged.evaluation, revision=req.revision)


def _merge(req: PublishRequest, plan: Plan, access: HubAccess, hub_url: str,
           on_shard_done, report: Progress):
    """``run_merge`` into ``work_dir/out`` with the request's checks, evaluation and card;
    a sweep's table gets its plot beside the card."""
    card = {"hub_url": hub_url, "provenance": req.provenance, "repo_id": req.repo_id}
    if req.evaluation is not None:
        card["evaluation"] = req.evaluation
    out = req.work_dir / "out"
    merged = run_merge(
        plan.recipe, out, device=req.device, random_seed=req.random_seed,
        access=access, out_shard_size=req.out_shard_size, plan=plan,
        on_shard_done=on_shard_done, card_options=card,
        progress=lambda done, total: report("merging", done / total), checks=req.checks,
        evaluate=list(req.evaluate) or None, eval_cache_dir=req.eval_cache_dir,
    )
    if req.evaluation is not None:
        write_evaluation_plot(req.evaluation, out / EVALUATION_PLOT)
    return merged


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


def _commit_body(plan: Plan, req: PublishRequest) -> str:
    lines = [formula(plan), ""]
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
