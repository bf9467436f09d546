"""The engine's error hierarchy, turned into exit codes and messages only at the edges.

``InputError`` and its subclasses are mistakes in what the user gave us (recipe, model
files): exit code 2. Any other ``MergeEngineError`` is a runtime failure: exit code 1.
Every message is one sentence that says what is wrong and where.
"""

from __future__ import annotations


class MergeEngineError(Exception):
    """A failure the user should see as one clear line (exit code 1)."""

    exit_code = 1


class InputError(MergeEngineError):
    """The recipe or the model files are wrong; fixing them fixes the run (exit code 2)."""

    exit_code = 2


class RecipeError(InputError):
    """A problem at a place in the recipe YAML, e.g. ``models[1].parameters.weight``."""

    def __init__(self, loc: str, msg: str):
        self.loc = loc
        self.msg = msg
        super().__init__(f"{loc}: {msg}" if loc else msg)


class SourceError(InputError):
    """A model reference cannot be used: missing path, unknown repo, pickle-only files."""


class PlanError(InputError):
    """The models do not fit together: a missing tensor or a shape mismatch."""


class MergeError(MergeEngineError):
    """The merge itself failed at run time (e.g. the math produced NaN or inf)."""


class CheckError(InputError):
    """The merged model failed a check before publishing (exit code 2): a structural fault
    (config, weights and tokenizer disagree) or a perplexity far above every source's.
    ``report`` holds the figures measured so far (a ``CheckReport``), when there are any."""

    def __init__(self, msg: str, report: object | None = None):
        self.report = report
        super().__init__(msg)


def shown(value: object, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters, a collection by its size: how an error
    message shows a value that may be hostile (never echoed whole)."""
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
