"""Tokens, users and the Hub's visibility rules.

Contracts:
- A request carries `Authorization: Bearer <token>` or nothing (anonymous).
- An unknown token is rejected on every endpoint with 401
  "Invalid credentials in Authorization header", as the Hub does.
- A private repo is invisible to everyone but its owner: 401 (anonymous) or 404 (other user)
  with `X-Error-Code: RepoNotFound`. Public repos are readable by anyone.
- A gated repo's info and tree are visible, but its files need the owner's token (here no
  one else is ever granted access): 401/403 with `X-Error-Code: GatedRepo`.
- Writes need the owner's token: 401 anonymous, 403 another user.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from . import errors
from .storage import RepoMeta


@dataclass(frozen=True)
class User:
    name: str
    token: str

    @property
    def uid(self) -> str:
        return namespace_uid(self.name)


def namespace_uid(name: str) -> str:
    """A stable 24-hex id for a user or namespace, shaped like the Hub's ids."""
    return hashlib.sha1(f"user:{name}".encode()).hexdigest()[:24]


def parse_user(spec: str) -> User:
    """Parse `NAME:TOKEN` (the CLI's `--user`)."""
    name, sep, token = spec.partition(":")
    if not sep or not name or not token:
        raise ValueError(f"expected NAME:TOKEN, got {spec.split(':', 1)[0]!r}:<hidden>")
    return User(name, token)


class Users:
    """The known users, looked up by token in constant time."""

    def __init__(self, users: list[User]) -> None:
        self._users = list(users)

    def names(self) -> list[str]:
        return [user.name for user in self._users]

    def by_token(self, token: str) -> User | None:
        found = None
        for user in self._users:
            if hmac.compare_digest(user.token.encode(), token.encode()):
                found = user
        return found

    def authenticate(self, authorization: str | None) -> User | None:
        """The caller for an `Authorization` header value; raise 401 on a bad token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        user = self.by_token(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise errors.HubError(401, errors.INVALID_TOKEN)
        return user


def can_read(user: User | None, meta: RepoMeta) -> bool:
    return not meta.private or (user is not None and user.name == meta.namespace)


def check_read(user: User | None, meta: RepoMeta | None) -> RepoMeta:
    """Return `meta` if the caller may see it, else raise RepoNotFound."""
    if meta is None or not can_read(user, meta):
        raise errors.repo_not_found(anonymous=user is None)
    return meta


def check_files(user: User | None, meta: RepoMeta | None) -> RepoMeta:
    """Return `meta` if the caller may download its files (visibility, then gating)."""
    meta = check_read(user, meta)
    if meta.gated and (user is None or user.name != meta.namespace):
        raise errors.HubError(
            401 if user is None else 403,
            f"Access to {meta.repo_type} {meta.repo_id} is restricted and you are not in the "
            "authorized list. Ask its owner for access.",
            "GatedRepo",
        )
    return meta


def check_write(user: User | None, meta: RepoMeta | None) -> RepoMeta:
    """Return `meta` if the caller owns it; RepoNotFound when invisible, else 401/403."""
    meta = check_read(user, meta)
    if user is None:
        raise errors.unauthorized()
    if user.name != meta.namespace:
        raise errors.forbidden(f"You don't have the rights to write to {meta.repo_id}")
    return meta


def require_user(user: User | None) -> User:
    if user is None:
        raise errors.unauthorized()
    return user
