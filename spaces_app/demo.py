"""The offline demo: a local Hub with generated models, the bot, and the UI, on loopback.

    python -m spaces_app.demo [--port 7860] [--hub-port 8765] [--home .mergebot-demo]
    python -m spaces_app.demo push-donor 1        # a new commit on demo/donor-1's main

The first run generates a small llama-shaped base and two fine-tuned-like donors and
uploads them to ``demo/base``, ``demo/donor-1`` and ``demo/donor-2`` on ``mergebot
localhub`` (data under ``HOME/hub``; it survives restarts). The Hub keeps its port from
run to run (stored in ``HOME/demo.json``), so the links in earlier model cards keep
working. Then the bot (REST API, Hub webhook, one worker) serves with the UI at ``/`` and
the URL is printed, with commands that work as printed (absolute paths to this Python).
Two local users: ``demo`` (who submits; the UI acts as this user through
``MERGEBOT_DEMO_TOKEN`` semantics, so no sign-in button is shown) and ``mergebot`` (the
bot, which publishes to ``mergebot/...``). Tokens are fixed local strings, valid only on
this local Hub; the printed ``mergebot submit`` command uses the demo user's.

``push-donor N`` uploads new weights to ``demo/donor-N``; the local Hub calls the bot's
webhook and every watched recipe using that donor is merged again. Nothing here reaches
the internet: every URL is 127.0.0.1.

If the bot service (``bot.server``) cannot be imported, the UI is served alone: Check
works, Submit says the bot is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
from pathlib import Path

DEMO_USER, DEMO_TOKEN = "demo", "hf_demo_user_token"
BOT_USER, BOT_TOKEN = "mergebot", "hf_demo_mergebot_token"
WEBHOOK_SECRET = "demo-webhook-secret"
REPOS = ("demo/base", "demo/donor-1", "demo/donor-2")
LICENSES = ("apache-2.0", "apache-2.0", "mit")
"""donor-2's license differs on purpose, so Check shows the license warning."""
STATE = "demo.json"
DEFAULT_HUB_PORT = 8765
RECIPE_FILE = "seed-recipe.yml"
"""The seed recipe, written to HOME for the printed ``mergebot submit`` command."""
ROOT = Path(__file__).resolve().parents[1]
DEMO_LAYERS = 4
"""Decoder layers of the generated models (hidden 256, vocab 1000: about 1.4M parameters)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_state(home: Path) -> dict:
    """The demo's state (``hub_url``, ``hub_port``, ``url``, ``pushes``); {} before a run."""
    try:
        state = json.loads((home / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def hub_port_for(home: Path, requested: int | None) -> int:
    """The Hub's port: as asked, else the one an earlier run used (its cards link
    there), else :data:`DEFAULT_HUB_PORT`; 0 means any free port."""
    if requested is not None:
        return requested or free_port()
    stored = read_state(home).get("hub_port")
    return stored if isinstance(stored, int) and stored > 0 else DEFAULT_HUB_PORT


def commands(home: Path, url: str) -> dict[str, str]:
    """Shell commands that work as printed, from any directory and without an activated
    venv: push a donor, and submit the seed recipe as the demo user."""
    python = shlex.quote(sys.executable)
    mergebot_exe = Path(sys.executable).with_name("mergebot")
    mergebot = shlex.quote(str(mergebot_exe)) if mergebot_exe.exists() else f"{python} -m bot.cli"
    root, where = shlex.quote(str(ROOT)), shlex.quote(str(home))
    return {
        "push": f"cd {root} && {python} -m spaces_app.demo push-donor 1 --home {where}",
        "submit": (
            f"cd {root} && HF_TOKEN={DEMO_TOKEN} MERGEBOT_URL={url} {mergebot} submit "
            f"{shlex.quote(str(home / RECIPE_FILE))} --repo cli-seed-merge --watch --wait"
        ),
    }


def isolate(home: Path, hub_url: str) -> None:
    """Env for this process, set before huggingface_hub and gradio are imported.

    HF_TOKEN is the demo user's: Gradio's mock login asks the (local) Hub who it is.
    """
    os.environ.update(
        {
            "HF_ENDPOINT": hub_url,
            "HF_TOKEN": DEMO_TOKEN,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_SSR_MODE": "False",
        }
    )
    os.environ.pop("SPACE_ID", None)


def demo_shape():
    """The generated models' :class:`~merge_engine.synth.LlamaShape`."""
    from merge_engine.synth import LlamaShape

    return LlamaShape(hidden=256, intermediate=512, layers=DEMO_LAYERS, vocab=1000)


def seed(home: Path, hub_url: str) -> None:
    """Generate and upload the three source models, once (skipped when present)."""
    from huggingface_hub import HfApi

    from merge_engine.synth import write_family

    api = HfApi(endpoint=hub_url, token=DEMO_TOKEN)
    if all(api.repo_exists(repo) for repo in REPOS):
        return
    models = home / "models"
    if not (models / "donor-2" / "config.json").exists():
        print(f"generating a small llama base and two donors in {models}", file=sys.stderr)
        write_family(models, demo_shape())
    folders = ("base", "donor-1", "donor-2")
    for repo, folder, license_id in zip(REPOS, folders, LICENSES, strict=True):
        path = models / folder
        (path / "README.md").write_text(
            f"---\nlicense: {license_id}\nlibrary_name: transformers\n---\n\n# {repo}\n\n"
            "A generated llama-shaped model for the mergebot demo.\n"
        )
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=path, commit_message="generated weights")
        print(f"uploaded {repo}", file=sys.stderr)


def push_donor(home: Path, number: int) -> int:
    """Upload new weights to ``demo/donor-N`` on the running demo's Hub."""
    state_file = home / STATE
    state = read_state(home)
    if "hub_url" not in state:
        print(f"no demo state in {home}: start `{shlex.quote(sys.executable)} -m "
              f"spaces_app.demo --home {shlex.quote(str(home))}` first", file=sys.stderr)
        return 2
    if number not in (1, 2):
        print("push-donor takes 1 or 2 (demo/donor-1 or demo/donor-2)", file=sys.stderr)
        return 2
    isolate(home, state["hub_url"])
    from huggingface_hub import HfApi

    from merge_engine.synth import write_model

    api = HfApi(endpoint=state["hub_url"], token=DEMO_TOKEN)
    pushes = state.get("pushes", 0) + 1
    out = home / "pushes" / f"donor-{number}-{pushes}"
    write_model(out, demo_shape(), donor=number + 100 * pushes)  # same base, a new fine-tune delta
    info = api.upload_folder(
        repo_id=f"demo/donor-{number}",
        folder_path=out,
        allow_patterns=["*.safetensors", "*.json"],
        commit_message=f"new weights (push {pushes})",
    )
    state["pushes"] = pushes
    state_file.write_text(json.dumps(state))
    print(f"pushed demo/donor-{number} at {info.oid}; watched recipes will be merged again")
    return 0


def serve(home: Path, port: int, hub_port: int | None) -> int:
    """Start the local Hub, seed it, and serve the bot with the UI until interrupted."""
    hub_port = hub_port_for(home, hub_port)
    port = port or free_port()
    hub_url = f"http://127.0.0.1:{hub_port}"
    url = f"http://127.0.0.1:{port}"
    isolate(home, hub_url)

    import uvicorn

    from bot.localhub.server import serve_in_thread

    users = {DEMO_USER: DEMO_TOKEN, BOT_USER: BOT_TOKEN}
    try:
        hub = serve_in_thread(home / "hub", users, port=hub_port)
    except OSError as exc:
        print(f"the demo's Hub cannot listen on 127.0.0.1:{hub_port} ({exc.strerror}); stop "
              "what uses it, or pass --hub-port (earlier cards' links point at this port)",
              file=sys.stderr)
        return 1
    state = {**read_state(home), "hub_url": hub.url, "hub_port": hub_port, "url": url}
    (home / STATE).write_text(json.dumps(state))
    seed(home, hub.url)
    write_seed_recipe(home)
    app = build_asgi(home, hub.url, url)
    run = commands(home, url)
    print(
        f"\nmergebot demo: open {url}\n"
        f"  local Hub: {hub.url}/{DEMO_USER} (users: {DEMO_USER}, {BOT_USER}; the same port "
        "on every start)\n"
        "  1. Check and Submit the seed recipe (it merges demo/donor-1 and demo/donor-2 "
        "onto demo/base).\n"
        "  2. Then, in another terminal, push a change to a donor and watch the remerge:\n"
        f"     {run['push']}\n"
        f"  3. Or act as the demo user ({DEMO_USER}) from the command line:\n"
        f"     {run['submit']}\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    finally:
        hub.stop()
    return 0


def write_seed_recipe(home: Path) -> Path:
    """The UI's first example (the seed recipe on the demo's models), as a file."""
    from spaces_app.examples import examples

    path = home / RECIPE_FILE
    path.write_text(examples(*REPOS, layers=DEMO_LAYERS)[0].text)
    return path


def build_asgi(home: Path, hub_url: str, url: str):
    """The bot's app with the UI at /, or the UI alone when the bot cannot be imported."""
    from functools import partial

    from spaces_app.mount import GradioASGI, ui_factory

    demo_ui = partial(
        ui_factory,
        demo_token=DEMO_TOKEN,
        example_models=REPOS,
        example_layers=DEMO_LAYERS,
        poll_seconds=1.0,
    )
    try:
        from bot.server import create_app
        from bot.settings import Settings
    except ImportError as exc:
        print(
            f"the bot service is not importable ({exc}); serving the UI alone: Check works, "
            "Submit will say the bot is unreachable",
            file=sys.stderr,
        )
        from spaces_app.app import AppConfig, build_app
        from spaces_app.client import MergebotClient

        config = AppConfig(hub_url=hub_url, demo_token=DEMO_TOKEN, example_models=REPOS,
                           example_layers=DEMO_LAYERS)
        holder: dict = {}
        client = MergebotClient(lambda: holder["asgi"].base_url())
        holder["asgi"] = asgi = GradioASGI(build_app(client, config))
        return asgi
    settings = Settings(
        home=home / "bot",
        endpoint=hub_url,
        token=BOT_TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        public_url=url,
        namespace=BOT_USER,
        poll_seconds=0.5,
        webhook_sync_seconds=10.0,
    )
    return create_app(settings, workers=1, ui=demo_ui)


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m spaces_app.demo", description=summary)
    parser.add_argument("--home", type=Path, default=Path(".mergebot-demo"), help="state dir")
    parser.add_argument("--port", type=int, default=7860, help="the UI and bot (0: any free)")
    parser.add_argument(
        "--hub-port",
        type=int,
        default=None,
        help=f"the local Hub (default: the port of the last run, else {DEFAULT_HUB_PORT}; "
        "0: any free)",
    )
    sub = parser.add_subparsers(dest="command")
    push = sub.add_parser("push-donor", help="push new weights to demo/donor-N")
    push.add_argument("number", type=int, choices=(1, 2))
    push.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    if args.command == "push-donor":
        return push_donor(home, args.number)
    return serve(home, args.port, args.hub_port)


if __name__ == "__main__":
    raise SystemExit(main())
