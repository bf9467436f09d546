"""Hub-style HTTP errors: a status, a message and the `X-Error-Code` the client maps to a type.

`huggingface_hub.utils.hf_raise_for_status` turns `X-Error-Code` into typed exceptions
(RepoNotFound -> RepositoryNotFoundError, RevisionNotFound, EntryNotFound, GatedRepo), so
every handler raises one of these and `app.py` renders it in one place.
"""

from __future__ import annotations


class HubError(Exception):
    """An HTTP error answer: `status`, `message`, optional `code`, headers and body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict:
        """JSON body: `{"error": message}` plus any extra fields (e.g. the 409's `url`)."""
        return {"error": self.message, **self.extra}

    def response_headers(self) -> dict[str, str]:
        """Headers for the error response (`X-Error-Message` is ASCII-safe)."""
        safe = self.message.encode("ascii", "replace").decode().replace("\n", " ")
        headers = {"X-Error-Message": safe, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return headers


def repo_not_found(anonymous: bool = False) -> HubError:
    """404 `RepoNotFound` (401 when anonymous, like the Hub): missing or someone else's private."""
    return HubError(401 if anonymous else 404, "Repository not found", "RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def entry_not_found(path: str, commit: str | None = None) -> HubError:
    """404 `EntryNotFound`; carries `X-Repo-Commit` so the client can cache the absence."""
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)


def bad_request(message: str) -> HubError:
    return HubError(400, message)


def too_large(limit: int) -> HubError:
    return HubError(413, f"Payload Too Large: the request body is over {limit:,} bytes.")


def unauthorized(message: str = "Invalid username or password.") -> HubError:
    return HubError(401, message)


def forbidden(message: str) -> HubError:
    return HubError(403, message)


INVALID_TOKEN = "Invalid credentials in Authorization header"
