"""Stage 1, the recipe: mergekit's YAML parsed and validated, every error at its YAML path.

``parse_recipe``/``load_recipe`` give a :class:`Recipe` (``schema``); the pieces: YAML line
bookkeeping and budgets (``locations``), model references (``refs``), parameter values (``params``),
the models and slices (``inputs``), method checks (``checks``), the ``tokenizer:`` block
(``tokenizer_block``), chat-template names (``chat_templates``), multi-stage recipes
(``stages``: several documents, later ones naming earlier ones as models) and sweeps of a
recipe (``sweep``).
"""

from merge_engine.recipe.locations import RecipeLimits
from merge_engine.recipe.parse import load_recipe, parse_recipe
from merge_engine.recipe.refs import hub_refs_only
from merge_engine.recipe.schema import InputModel, OutputSlice, Recipe, SliceSource, ref_key
from merge_engine.recipe.stages import Stage, StagedRecipe, parse_stages
from merge_engine.recipe.sweep import SweepLimits, Variant, expand_sweep

__all__ = ["InputModel", "OutputSlice", "Recipe", "RecipeLimits", "SliceSource", "Stage",
           "StagedRecipe", "SweepLimits", "Variant", "expand_sweep", "hub_refs_only",
           "load_recipe", "parse_recipe", "parse_stages", "ref_key"]
