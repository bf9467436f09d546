"""Ready recipes for the editor: the seed recipe, ties, dare_ties and a slerp.

``examples(base, donor_1, donor_2)`` fills in the models: the seed recipe's own models by
default, the demo's generated ones in the offline demo.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_MODELS = (
    "garage-bAInd/Platypus2-13B",
    "psmathur/orca_mini_v3_13b",
    "WizardLM/WizardLM-13B-V1.2",
)

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


@dataclass(frozen=True)
class Example:
    label: str
    text: str


def examples(
    base: str = SEED_MODELS[0], donor_1: str = SEED_MODELS[1], donor_2: str = SEED_MODELS[2]
) -> list[Example]:
    """The editor's examples, first the seed recipe, with these models filled in."""
    names = {"base": base, "donor_1": donor_1, "donor_2": donor_2}
    return [
        Example("seed recipe (task_arithmetic 1.0 / 0.3)", _SEED.format(**names)),
        Example("ties", _TIES.format(**names)),
        Example("dare_ties", _DARE_TIES.format(**names)),
        Example("slerp", _SLERP.format(**names)),
    ]
