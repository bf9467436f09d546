"""The check stage: a merged model is inspected before it is published.

:func:`run_checks` runs the structural checks (:mod:`.structure`: config vs weights,
tokenizer vs embeddings, chat template, generation config, tied tensors, NaN/inf) and,
when transformers can build the architecture and the model fits in memory, the behaviour
checks (:mod:`.behaviour`: a forward pass, the perplexity of a built-in paragraph for the
merge and each source, a greedy generation). A fault raises ``CheckError`` with one line.
"""

from merge_engine.check.report import CheckOptions, CheckReport, SourceFigure
from merge_engine.check.run import behaviour_planned, run_checks

__all__ = ["CheckOptions", "CheckReport", "SourceFigure", "behaviour_planned", "run_checks"]
