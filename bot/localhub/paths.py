"""File paths inside a repo, checked as the Hub checks them before a commit.

A path is refused (400) unless it is a non-empty relative path of plain segments: no NUL
or other control character, no backslash, no leading ``/``, no empty, ``.`` or ``..``
segment, no segment over 255 bytes, and nothing under a ``.git/`` or ``.cache/`` folder
(huggingface_hub's ``FORBIDDEN_FOLDERS``).
"""

from __future__ import annotations

import re

from . import errors

FORBIDDEN_FOLDERS = (".git", ".cache")
MAX_SEGMENT_BYTES = 255
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_path(path: object) -> str:
    """``path`` when the Hub would accept it as a file path in a repo; 400 otherwise."""
    if not isinstance(path, str) or not path:
        raise errors.bad_request(f"Invalid path in repo: {path!r} (expected a file path)")
    found = _BAD_CHARS.search(path)
    if found:
        what = "a backslash" if found.group() == "\\" else "a control character"
        raise errors.bad_request(f"Invalid path in repo: {path!r} contains {what}")
    if path.startswith("/"):
        raise errors.bad_request(f"Invalid path in repo: {path!r} must be relative")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise errors.bad_request(f"Invalid path in repo: {path!r} has an empty, '.' or "
                                     "'..' segment")
        try:
            size = len(part.encode())
        except UnicodeEncodeError:
            raise errors.bad_request(f"Invalid path in repo: {path!r} is not UTF-8") from None
        if size > MAX_SEGMENT_BYTES:
            raise errors.bad_request(f"Invalid path in repo: a segment of {path!r} is over "
                                     f"{MAX_SEGMENT_BYTES} bytes")
        if part in FORBIDDEN_FOLDERS:
            raise errors.bad_request(f"Invalid path in repo: {path!r} is under a '{part}/' "
                                     "folder")
    return path
