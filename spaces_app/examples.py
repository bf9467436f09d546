"""Ready recipes for the editor: the seed recipe, ties, dare_ties, a slerp, model_stock and
a frankenmerge.

``examples(base, donor_1, donor_2, layers)`` fills in the models and their layer count: the
seed recipe's own models (40 layers) by default, the demo's generated ones in the offline
demo.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_MODELS = (
    "garage-bAInd/Platypus2-13B",
    "psmathur/orca_mini_v3_13b",
    "WizardLM/WizardLM-13B-V1.2",
)
SEED_LAYERS = 40
"""Decoder layers of the seed models (Llama-2-13B fine-tunes)."""

_SEED = """\
# The seed recipe: orca_mini + 0.3 x (WizardLM - Platypus2).
# merged = base + sum_i weight_i * (model_i - base)
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {donor_1}
    parameters:
      weight: 1.0
  - model: {donor_2}
    parameters:
      weight: 0.3   # alpha; start between 0.1 and 0.5 and evaluate
dtype: bfloat16
"""

_TIES = """\
# TIES: trim each task vector to its top `density`, elect a sign, average what agrees.
merge_method: ties
base_model: {base}
models:
  - model: {donor_1}
    parameters:
      weight: 1.0
      density: 0.5
  - model: {donor_2}
    parameters:
      weight: 0.5
      density: 0.5
parameters:
  normalize: true
dtype: bfloat16
"""

_DARE_TIES = """\
# DARE-TIES: randomly drop (1 - density) of each task vector, rescale, then TIES sign election.
merge_method: dare_ties
base_model: {base}
models:
  - model: {donor_1}
    parameters:
      weight: 0.6
      density: 0.7
  - model: {donor_2}
    parameters:
      weight: 0.4
      density: 0.7
dtype: bfloat16
"""

_SLERP = """\
# SLERP: spherical interpolation between the base and one model; t = 0 is the base.
merge_method: slerp
base_model: {base}
models:
  - model: {donor_1}
parameters:
  t: [0.0, 0.5, 1.0]   # a gradient over the layers
dtype: bfloat16
"""


_MODEL_STOCK = """\
# Model Stock: the donors' mean, pulled toward the base by how well their task vectors
# agree (the cosine between them); needs a base and at least two donors, no weights.
merge_method: model_stock
base_model: {base}
models:
  - model: {donor_1}
  - model: {donor_2}
dtype: bfloat16
"""

_FRANKENMERGE = """\
# Frankenmerge: layers of two models stacked ({total} layers out); passthrough copies them.
# The output's tensor names and its config's layer count follow the slices.
merge_method: passthrough
slices:
  - sources:
      - model: {donor_1}
        layer_range: [0, {upper}]
  - sources:
      - model: {donor_2}
        layer_range: [{lower}, {layers}]
dtype: bfloat16
"""


@dataclass(frozen=True)
class Example:
    label: str
    text: str


def examples(
    base: str = SEED_MODELS[0],
    donor_1: str = SEED_MODELS[1],
    donor_2: str = SEED_MODELS[2],
    layers: int = SEED_LAYERS,
) -> list[Example]:
    """The editor's examples, first the seed recipe, with these models filled in; the
    frankenmerge takes the first 3/4 of donor 1's ``layers`` and the last 3/4 of donor 2's."""
    names = {"base": base, "donor_1": donor_1, "donor_2": donor_2}
    upper, lower = layers - layers // 4, layers // 4
    stack = {"upper": upper, "lower": lower, "layers": layers, "total": 2 * upper}
    return [
        Example("seed recipe (task_arithmetic 1.0 / 0.3)", _SEED.format(**names)),
        Example("ties", _TIES.format(**names)),
        Example("dare_ties", _DARE_TIES.format(**names)),
        Example("slerp", _SLERP.format(**names)),
        Example("model_stock", _MODEL_STOCK.format(**names)),
        Example("frankenmerge (passthrough slices)", _FRANKENMERGE.format(**names, **stack)),
    ]
