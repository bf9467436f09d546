"""Model references as mergekit writes them: ``org/name``, ``org/name@rev``, ``model+lora``,
or a local directory.

``parse_ref(text, loc)`` reads the string form; ``parse_ref_value(raw, loc)`` also reads
mergekit's mapping form (``{model: ..., lora: ...}``, each part a string or
``{path, revision}``). ``str(ref)`` is canonical and parses back to an equal ref.

A part is local when it starts with ``/``, ``./``, ``../`` or ``~`` (expanded), or names
an existing directory; then ``@`` is part of the path and there is no revision.
Otherwise it must be a Hub repo id, optionally followed by ``@revision``. Within
``hub_refs_only()`` (a service parsing other people's recipes) no directory is looked up:
a reference means the same whatever folders the machine has. Whether a ref is local is
decided once, when it is made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from merge_engine.errors import RecipeError
from merge_engine.recipe.params import unknown_key

_LOCAL_PREFIXES = ("/", "./", "../", "~")
_HUB_PART = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_NAME = 96
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]|\\")
"""``D:\\models\\x``, ``C:/x``, ``\\\\server\\share``: a drive letter or a backslash."""
_LOCAL_DIRS: ContextVar[bool] = ContextVar("local_dirs", default=True)
_STAGES: ContextVar[StageScope | None] = ContextVar("stages", default=None)


@contextmanager
def hub_refs_only() -> Iterator[None]:
    """Within: references are never resolved against the local file system."""
    token = _LOCAL_DIRS.set(False)
    try:
        yield
    finally:
        _LOCAL_DIRS.reset(token)


@dataclass(frozen=True)
class StageScope:
    """The stages one document of a multi-stage recipe may name as models: a bare name
    (``model: mid``) of an earlier stage is its output directory; ``used`` collects the
    names met, in order."""

    dirs: Mapping[str, str]
    """Earlier stages: name -> the directory that holds (or will hold) its output."""
    others: Mapping[str, str]
    """This stage and the later ones: name -> its label, ``stage 'x' (document 3)``."""
    own: str | None
    """This stage's name."""
    used: list[str] = field(default_factory=list)

    def knows(self, text: str) -> bool:
        """Does ``text`` name a stage (a stage's name shadows a directory of that name)?"""
        name = text.partition("@")[0]
        return name in self.dirs or name in self.others

    def resolve(self, text: str, loc: str, revision: str | None, lora: bool) -> ModelRef | None:
        """The output directory of the stage ``text`` names; None when it names none."""
        name, at, _ = text.partition("@")
        if name in self.dirs:
            if at or revision is not None:
                raise RecipeError(loc, f"{name!r} is a stage of this recipe; a stage's output "
                                       "has no revision")
            if lora:
                raise RecipeError(loc, f"{name!r} is a stage of this recipe, a whole model, "
                                       "not a LoRA adapter")
            if name not in self.used:
                self.used.append(name)
            return ModelRef(self.dirs[name], local=True)
        if name == self.own:
            raise RecipeError(loc, f"{name!r} is this stage itself; a stage cannot read its "
                                   "own output")
        if name in self.others:
            raise RecipeError(loc, f"{name!r} is {self.others[name]}, which runs later; stages "
                                   "run in document order, so a stage can use only those above "
                                   "it (this also rules out cycles)")
        if "/" not in name and not _looks_local(text):
            known = ", ".join(repr(n) for n in self.dirs) or "none"
            raise RecipeError(loc, f"{name!r} is not a stage above this one (those are: "
                                   f"{known}); a Hub repo needs its owner, as in 'owner/{name}'")
        return None


@contextmanager
def stage_scope(scope: StageScope) -> Iterator[StageScope]:
    """Within: references are read as in one document of a multi-stage recipe."""
    token = _STAGES.set(scope)
    try:
        yield scope
    finally:
        _STAGES.reset(token)


def _is_dir(path: str) -> bool:
    return _LOCAL_DIRS.get() and os.path.isdir(path)


def _looks_local(path: str) -> bool:
    return path.startswith(_LOCAL_PREFIXES) or path in (".", "..") or _is_dir(path)


def is_hub_id(text: str) -> bool:
    """True for a syntactically valid Hub repo id: ``name`` or ``org/name``."""
    parts = text.split("/")
    if len(parts) > 2 or "--" in text or ".." in text:
        return False
    for part in parts:
        if not _HUB_PART.fullmatch(part) or part[0] in "-." or part[-1] in "-.":
            return False
    return all(len(part) <= _MAX_NAME for part in parts) and not text.endswith(".git")


@dataclass(frozen=True)
class ModelRef:
    """A model: a local directory path or a Hub repo id, an optional revision, an optional
    LoRA adapter (itself a ModelRef without a LoRA)."""

    path: str
    revision: str | None = None
    lora: ModelRef | None = None
    local: bool | None = field(default=None, repr=False)
    """A local directory rather than a Hub repo; None: decided from ``path`` when made."""

    def __post_init__(self) -> None:
        if self.local is None:
            object.__setattr__(self, "local", _looks_local(self.path)
                               or not is_hub_id(self.path))
        if self.revision is not None and self.is_local:
            raise ValueError(f"local directory {self.path!r} cannot have a revision")
        if self.lora is not None and self.lora.lora is not None:
            raise ValueError("a LoRA adapter cannot itself carry a LoRA")

    @property
    def is_local(self) -> bool:
        """True for a local directory reference (not a Hub repo)."""
        return bool(self.local)

    def __str__(self) -> str:
        text = self.path if self.revision is None else f"{self.path}@{self.revision}"
        return text if self.lora is None else f"{text}+{self.lora}"


def _neither(text: str, loc: str) -> RecipeError:
    if _WINDOWS_PATH.search(text):
        return RecipeError(loc, f"{text!r} is a Windows path, a directory on another machine; "
                                "use the model's Hub repo id (org/name) instead")
    return RecipeError(loc, f"{text!r} is neither a local directory nor a Hub repo id (org/name)")


def _parse_part(text: str, loc: str, revision: str | None = None,
                lora: bool = False) -> ModelRef:
    """One side of ``model+lora``; ``revision`` comes from the mapping form."""
    if not text:
        raise RecipeError(loc, "empty model reference")
    scope = _STAGES.get()
    if scope is not None and (stage := scope.resolve(text, loc, revision, lora)) is not None:
        return stage
    if _looks_local(text):
        if revision is not None:
            raise RecipeError(loc, f"local directory {text!r} cannot have a revision")
        return ModelRef(os.path.expanduser(text))
    name, at, rev = text.partition("@")
    if at:
        if revision is not None:
            raise RecipeError(loc, f"{text!r} gives a revision twice")
        if not rev:
            raise RecipeError(loc, f"{text!r} has an empty revision after '@'")
        if "@" in rev:
            raise RecipeError(loc, f"{text!r} has more than one '@'")
        revision = rev
    if not is_hub_id(name):
        raise _neither(text, loc)
    if revision is not None and not revision.strip():
        raise RecipeError(loc, "empty revision")
    return ModelRef(name, revision)


def parse_ref(text: str, loc: str = "") -> ModelRef:
    """Parse ``org/name[@rev][+lora[@rev]]`` or a local directory; RecipeError at ``loc``."""
    if not isinstance(text, str):
        raise RecipeError(loc, f"expected a model reference string, got {text!r}")
    scope = _STAGES.get()
    if _is_dir(text) and not (scope is not None and scope.knows(text)):
        return ModelRef(text)
    parts = text.split("+")
    if len(parts) > 2:
        raise RecipeError(loc, f"{text!r} has more than one '+' (expected model+lora)")
    model = _parse_part(parts[0], loc)
    if len(parts) == 1:
        return model
    return ModelRef(model.path, model.revision, _parse_part(parts[1], loc, lora=True))


def _parse_path_value(raw: object, loc: str, lora: bool = False) -> ModelRef:
    """mergekit's ModelPath: ``"name[@rev]"`` or ``{path: ..., revision: ...}``."""
    if isinstance(raw, str):
        return _parse_part(raw, loc, lora=lora)
    if isinstance(raw, dict):
        for key in raw:
            if key not in ("path", "revision"):
                raise unknown_key(f"{loc}.{key}", key, ("path", "revision"))
        path, rev = raw.get("path"), raw.get("revision")
        if not isinstance(path, str):
            raise RecipeError(f"{loc}.path", "expected a model path or Hub repo id string")
        if rev is not None and not isinstance(rev, str):
            raise RecipeError(f"{loc}.revision", f"expected a string, got {rev!r}")
        return _parse_part(path, f"{loc}.path", rev, lora)
    raise RecipeError(loc, f"expected a model reference, got {raw!r}")


def parse_ref_value(raw: object, loc: str = "") -> ModelRef:
    """Parse a YAML model reference: a string, or ``{model: ..., lora: ...}``."""
    if isinstance(raw, str):
        return parse_ref(raw, loc)
    if not isinstance(raw, dict):
        raise RecipeError(loc, f"expected a model reference (org/name or a path), got {raw!r}")
    for key in raw:
        if key == "override_architecture":
            raise RecipeError(f"{loc}.{key}", "override_architecture is not supported yet")
        if key not in ("model", "lora"):
            raise unknown_key(f"{loc}.{key}", key, ("model", "lora"))
    if "model" not in raw:
        raise RecipeError(loc, "missing key 'model'")
    model = _parse_path_value(raw["model"], f"{loc}.model")
    if raw.get("lora") is None:
        return model
    return ModelRef(model.path, model.revision, _parse_path_value(raw["lora"], f"{loc}.lora",
                                                                      lora=True))
