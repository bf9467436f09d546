"""The bot as a Hugging Face Space (Docker SDK): the Space's environment, in the bot's terms.

    env, notices = space_environment(os.environ)      # then Settings.from_env(env)

A Space gives its container ``SPACE_ID``, ``SPACE_HOST`` (``owner-name.hf.space``, a
comma-separated list when a custom domain is added), ``SYSTEM=spaces``, its secrets and
variables as environment variables, and, with ``hf_oauth: true`` in the README,
``OAUTH_CLIENT_ID``, ``OAUTH_CLIENT_SECRET``, ``OAUTH_SCOPES`` and ``OPENID_PROVIDER_URL``
(Gradio's "Sign in with Hugging Face" reads those itself). Persistent storage, when the
owner adds it, is a volume mounted at ``/data``. The mapping, where a variable of the bot's
own is not already set (an explicit one always wins):

    /data (a writable directory)   -> MERGEBOT_HOME=/data/mergebot
    SPACE_HOST (its first name)    -> MERGEBOT_PUBLIC_URL=https://SPACE_HOST
    HF_TOKEN, WEBHOOK_SECRET       the Space's secrets of those names, used as they are

Nothing here reads configuration for the bot: :class:`bot.settings.Settings` reads the
mapped environment. ``notices`` are plain sentences about what will not work (no
persistent storage: the state is lost on restart; a missing secret; OAuth not enabled);
the bot logs them and shows them on ``/status``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA = Path("/data")
"""Where a Space mounts its persistent storage."""
STATE_DIR = "mergebot"
"""The bot's state directory inside the persistent storage."""
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")


def public_url(space_host: str) -> str:
    """``https://`` + the Space's own host (the first of a custom-domain list)."""
    return "https://" + space_host.split(",")[0].strip().rstrip("/")


def persistent(data: Path) -> bool:
    """Is ``data`` a directory the bot can write (the Space has persistent storage)?"""
    return data.is_dir() and os.access(data, os.W_OK | os.X_OK)


def space_environment(
    env: Mapping[str, str], data: Path = DATA
) -> tuple[dict[str, str], list[str]]:
    """``env`` with the Space's variables mapped onto the bot's, and the notices."""
    mapped = dict(env)
    notices: list[str] = []
    if not mapped.get("MERGEBOT_HOME") and persistent(data):
        mapped["MERGEBOT_HOME"] = str(data / STATE_DIR)
    home = Path(mapped.get("MERGEBOT_HOME") or "mergebot-home")
    if not persistent(data) or not home.resolve().is_relative_to(data.resolve()):
        notices.append(
            f"No persistent storage: the bot's state (recipes, the job queue, job history) "
            f"is in {home}, outside {data}, and is lost when the Space restarts; add "
            "persistent storage in the Space's settings to keep it."
        )
    if not mapped.get("MERGEBOT_PUBLIC_URL") and mapped.get("SPACE_HOST"):
        mapped["MERGEBOT_PUBLIC_URL"] = public_url(mapped["SPACE_HOST"])
    if not mapped.get("HF_TOKEN"):
        notices.append(
            "The Space secret HF_TOKEN is not set: the bot cannot read gated or private "
            "sources, publish merges or register webhooks."
        )
    if not mapped.get("WEBHOOK_SECRET"):
        notices.append(
            "The Space secret WEBHOOK_SECRET is not set: the webhook endpoint refuses "
            "every call and watched recipes are not merged again."
        )
    missing = [name for name in OAUTH_VARIABLES if not mapped.get(name)]
    if mapped.get("SPACE_ID") and missing:
        notices.append(
            f"Sign-in is off: {', '.join(missing)} not set; put `hf_oauth: true` in the "
            "Space's README front matter."
        )
    return mapped, notices
