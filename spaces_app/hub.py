"""The two things the UI reads from the Hub itself: who a token is, and a model card.

    hub = HubReader("https://huggingface.co")
    hub.user_name(token)                          # "alice", or None
    hub.model_card("mergebot/merged", sha, token) # README.md text, or None

Both are cached per reader: a user name per token for a few minutes, a card per
(repo, commit) while the reader lives (a commit never changes; failures are not cached).
"""

from __future__ import annotations

import threading
import time

import httpx2

WHOAMI_TTL = 300.0
MAX_CARDS = 64


class HubReader:
    """Reads whoami and model cards from the Hub at ``endpoint`` (no tokens are logged)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._names: dict[str, tuple[float, str | None]] = {}
        self._cards: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def user_name(self, token: str | None) -> str | None:
        """The Hub user name of ``token``, or None (no token, invalid, or Hub unreachable)."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._names.get(token)
        if cached and now - cached[0] < WHOAMI_TTL:
            return cached[1]
        try:
            with httpx2.Client(timeout=10.0) as http:
                response = http.get(
                    f"{self.endpoint}/api/whoami-v2",
                    headers={"Authorization": f"Bearer {token}"},
                )
            name = response.json().get("name") if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            return None
        with self._lock:
            self._names[token] = (now, name)
        return name

    def model_card(self, repo_id: str, revision: str, token: str | None) -> str | None:
        """README.md of ``repo_id`` at ``revision``, or None when it cannot be read."""
        key = (repo_id, revision)
        with self._lock:
            if key in self._cards:
                return self._cards[key]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.endpoint}/{repo_id}/resolve/{revision}/README.md"
        try:
            with httpx2.Client(timeout=20.0, follow_redirects=True) as http:
                response = http.get(url, headers=headers)
        except httpx2.HTTPError:
            return None
        if response.status_code != 200:
            return None
        with self._lock:
            if len(self._cards) >= MAX_CARDS:
                self._cards.clear()
            self._cards[key] = response.text
        return response.text
