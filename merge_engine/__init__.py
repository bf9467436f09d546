"""merge_engine: mergekit recipes in, merged safetensors checkpoints out, tensor by tensor.

The stages, each a subpackage that imports only the ones before it: ``recipe`` ->
``io`` -> ``tokenizer`` -> ``plan`` -> ``execute``, then ``card``, ``api`` and ``cli``;
``methods`` (pure float32 tensor functions) and ``errors`` sit below them all.

The names below are the engine's public API: what ``bot/`` and ``spaces_app/`` use. The
other public module is ``merge_engine.synth`` (tiny generated model families for demos,
tests and benchmarks).
"""

from merge_engine.api import (
    DEFAULT_SHARD_BYTES,
    MergeResult,
    check_adapter_base,
    run_merge,
    validate,
)
from merge_engine.check import CheckOptions, CheckReport, run_checks
from merge_engine.errors import (
    CheckError,
    InputError,
    MergeEngineError,
    MergeError,
    PlanError,
    RecipeError,
    SourceError,
)
from merge_engine.evaluate import (
    EVALUATION_PLOT,
    EvalRow,
    EvalScore,
    EvalSet,
    EvalTable,
    SetTexts,
    evaluate_model,
    evaluate_sources,
    parse_eval_sets,
    read_sets,
    run_tasks,
    score_model,
    write_evaluation_plot,
)
from merge_engine.extract import AdapterOptions, Extraction, extract_lora
from merge_engine.io import HubAccess, Source, load_dataset_texts, open_source
from merge_engine.io.retry import causes as error_causes
from merge_engine.io.retry import is_transient, retry
from merge_engine.multistage import StagedResult, StageRun, run_stages, validate_stages
from merge_engine.plan import Plan
from merge_engine.plan.summary import formula, plan_json
from merge_engine.recipe import (
    Recipe,
    RecipeLimits,
    StagedRecipe,
    SweepLimits,
    Variant,
    expand_sweep,
    hub_refs_only,
    load_recipe,
    parse_recipe,
    parse_stages,
)
from merge_engine.recipe.locations import CARD_LIMITS, load_yaml
from merge_engine.version import __version__

__all__ = [
    "CARD_LIMITS",
    "AdapterOptions",
    "CheckError",
    "CheckOptions",
    "CheckReport",
    "DEFAULT_SHARD_BYTES",
    "EVALUATION_PLOT",
    "EvalRow",
    "EvalScore",
    "EvalSet",
    "EvalTable",
    "Extraction",
    "HubAccess",
    "InputError",
    "MergeEngineError",
    "MergeError",
    "MergeResult",
    "PlanError",
    "Plan",
    "Recipe",
    "RecipeError",
    "RecipeLimits",
    "SetTexts",
    "Source",
    "SourceError",
    "StageRun",
    "StagedRecipe",
    "StagedResult",
    "SweepLimits",
    "Variant",
    "__version__",
    "check_adapter_base",
    "error_causes",
    "evaluate_model",
    "evaluate_sources",
    "expand_sweep",
    "extract_lora",
    "formula",
    "hub_refs_only",
    "is_transient",
    "load_dataset_texts",
    "load_recipe",
    "load_yaml",
    "open_source",
    "parse_eval_sets",
    "parse_recipe",
    "parse_stages",
    "plan_json",
    "read_sets",
    "retry",
    "run_checks",
    "run_merge",
    "run_stages",
    "run_tasks",
    "score_model",
    "validate",
    "validate_stages",
    "write_evaluation_plot",
]
