"""The evaluation stage: a model scored on evaluation sets the user names.

:mod:`.sets` parses the sets (pasted texts or a Hub dataset, with limits); :mod:`.score`
reads their texts (datasets through :mod:`merge_engine.io.datasets`, pinned to a SHA) and
computes each model's mean token negative log-likelihood and perplexity with its own
tokenizer, in batches sized to the device's memory; :mod:`.sources` scores the source
models with a cache by repo and commit SHA; :mod:`.table` holds the results (a row per
model), :mod:`.report` and :mod:`.plot` show them in the card; :mod:`.tasks` runs named
lm-eval tasks where that package and a GPU are there.
"""

from merge_engine.evaluate.plot import EVALUATION_PLOT, write_evaluation_plot
from merge_engine.evaluate.report import evaluation_section, model_index
from merge_engine.evaluate.score import (
    EvalScore,
    SetTexts,
    evaluate_model,
    read_sets,
    score_model,
)
from merge_engine.evaluate.sets import EvalSet, parse_eval_set, parse_eval_sets
from merge_engine.evaluate.sources import evaluate_sources
from merge_engine.evaluate.table import EvalRow, EvalTable
from merge_engine.evaluate.tasks import run_tasks

__all__ = ["EVALUATION_PLOT", "EvalRow", "EvalScore", "EvalSet", "EvalTable", "SetTexts",
           "evaluate_model", "evaluate_sources", "evaluation_section", "model_index",
           "parse_eval_set", "parse_eval_sets", "read_sets", "run_tasks", "score_model",
           "write_evaluation_plot"]
