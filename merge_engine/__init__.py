"""merge_engine: mergekit recipes in, merged safetensors checkpoints out, tensor by tensor."""

__version__ = "0.1.0"

from .api import MergeResult, run_merge, validate  # noqa: E402
from .errors import (  # noqa: E402
    InputError,
    MergeEngineError,
    MergeError,
    PlanError,
    RecipeError,
    SourceError,
)

__all__ = [
    "InputError",
    "MergeEngineError",
    "MergeError",
    "MergeResult",
    "PlanError",
    "RecipeError",
    "SourceError",
    "__version__",
    "run_merge",
    "validate",
]
