"""Git/LFS helpers: object ids, LFS pointers, `.gitattributes` rules, signed upload URLs.

Contracts:
- `git_blob_oid(data)` is git's blob sha1 (`sha1(b"blob <size>\\0" + data)`).
- An LFS file's git oid is the oid of its pointer text (`lfs_pointer`), as on the Hub.
- `upload_mode` answers the Hub's preupload question: "lfs" when `.gitattributes` routes the
  path to LFS, when the sample looks binary, or when the file is 10 MB or more.
- `sign`/`verify_signature` make the unauthenticated LFS PUT URL unforgeable (HMAC-SHA256).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_HUB_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model "
    "*.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar "
    "*.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst "
    "*tfevents*"
)
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in _HUB_LFS_PATTERNS.split(" ")
)


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1 of `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in git for an LFS object."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns that `.gitattributes` sends to LFS (`filter=lfs`)."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def matches_lfs(path: str, patterns: list[str]) -> bool:
    """Whether `path` matches a pattern (patterns without '/' match the basename, like git)."""
    basename = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        target = path if "/" in pattern else basename
        if fnmatch.fnmatchcase(target, pattern.replace("**/", "*")):
            return True
    return False


def upload_mode(path: str, size: int, sample: bytes, patterns: list[str]) -> str:
    """ "lfs" or "regular", the Hub's preupload decision for one file."""
    if size == 0:
        return "regular"
    if size >= LFS_SIZE_THRESHOLD or b"\0" in sample or matches_lfs(path, patterns):
        return "lfs"
    return "regular"


def sign(secret: bytes, *parts: str) -> str:
    """HMAC-SHA256 over `parts`, hex."""
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, signature: str, *parts: str) -> bool:
    """Constant-time check of `sign(secret, *parts) == signature`."""
    return hmac.compare_digest(sign(secret, *parts), signature)
