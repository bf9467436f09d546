"""The Gradio UI: write, check and submit merge recipes, follow jobs, read the cards.

    blocks = build_app(MergebotClient("http://bot:7860"), AppConfig(hub_url=...))
    python -m spaces_app.app      # a Space: MERGEBOT_API_URL points at the bot

Contracts:
- Everything about recipes and jobs goes through the bot's REST API (``client``); the UI
  reads only whoami and model cards from the Hub. Check is the bot's ``/api/validate``;
  only when no bot answers does the UI run the engine's ``validate`` itself
  (:mod:`spaces_app.preflight`), with the same token.
- The user's token comes from ``gr.OAuthToken`` (Sign in with Hugging Face) and is sent as
  the Bearer token. Without one, reading public recipes and jobs works; checking,
  submitting and remerging say "sign in" (a check reads the models with your token).
  ``AppConfig.demo_token`` stands in for a missing (or mocked) OAuth token; only the
  offline demo sets it, and it is ignored on a Space.
- Sweeps: the recipe with one or two YAML paths and their values, evaluation sets and
  a metric go to ``/api/sweeps``; the sweep view polls ``/api/sweeps/{id}`` and fills in
  the table and the plot as variants finish, until the sweep ends.
- Named API endpoints for ``gradio_client``: ``/check``, ``/submit``, ``/job``,
  ``/history``, ``/remerge``, ``/submit_sweep``, ``/sweep``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from spaces_app import preflight, render, sweep
from spaces_app.client import ApiError, MergebotClient
from spaces_app.examples import SEED_LAYERS, SEED_MODELS, examples
from spaces_app.hub import HubReader

DEFAULT_HUB = "https://huggingface.co"
WATCH_POLL_SECONDS = 5.0
PUBLISH_CHOICES = [("full weights", "full"), ("LoRA adapter only", "adapter"),
                   ("both (the adapter in <repo>-lora)", "both")]
"""(label, value) of what a merge publishes (bot.publish)."""
"""How often the job view looks for a remerge of a watched recipe whose job is done."""
MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"
"""What Gradio's local mock login puts in the session instead of a real token."""

THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)
"""System fonts only: the default theme would fetch fonts from the internet."""
CSS = """
#card, #check-result { overflow-x: auto; }
#card td, #check-result td {
  word-break: normal; overflow-wrap: normal; white-space: nowrap;
}
#card th, #check-result th { word-break: normal; overflow-wrap: normal; }
#card pre, #check-result pre { white-space: pre; overflow-x: auto; }
"""
"""Words in the card's and the check's tables stay whole (no "ro / le" in a half-width
column); what does not fit scrolls sideways."""
HISTORY_POLL_SECONDS = 5.0
"""How often the History table refreshes itself."""


@dataclass(frozen=True)
class AppConfig:
    """What the UI needs besides the API client."""

    hub_url: str = DEFAULT_HUB
    """The Hub the bot reads and publishes to (links, cards, whoami, local preflight)."""
    namespace: str | None = None
    """Where merged repos go when the name has no ``owner/`` (shown next to the field)."""
    demo_token: str | None = field(default=None, repr=False)
    """Offline demo only: the token used when there is no real OAuth token."""
    example_models: tuple[str, str, str] = SEED_MODELS
    example_layers: int = SEED_LAYERS
    """The example models' decoder layers (the frankenmerge example's ranges)."""
    poll_seconds: float = 1.5
    login: bool | None = None
    """Show "Sign in with Hugging Face"; None: only on a Space (elsewhere Gradio's sign-in
    is a mock, so no button is shown)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppConfig:
        """HF_ENDPOINT, MERGEBOT_NAMESPACE, MERGEBOT_DEMO_TOKEN (ignored when SPACE_ID is set)."""
        env = os.environ if env is None else env
        on_space = bool(env.get("SPACE_ID"))
        return cls(
            hub_url=(env.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/"),
            namespace=env.get("MERGEBOT_NAMESPACE") or None,
            demo_token=None if on_space else env.get("MERGEBOT_DEMO_TOKEN") or None,
        )


class Handlers:
    """The event handlers, bound to a client, a config and a Hub reader."""

    def __init__(self, client: MergebotClient, config: AppConfig) -> None:
        self.client, self.config = client, config
        self.hub = HubReader(config.hub_url)
        self.plots = Path(tempfile.gettempdir()) / "mergebot-sweep-plots"
        """Where the sweep view writes its plots (Gradio serves the temp dir's files)."""

    def token(self, oauth: gr.OAuthToken | None) -> str | None:
        """The user's Hub token: the OAuth one, else the demo token (offline demo only)."""
        if oauth is not None and oauth.token and oauth.token != MOCK_OAUTH_TOKEN:
            return oauth.token
        return self.config.demo_token

    # page load --------------------------------------------------------------------------

    def who(self, oauth: gr.OAuthToken | None = None) -> str:
        token = self.token(oauth)
        name = self.hub.user_name(token)
        if name is None:
            return "Not signed in: you can follow public jobs; sign in to check and submit recipes."
        how = "demo user" if oauth is None or oauth.token == MOCK_OAUTH_TOKEN else "signed in"
        return f"Acting as **{name}** ({how})."

    # check ------------------------------------------------------------------------------

    def check(self, recipe: str, oauth: gr.OAuthToken | None = None) -> str:
        """Preflight from headers only: the formula and models, or errors at their line."""
        token = self.token(oauth)
        if not token:
            return "Sign in with Hugging Face to check a recipe: the check reads its models as you."
        try:
            summary = self.client.validate(recipe, token)
        except ApiError as exc:
            if not exc.errors:
                return render.message_md(str(exc))
            summary = {"ok": False, "errors": exc.errors}
        if summary is None:
            summary = preflight.check(recipe, endpoint=self.config.hub_url, token=token)
        if not summary.get("ok", True) or "errors" in summary:
            errors = [self._located(e, recipe) for e in summary.get("errors", [])]
            return render.errors_md(errors, recipe)
        return render.summary_md(summary, self.config.hub_url)

    @staticmethod
    def _located(error: dict, recipe: str) -> dict:
        if error.get("line") is None:
            error = {**error, "line": preflight.line_of(recipe, error.get("loc") or "")}
        return error

    # submit / remerge -------------------------------------------------------------------

    def submit(
        self,
        recipe: str,
        repo_name: str,
        private: bool,
        watch: bool,
        allow_high_perplexity: bool = False,
        force: bool = False,
        publish: str = PUBLISH_CHOICES[0][1],
        max_rank: float | None = None,
        evaluation: str | None = "",
        publish_intermediates: bool = False,
        oauth: gr.OAuthToken | None = None,
    ) -> tuple[str, int | None, int | None, gr.Timer]:
        """(message, recipe id, job id, timer) after POST /api/recipes; ``force`` merges
        even when the recipe and its sources are unchanged since its last merge;
        ``publish``/``max_rank``: a LoRA adapter instead of or beside the full weights;
        ``evaluation``: the sets' YAML (the sweep panel's format; blank for none) every
        merge is scored on; ``publish_intermediates``: a multi-stage recipe's earlier stages
        on branches too."""
        token = self.token(oauth)
        if not token:
            return "Sign in with Hugging Face to submit.", None, None, gr.Timer(active=False)
        try:
            sets = sweep.parse_evaluation(evaluation) if (evaluation or "").strip() else None
        except sweep.InputProblem as exc:
            return render.message_md(str(exc)), None, None, gr.Timer(active=False)
        try:
            answer = self.client.submit(
                recipe,
                token,
                repo_id=repo_name.strip() or None,
                private=private,
                watch=watch,
                allow_high_perplexity=allow_high_perplexity,
                force=bool(force),
                publish=publish or "full",
                max_rank=None if max_rank is None else int(max_rank),
                evaluation=sets,
                publish_intermediates=bool(publish_intermediates),
            )
        except ApiError as exc:
            if exc.errors:
                errors = [self._located(e, recipe) for e in exc.errors]
                return render.errors_md(errors, recipe), None, None, gr.Timer(active=False)
            return render.message_md(str(exc)), None, None, gr.Timer(active=False)
        message = (
            f"Submitted: recipe {answer['recipe_id']}, job {answer['job_id']}, "
            f"publishing to `{answer.get('repo_id', repo_name)}`."
        )
        return message, answer["recipe_id"], answer["job_id"], gr.Timer(active=True)

    def remerge(
        self, recipe_id: float | None, oauth: gr.OAuthToken | None = None
    ) -> tuple[str, int | None, int | None, gr.Timer]:
        """(message, recipe id, job id, timer) after POST /api/recipes/{id}/remerge."""
        token = self.token(oauth)
        if not recipe_id:
            return "Pick a recipe id from the table first.", None, None, gr.Timer(active=False)
        if not token:
            return "Sign in with Hugging Face to remerge.", None, None, gr.Timer(active=False)
        try:
            answer = self.client.remerge(int(recipe_id), token)
        except ApiError as exc:
            return render.message_md(str(exc)), int(recipe_id), None, gr.Timer(active=False)
        how = "joined the queued job" if answer.get("absorbed") else "queued"
        message = f"Remerge of recipe {int(recipe_id)} {how}: job {answer['job_id']}."
        return message, int(recipe_id), answer["job_id"], gr.Timer(active=True)

    # sweeps -----------------------------------------------------------------------------

    def submit_sweep(
        self,
        recipe: str,
        repo_name: str,
        private: bool,
        axes: str,
        evaluation: str,
        metric: str,
        publish: str,
        oauth: gr.OAuthToken | None = None,
    ) -> tuple[str, int | None, gr.Timer]:
        """(message, sweep id, timer) after POST /api/sweeps."""
        token = self.token(oauth)
        if not token:
            return "Sign in with Hugging Face to submit a sweep.", None, gr.Timer(active=False)
        try:
            answer = self.client.submit_sweep(
                recipe, token, axes=sweep.parse_axes(axes),
                evaluation=sweep.parse_evaluation(evaluation), repo_id=repo_name.strip() or None,
                private=private, metric=metric.strip() or None, publish=publish or "best")
        except sweep.InputProblem as exc:
            return render.message_md(str(exc)), None, gr.Timer(active=False)
        except ApiError as exc:
            if exc.errors:
                errors = [self._located(e, recipe) for e in exc.errors]
                return render.errors_md(errors, recipe), None, gr.Timer(active=False)
            return render.message_md(str(exc)), None, gr.Timer(active=False)
        message = (f"Sweep {answer['sweep_id']}: {len(answer['variants'])} variants "
                   f"({', '.join(answer['variants'])}), publishing to `{answer['repo_id']}`.")
        return message, answer["sweep_id"], gr.Timer(active=True)

    def sweep(
        self, sweep_id: float | None, oauth: gr.OAuthToken | None = None
    ) -> tuple[str, str | None, gr.Timer]:
        """(table, plot, timer) of the sweep followed; polling goes on until it ends."""
        if not sweep_id:
            return "No sweep yet.", None, gr.Timer(active=False)
        try:
            found = self.client.sweep(int(sweep_id), self.token(oauth))
        except ApiError as exc:
            return render.message_md(str(exc)), None, gr.Timer(active=False)
        running = found["status"] not in sweep.SWEEP_FINISHED
        return (sweep.sweep_md(found, self.config.hub_url), sweep.sweep_plot(found, self.plots),
                gr.Timer(self.config.poll_seconds, active=running))

    # job view ---------------------------------------------------------------------------

    def job(
        self, recipe_id: float | None, job_id: float | None, oauth: gr.OAuthToken | None = None
    ) -> tuple[str, str, str, int | None, gr.Timer]:
        """(status, log tail, card, job id, timer) of the job followed.

        With a recipe id, the job shown is that recipe's newest one, so a remerge that a
        source push triggers appears by itself; polling goes on while the recipe watches
        its sources or a job is unfinished.
        """
        token = self.token(oauth)
        try:
            watching = False
            if recipe_id:
                recipe = self.client.recipe(int(recipe_id), token)
                watching = bool(recipe.get("watch"))
                if recipe.get("jobs"):
                    job_id = recipe["jobs"][0]["id"]
            if not job_id:
                return "No job yet.", "", "", None, gr.Timer(WATCH_POLL_SECONDS, active=watching)
            job = self.client.job(int(job_id), token)
        except ApiError as exc:
            return render.message_md(str(exc)), "", "", None, gr.Timer(active=False)
        log = job.get("log") or []
        log_text = "\n".join(log) if isinstance(log, list) else str(log)
        card = ""
        if job.get("status") in ("succeeded", "skipped") and job.get("commit"):
            readme = self.hub.model_card(job["repo_id"], job["commit"], token)
            card = render.card_md(readme) if readme else "The model card could not be read."
            card = f"#### Model card of `{job['repo_id']}`\n\n{card}"
        finished = job.get("status") in render.FINISHED
        if not finished:
            timer = gr.Timer(self.config.poll_seconds, active=True)
        else:  # a watched recipe may get a remerge: look again, less often
            timer = gr.Timer(WATCH_POLL_SECONDS, active=watching)
        if not card:  # a published job's card has its own Checks section
            card = render.checks_md(log).lstrip()
        return render.job_md(job, self.config.hub_url), log_text, card, job["id"], timer

    # history ----------------------------------------------------------------------------

    def history(self, oauth: gr.OAuthToken | None = None) -> tuple[str, list[list]]:
        """(caption, rows): your recipes when signed in, else everyone's public ones."""
        token = self.token(oauth)
        owner = self.hub.user_name(token)
        try:
            recipes = self.client.recipes(owner, token)
        except ApiError as exc:
            return render.message_md(str(exc)), []
        caption = "Public recipes"
        if owner:  # remerging is for a recipe's owner
            caption = (f"Recipes of **{owner}** · select *{render.REMERGE}* in a row to "
                       "merge that recipe again")
        return caption, render.history_rows(recipes)

    def pick(self, evt: gr.SelectData) -> int | None:
        """The recipe id of the history row whose action cell was selected, else None."""
        row = evt.row_value or []
        if evt.value != render.REMERGE or not row:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            return None


def build_app(client: MergebotClient, config: AppConfig | None = None) -> gr.Blocks:
    """The Blocks app; launch it, or serve it with :class:`spaces_app.mount.GradioASGI`."""
    config = config or AppConfig()
    h = Handlers(client, config)
    choices = examples(*config.example_models, layers=config.example_layers)
    by_label = {e.label: e.text for e in choices}
    namespace = config.namespace or "the bot's namespace"

    with gr.Blocks(title="mergebot") as blocks:
        with gr.Row():
            gr.Markdown(
                "# mergebot\nWrite a [mergekit](https://github.com/arcee-ai/mergekit) recipe, "
                "check it in seconds from the safetensors headers, and get a merged model "
                "repo with a card that records every source revision. Watched recipes are "
                "merged again when a source changes."
            )
            if login_available(config):
                with gr.Column(scale=0, min_width=240):
                    gr.LoginButton()
        who = gr.Markdown(elem_id="who")
        with gr.Row():
            with gr.Column(scale=1):
                example = gr.Dropdown(
                    list(by_label),
                    value=choices[0].label,
                    label="Start from an example",
                    elem_id="example",
                )
                recipe = gr.Code(
                    choices[0].text,
                    language="yaml",
                    label="Recipe (mergekit YAML)",
                    lines=16,
                    elem_id="recipe",
                )
                check_btn = gr.Button("Check", variant="secondary", elem_id="check")
                check_out = gr.Markdown(elem_id="check-result")
                repo_name = gr.Textbox(
                    "merged-model",
                    label=f"Target repo: a name in {namespace}, or owner/name",
                    elem_id="repo-name",
                )
                with gr.Row():
                    private = gr.Checkbox(False, label="private")
                    watch = gr.Checkbox(True, label="remerge when a source changes")
                    allow_high = gr.Checkbox(
                        False, label="publish even if its perplexity is far above the sources'"
                    )
                    force = gr.Checkbox(
                        False, label="force a new merge (even if nothing changed)",
                        elem_id="force",
                    )
                with gr.Row():
                    publish = gr.Radio(PUBLISH_CHOICES, value="full", label="Publish",
                                       elem_id="publish")
                    max_rank = gr.Number(64, label="Adapter max rank", precision=0,
                                         elem_id="max-rank")
                intermediates = gr.Checkbox(
                    False, label="publish intermediates (multi-stage recipes: each earlier "
                                 "stage on a branch stage-<name>)", elem_id="intermediates")
                with gr.Accordion("Evaluate on (optional)", open=False):
                    submit_eval = gr.Code("", language="yaml",
                                          label="Evaluation sets, as in the sweep panel: every "
                                                "merge is scored, the card gets the table",
                                          lines=6, elem_id="submit-evaluation")
                submit_btn = gr.Button("Submit", variant="primary", elem_id="submit")
                submit_out = gr.Markdown(elem_id="submit-result")
                with gr.Accordion("Sweep: find α by evaluating variants", open=False):
                    axes = gr.Textbox(
                        "models[1].parameters.weight = 0.1, 0.3, 0.5",
                        label="Values to try: a YAML path of the recipe = values (one or two "
                              "lines)", lines=2, elem_id="sweep-axes")
                    evaluation = gr.Code(sweep.EVALUATION_EXAMPLE, language="yaml",
                                         label="Evaluation sets (pasted texts or a Hub dataset)",
                                         lines=8, elem_id="sweep-evaluation")
                    with gr.Row():
                        metric = gr.Textbox("", label="Pick the best by perplexity on "
                                                      "(default: the first set)",
                                            elem_id="sweep-metric")
                        sweep_publish = gr.Radio(["best", "branches"], value="best",
                                           label="Publish the best, or every variant on a "
                                                 "branch (the best on main)")
                    sweep_btn = gr.Button("Submit sweep", variant="primary",
                                          elem_id="submit-sweep")
            with gr.Column(scale=1):
                with gr.Row():
                    recipe_id = gr.Number(None, label="Recipe", precision=0, elem_id="recipe-id")
                    job_id = gr.Number(None, label="Job", precision=0, elem_id="job-id")
                    follow_btn = gr.Button("Follow", elem_id="follow")
                job_out = gr.Markdown("Submit a recipe to follow its job here.", elem_id="job")
                log_out = gr.Textbox(label="Log", lines=5, max_lines=10, elem_id="log")
                card_out = gr.Markdown(elem_id="card", label="Model card")
                with gr.Row():
                    sweep_id = gr.Number(None, label="Sweep", precision=0, elem_id="sweep-id")
                    sweep_follow = gr.Button("Follow sweep", elem_id="follow-sweep")
                sweep_out = gr.Markdown(elem_id="sweep")
                sweep_plot = gr.Image(label="Perplexity against the swept value",
                                      type="filepath", interactive=False,
                                      elem_id="sweep-plot")
        with gr.Accordion("History", open=True):
            caption = gr.Markdown()
            table = gr.Dataframe(
                headers=render.HISTORY_HEADERS, interactive=False, elem_id="history"
            )
            remerge_out = gr.Markdown(elem_id="remerge-result")
            with gr.Row(visible=False):  # the named API's inputs; people use the rows
                pick = gr.Number(None, label="Recipe to remerge", precision=0)
                refresh_btn = gr.Button("Refresh")
                remerge_btn = gr.Button("Remerge")
        timer = gr.Timer(config.poll_seconds, active=False)
        sweep_timer = gr.Timer(config.poll_seconds, active=False)
        history_timer = gr.Timer(HISTORY_POLL_SECONDS)

        follow_outputs = [job_out, log_out, card_out, job_id, timer]
        hidden = {"api_visibility": "private"}
        blocks.load(h.who, None, who, api_name="on_load_who", **hidden)
        blocks.load(h.history, None, [caption, table], api_name="on_load_history", **hidden)
        example.change(
            lambda label: by_label[label], example, recipe, api_name="on_example", **hidden
        )
        check_btn.click(h.check, recipe, check_out, api_name="check")
        check_btn.click(lambda: "", None, submit_out, api_name="clear_submit", **hidden)
        submit_btn.click(lambda: "", None, check_out, api_name="clear_check", **hidden)
        submit_btn.click(
            h.submit,
            [recipe, repo_name, private, watch, allow_high, force, publish, max_rank,
             submit_eval, intermediates],
            [submit_out, recipe_id, job_id, timer],
            api_name="submit",
        ).then(h.job, [recipe_id, job_id], follow_outputs, api_name="after_submit", **hidden)
        follow_btn.click(h.job, [recipe_id, job_id], follow_outputs, api_name="job")
        sweep_outputs = [sweep_out, sweep_plot, sweep_timer]
        sweep_btn.click(
            h.submit_sweep, [recipe, repo_name, private, axes, evaluation, metric, sweep_publish],
            [submit_out, sweep_id, sweep_timer], api_name="submit_sweep",
        ).then(h.sweep, sweep_id, sweep_outputs, api_name="after_sweep", **hidden)
        sweep_follow.click(h.sweep, sweep_id, sweep_outputs, api_name="sweep")
        sweep_timer.tick(h.sweep, sweep_id, sweep_outputs, api_name="on_sweep_tick", **hidden)
        timer.tick(h.job, [recipe_id, job_id], follow_outputs, api_name="on_tick", **hidden)
        refresh_btn.click(h.history, None, [caption, table], api_name="history")
        history_timer.tick(h.history, None, [caption, table], api_name="on_history_tick",
                           show_progress="hidden", **hidden)
        remerge_outputs = [remerge_out, recipe_id, job_id, timer]
        remerge_btn.click(h.remerge, pick, remerge_outputs, api_name="remerge").then(
            h.job, [recipe_id, job_id], follow_outputs, api_name="after_remerge", **hidden
        )
        table.select(h.pick, None, pick, api_name="on_pick", **hidden).success(
            h.remerge, pick, remerge_outputs, api_name="on_row_remerge", **hidden
        ).then(h.job, [recipe_id, job_id], follow_outputs, api_name="after_row_remerge",
               **hidden)
    return blocks


def login_available(config: AppConfig) -> bool:
    """Show a sign-in button? Only on a Space: elsewhere Gradio's login is a mock that
    signs in as whoever the local token belongs to, which a button would misrepresent."""
    if config.login is not None:
        return config.login
    return bool(os.environ.get("SPACE_ID"))


def build_space_app(env: Mapping[str, str] | None = None) -> gr.Blocks:
    """The Space's app: the bot at MERGEBOT_API_URL, the rest from :meth:`AppConfig.from_env`."""
    env = os.environ if env is None else env
    url = env.get("MERGEBOT_API_URL")
    if not url:
        raise SystemExit("set MERGEBOT_API_URL to the URL of a running `mergebot serve`")
    return build_app(MergebotClient(url), AppConfig.from_env(env))


def main() -> None:
    """Launch the Space app (``python -m spaces_app.app``)."""
    build_space_app().launch(theme=THEME, css=CSS)  # a Space sets GRADIO_SERVER_NAME=0.0.0.0


if __name__ == "__main__":
    main()
