"""The ``hf-jobs`` backend: each merge runs as a Hugging Face Job on a GPU flavor.

Dispatch of attempt n of job N (labels ``mergebot-bot`` = this bot's queue, ``mergebot-job``
= N, ``mergebot-attempt`` = n):
1. Adopt: a Job with this bot's and this job's labels that has not ended (started by an
   earlier attempt whose bot died) is followed instead of starting another.
2. Otherwise, if the job's commit exists already (its marker), that is the result. Else
   the plan is read from headers with the bot's token (a bad recipe fails here, before
   any Job), the flavor picked (:mod:`.sizing`), the target repo recorded as the job's
   when it does not exist yet, and a Job started: ``settings.jobs_image`` running
   ``python -m bot.cli run-job`` (:mod:`.job_main`), the bot's token and the recipe as *secrets*,
   ``timeout`` from the estimate.
3. Follow: every ``jobs_poll_seconds`` the Job's stage and the last stage line of its log
   are reported, and it is cancelled when ``dispatch.cancelled()``. COMPLETED: its result
   line (or the commit found by the marker). ERROR: the error line it left decides:
   ``input``/``source`` fail the job (merge_engine ``InputError``/``SourceError``),
   ``fatal`` is a :class:`BotError`, ``transient`` or no line (a timeout, the machine
   lost) a :class:`TransientError`; a Job cancelled or deleted by someone else is
   transient too.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx2
from huggingface_hub import HfApi, JobInfo
from huggingface_hub.errors import HfHubHTTPError

from merge_engine import (
    DEFAULT_SHARD_BYTES,
    EvalTable,
    HubAccess,
    InputError,
    Plan,
    SourceError,
    check_adapter_base,
)

from ..errors import BotError, TransientError
from ..publish import (
    DEFAULT_HUB,
    Progress,
    PublishResult,
    find_job_commit,
    plan_stages,
    resolve_revisions,
)
from ..settings import Settings
from ..store import Store
from . import sizing
from .base import Cancelled, Dispatch
from .job_main import ERROR, RESULT, STAGE

TERMINAL = ("COMPLETED", "ERROR", "CANCELED", "DELETED")
LOG_TAIL = 20


@dataclass
class HfJobsBackend:
    """See the module docstring."""

    settings: Settings
    store: Store
    name: str = "hf-jobs"
    _hardware: list | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def api(self) -> HfApi:
        return HfApi(endpoint=self.settings.endpoint, token=self.settings.token)

    @property
    def namespace(self) -> str:
        return self.settings.jobs_namespace or self.api.whoami()["name"]

    @property
    def bot_label(self) -> str:
        """This bot's queue: its Hub and its state directory."""
        where = f"{self.settings.endpoint}|{self.settings.home.resolve()}"
        return hashlib.sha256(where.encode()).hexdigest()[:12]

    def labels(self, job_id: int) -> dict[str, str]:
        return {"mergebot-bot": self.bot_label, "mergebot-job": str(job_id)}

    # the seam -------------------------------------------------------------------------

    def run(self, dispatch: Dispatch, report: Progress) -> PublishResult:
        api, ns, req = self.api, self.namespace, dispatch.request
        info = self._find_running(api, ns, dispatch.job_id)
        if info is not None:
            self.store.record_run(dispatch.job_id, dispatch.attempt, backend=self.name,
                                  run_id=info.id, flavor=info.flavor, adopted=True)
            self.store.append_log(dispatch.job_id, f"hf-jobs: adopted running Job {info.id}")
        else:
            done = _hub(lambda: find_job_commit(api, req.repo_id, req.job_key or ""))
            if done:
                revisions = resolve_revisions(req.recipe_text, endpoint=req.endpoint,
                                              token=req.token)
                return self._result(req.repo_id, done, revisions, reused=True)
            info = self._start(api, ns, dispatch)
        return self._follow(api, ns, dispatch, info, report)

    def describe(self, job_id: int) -> dict:
        run = self.store.last_run(job_id)
        if run is None:
            return {"backend": self.name}
        answer = {"backend": self.name, "flavor": run["flavor"], "hf_job_id": run["run_id"],
                  "hf_job_url": f"{self.settings.endpoint}/jobs/{self.namespace}/{run['run_id']}",
                  "hf_job_adopted": run["adopted"]}
        try:
            answer["hf_job_log"] = list(self.api.fetch_job_logs(
                job_id=run["run_id"], namespace=self.namespace, tail=LOG_TAIL))
        except (HfHubHTTPError, OSError, httpx2.TransportError) as exc:
            answer["hf_job_log"] = [f"(the Job's log could not be read: {exc})"]
        return answer

    def quote(self, plan: Plan) -> dict:
        """The flavor a merge of ``plan`` would run on, its estimated time and cost."""
        need = sizing.needs(plan, DEFAULT_SHARD_BYTES)
        hw = sizing.pick(self.hardware(), need, self.settings.jobs_flavor)
        seconds = need.seconds(self.settings.jobs_mbps)
        return {"backend": self.name, "flavor": hw.name, "flavor_name": hw.pretty_name,
                "estimated_seconds": round(seconds), "timeout_seconds": need.timeout(
                    self.settings.jobs_mbps),
                "estimated_cost_usd": sizing.cost_usd(hw, seconds),
                "gpu_bytes_needed": need.gpu_bytes, "disk_bytes_needed": need.disk_bytes}

    def hardware(self) -> list:
        """``list_jobs_hardware``, fetched once per backend."""
        with self._lock:
            if self._hardware is None:
                self._hardware = _hub(lambda: self.api.list_jobs_hardware())
            return self._hardware

    # steps ----------------------------------------------------------------------------

    def _find_running(self, api: HfApi, ns: str, job_id: int) -> JobInfo | None:
        jobs = _hub(lambda: list(api.list_jobs(labels=self.labels(job_id), namespace=ns)))
        live = [j for j in jobs if j.status.stage not in TERMINAL]
        return max(live, key=lambda j: j.created_at or 0, default=None)

    def _start(self, api: HfApi, ns: str, dispatch: Dispatch) -> JobInfo:
        s, req = self.settings, dispatch.request
        if not s.jobs_image:
            raise BotError("the hf-jobs backend needs MERGEBOT_JOBS_IMAGE (the merge image)")
        access = HubAccess(endpoint=req.endpoint, token=req.read_token or req.token,
                           stream_dir=req.work_dir / "sources")
        _, plans = plan_stages(req.recipe_text, access, req.work_dir)  # InputError: no Job
        plan = max(plans, key=lambda p: p.parameter_count)  # the largest stage sizes the Job
        if req.adapter is not None:
            if len(plans) > 1:
                raise InputError("publishing an adapter of a multi-stage recipe is not "
                                 "supported; publish its full weights")
            check_adapter_base(plan.recipe)
        need = sizing.needs(plan, req.out_shard_size)
        hw = sizing.pick(self.hardware(), need, s.jobs_flavor)
        created_earlier = req.repo_created_earlier
        if not _hub(lambda: api.repo_exists(req.repo_id)) and req.before_create is not None:
            req.before_create()  # the Job will create it: it is this job's from now on
            created_earlier = True
        command = ["python", "-m", "bot.cli", "run-job", "--repo", req.repo_id, "--job-key",
                   req.job_key or f"job-{dispatch.job_id}", "--trigger", req.trigger,
                   "--device", "auto"]  # the flavor's GPU
        if req.provenance:
            command += ["--provenance", req.provenance]
        if req.private:
            command.append("--private")
        if created_earlier:
            command.append("--repo-created-earlier")
        if req.publish_intermediates:
            command.append("--publish-intermediates")
        command += ["--perplexity-factor", str(req.checks.perplexity_factor)]
        if req.checks.allow_high_perplexity:
            command.append("--allow-high-perplexity")
        if req.adapter is not None:
            command += ["--publish", req.publish, "--max-rank", str(req.adapter.max_rank),
                        "--sv-cutoff", repr(float(req.adapter.sv_cutoff))]
        secrets = {"HF_TOKEN": req.token, "MERGEBOT_RECIPE": req.recipe_text}
        if req.evaluate:  # a secret too: the sets may hold pasted texts
            secrets["MERGEBOT_EVALUATION"] = json.dumps([asdict(e) for e in req.evaluate])
        info = _hub(lambda: api.run_job(
            image=s.jobs_image, command=command, flavor=hw.name,
            env={"HF_ENDPOINT": s.endpoint} if s.endpoint != DEFAULT_HUB else None,
            secrets=secrets,
            labels={**self.labels(dispatch.job_id), "mergebot-attempt": str(dispatch.attempt)},
            timeout=need.timeout(s.jobs_mbps), namespace=ns))
        self.store.record_run(dispatch.job_id, dispatch.attempt, backend=self.name,
                              run_id=info.id, flavor=hw.name)
        self.store.append_log(dispatch.job_id, f"hf-jobs: started Job {info.id} on {hw.name}"
                              f" (timeout {need.timeout(s.jobs_mbps)} s)")
        return info

    def _follow(self, api: HfApi, ns: str, dispatch: Dispatch, info: JobInfo,
                report: Progress) -> PublishResult:
        req, run_id = dispatch.request, info.id
        while True:
            stage = info.status.stage
            if stage in TERMINAL:
                break
            if dispatch.cancelled():
                _hub(lambda: api.cancel_job(job_id=run_id, namespace=ns))
                raise Cancelled(f"cancelled: the recipe was deleted; Job {info.id} cancelled")
            lines = self._log(api, ns, info.id)
            last = next((ln for ln in reversed(lines) if ln.startswith(STAGE)), None)
            if last is not None:
                name, fraction = last[len(STAGE):].rsplit(" ", 1)
                report(name, float(fraction))
            elif stage == "SCHEDULING":
                report("scheduling", 0.0)
            time.sleep(self.settings.jobs_poll_seconds)
            info = _hub(lambda: api.inspect_job(job_id=run_id, namespace=ns))
        lines = self._log(api, ns, info.id)
        if stage == "COMPLETED":
            found = next((ln for ln in reversed(lines) if ln.startswith(RESULT)), None)
            if found is not None:
                out = json.loads(found[len(RESULT):])
                return self._result(out["repo_id"], out["commit"], out["revisions"],
                                    reused=out["reused_commit"], created=out["created_repo"],
                                    adapter=out)
            commit = _hub(lambda: find_job_commit(api, req.repo_id, req.job_key or ""))
            if commit is None:
                raise TransientError(f"Job {info.id} completed without a commit")
            revisions = resolve_revisions(req.recipe_text, endpoint=req.endpoint, token=req.token)
            return self._result(req.repo_id, commit, revisions, reused=True)
        error = next((ln[len(ERROR):] for ln in reversed(lines) if ln.startswith(ERROR)), None)
        kind, _, message = (error or "").partition(": ")
        if kind == "source":
            raise SourceError(message)
        if kind == "input":
            raise InputError(message)
        if kind == "fatal":
            raise BotError(message)
        why = message or info.status.message or stage.lower()
        raise TransientError(f"Job {info.id} ended {stage}: {why}")

    def _log(self, api: HfApi, ns: str, run_id: str) -> list[str]:
        try:
            return list(api.fetch_job_logs(job_id=run_id, namespace=ns, tail=200))
        except (HfHubHTTPError, OSError, httpx2.TransportError):
            return []

    def _result(self, repo_id: str, commit: str, revisions: dict, *, reused: bool,
                created: bool = False, adapter: dict | None = None) -> PublishResult:
        """``adapter``: the Job's result line, with its adapter fields and evaluation table
        (when any)."""
        hub = (self.settings.endpoint or DEFAULT_HUB).rstrip("/")
        adapter = adapter or {}
        return PublishResult(repo_id, commit, f"{hub}/{repo_id}", revisions,
                             created_repo=created, reused_commit=reused,
                             adapter_repo=adapter.get("adapter_repo"),
                             adapter_commit=adapter.get("adapter_commit"),
                             adapter_summary=adapter.get("adapter_summary"),
                             evaluation=(EvalTable.from_json(adapter["evaluation"])
                                         if adapter.get("evaluation") else None))


def _hub(fn):
    """A Hub call; its failure as one sentence (5xx, 429 and network errors transient)."""
    try:
        return fn()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        error = TransientError if status >= 500 or status == 429 or status == 0 else BotError
        raise error(f"Hugging Face Jobs: HTTP {status}: {exc}") from exc
    except (OSError, httpx2.TransportError) as exc:
        raise TransientError(f"Hugging Face Jobs: {exc}") from exc
