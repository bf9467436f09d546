"""A small HTTP client for the bot's REST API (``/api`` of ``mergebot serve``).

    client = MergebotClient("http://127.0.0.1:7860")
    client.submit(recipe_yaml, token, repo_id="merged", private=False, watch=True)
    client.job(7)                       # {"status", "stage", "progress", "log", ...}

The UI never touches the bot's database: everything goes through this class. Every
method raises :class:`ApiError` (one sentence, plus ``errors`` with YAML locations for a
422) instead of HTTP exceptions. ``base_url`` may be a callable, for a UI mounted inside
the bot that learns its own address from its first request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

BaseUrl = str | Callable[[], str]


@dataclass
class ApiError(Exception):
    """A failed API call: HTTP status (0: unreachable), a sentence, and recipe errors."""

    status: int
    message: str
    errors: list[dict] = field(default_factory=list)
    """``[{"loc": "models[1].parameters.weight", "msg": "..."}]`` for a refused recipe."""

    def __str__(self) -> str:
        return self.message


class MergebotClient:
    """Calls the REST API at ``base_url``; ``token`` arguments are the user's Hub token."""

    def __init__(self, base_url: BaseUrl, *, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._timeout = timeout

    @property
    def base_url(self) -> str:
        url = self._base_url() if callable(self._base_url) else self._base_url
        return url.rstrip("/")

    # REST endpoints ---------------------------------------------------------------------

    def submit(
        self,
        recipe: str,
        token: str | None,
        *,
        repo_id: str | None = None,
        private: bool = False,
        watch: bool = True,
        allow_high_perplexity: bool = False,
        force: bool = False,
        publish: str = "full",
        max_rank: int | None = None,
        sv_cutoff: float = 0.0,
        evaluation: list | None = None,
        publish_intermediates: bool = False,
    ) -> dict:
        """POST /api/recipes → ``{"recipe_id", "job_id", "repo_id"}``; ``force``: merge even
        when the recipe and its sources are unchanged since its last merge; ``publish``
        ``adapter``/``both`` with ``max_rank`` (and ``sv_cutoff``): a LoRA adapter of the
        merge instead of / as well as its full weights; ``evaluation``: sets every merge is
        scored on (the API's list); ``publish_intermediates``: a multi-stage recipe's earlier
        stages on branches too."""
        body = {"recipe": recipe, "repo_id": repo_id or None, "private": private, "watch": watch,
                "allow_high_perplexity": allow_high_perplexity}
        if force:
            body["force"] = True
        if publish != "full":
            body |= {"publish": publish, "max_rank": max_rank, "sv_cutoff": sv_cutoff}
        if evaluation:
            body["evaluation"] = evaluation
        if publish_intermediates:
            body["publish_intermediates"] = True
        return self._call("POST", "/api/recipes", token, body)

    def submit_sweep(self, recipe: str, token: str | None, *, axes: dict, evaluation: list,
                     repo_id: str | None = None, private: bool = False,
                     metric: str | None = None, publish: str = "best") -> dict:
        """POST /api/sweeps → ``{"sweep_id", "recipe_id", "repo_id", "job_ids", "variants"}``."""
        body = {"recipe": recipe, "repo_id": repo_id or None, "private": private,
                "sweep": axes, "evaluation": evaluation, "publish": publish}
        if metric:
            body["metric"] = metric
        return self._call("POST", "/api/sweeps", token, body)

    def sweep(self, sweep_id: int, token: str | None = None) -> dict:
        """GET /api/sweeps/{id}: variants, their states and scores, the table, the best."""
        return self._call("GET", f"/api/sweeps/{int(sweep_id)}", token)

    def validate(self, recipe: str, token: str | None) -> dict | None:
        """POST /api/validate → the header-only preflight's summary (``"ok": true``); None
        when no bot answers: unreachable, or no such route there (the UI served alone)."""
        try:
            return self._call("POST", "/api/validate", token, {"recipe": recipe})
        except ApiError as exc:
            if exc.status in (0, 404, 405):
                return None
            raise

    def job(self, job_id: int, token: str | None = None) -> dict:
        """GET /api/jobs/{id}: status, stage, progress, source SHAs, commit, error, log."""
        return self._call("GET", f"/api/jobs/{int(job_id)}", token)

    def recipe(self, recipe_id: int, token: str | None = None) -> dict:
        """GET /api/recipes/{id}: the recipe with its latest jobs (newest first)."""
        return self._call("GET", f"/api/recipes/{int(recipe_id)}", token)

    def recipes(self, owner: str | None = None, token: str | None = None) -> list[dict]:
        """GET /api/recipes?owner=: recipes, newest first (private ones only for their owner)."""
        params = {"owner": owner} if owner else None
        return self._call("GET", "/api/recipes", token, params=params)["recipes"]

    def remerge(self, recipe_id: int, token: str | None, *, force: bool = True) -> dict:
        """POST /api/recipes/{id}/remerge → ``{"job_id", "absorbed"}``."""
        return self._call("POST", f"/api/recipes/{int(recipe_id)}/remerge", token, {"force": force})

    def healthy(self) -> bool:
        """Does GET /healthz answer 200?"""
        try:
            with httpx2.Client(timeout=5.0) as http:
                return http.get(f"{self.base_url}/healthz").status_code == 200
        except httpx2.HTTPError:
            return False

    # plumbing ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        token: str | None,
        body: dict | None = None,
        *,
        params: dict | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.base_url}{path}"
        try:
            with httpx2.Client(timeout=self._timeout) as http:
                response = http.request(method, url, json=body, params=params, headers=headers)
        except httpx2.HTTPError as exc:
            raise ApiError(0, f"the bot at {self.base_url} is unreachable ({exc})") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.is_success:
            return answer
        raise _error(response.status_code, answer)


def _error(status: int, answer: object) -> ApiError:
    if isinstance(answer, dict) and isinstance(answer.get("errors"), list):
        errors = [e for e in answer["errors"] if isinstance(e, dict)]
        first = errors[0] if errors else {}
        where = f"{first.get('loc')}: " if first.get("loc") else ""
        return ApiError(status, f"{where}{first.get('msg', 'invalid recipe')}", errors)
    if isinstance(answer, dict) and answer.get("error"):
        return ApiError(status, str(answer["error"]))
    return ApiError(status, f"the bot answered HTTP {status}")
