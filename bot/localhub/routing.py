"""Route tables matched against the raw (still percent-encoded) URL path.

The Hub quotes revisions with `safe=""`, so `refs/pr/1` arrives as `refs%2Fpr%2F1` and must
stay one segment: routing on the decoded path would split it. Patterns are regexes with the
placeholders below; each matched group is percent-decoded before the handler sees it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote

from starlette.responses import Response

from . import errors
from .context import Call

Handler = Callable[[Call], Awaitable[Response]]
RouteSpec = tuple[str, str, Handler]  # ("GET HEAD", pattern, handler)

PLACEHOLDERS = {
    "{kind}": r"(?P<kind>models|datasets)",  # /api/{kind}/...: the repo type, plural
    "{prefix}": r"(?:(?P<prefix>datasets)/)?",  # /{prefix}{repo}/...: "datasets/" or nothing
    "{repo}": r"(?P<ns>[^/]+)/(?P<name>[^/]+?)",
    "{rev}": r"(?P<rev>refs/pr/\d+|refs/convert/\w+|[^/]+)",
    "{path}": r"(?P<path>.+)",
    "{id}": r"(?P<id>[^/]+)",
}


class Router:
    """Compiled route table; `match` returns the handler and decoded params."""

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self._routes = []
        for methods, pattern, handler in routes:
            for key, regex in PLACEHOLDERS.items():
                pattern = pattern.replace(key, regex)
            self._routes.append((set(methods.split()), re.compile(f"^{pattern}$"), handler))

    def match(self, method: str, raw_path: str) -> tuple[Handler, dict[str, str]]:
        """Raise 404 for an unknown path, 405 for a known path with another method."""
        allowed = False
        for methods, regex, handler in self._routes:
            found = regex.match(raw_path)
            if found is None:
                continue
            if method in methods:
                params = {k: unquote(v) for k, v in found.groupdict().items() if v is not None}
                return handler, params
            allowed = True
        if allowed:
            raise errors.HubError(405, f"Method {method} not allowed on {raw_path}")
        raise errors.HubError(404, f"Not found: {raw_path}")
