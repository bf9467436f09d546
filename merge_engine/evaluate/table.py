"""The results of an evaluation: a row per model scored (the merge, each variant of a
sweep, each source model) with its score on every set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from merge_engine.evaluate.score import EvalScore
from merge_engine.evaluate.sets import EvalSet

KINDS = ("merge", "variant", "source")


@dataclass
class EvalRow:
    """One model's scores by set name. ``values``: the swept YAML path -> value of a
    variant (empty for a single merge and for sources); ``revision``: the source's commit
    SHA or the variant's branch commit, when known; ``note``: why it has no scores."""

    label: str
    kind: str
    values: dict[str, object] = field(default_factory=dict)
    scores: dict[str, EvalScore] = field(default_factory=dict)
    revision: str | None = None
    note: str | None = None

    def to_json(self) -> dict:
        return {"label": self.label, "kind": self.kind, "values": dict(self.values),
                "scores": {k: v.to_json() for k, v in self.scores.items()},
                "revision": self.revision, "note": self.note}

    @classmethod
    def from_json(cls, data: dict) -> EvalRow:
        return cls(label=data["label"], kind=data["kind"], values=dict(data["values"]),
                   scores={k: EvalScore(**v) for k, v in data["scores"].items()},
                   revision=data.get("revision"), note=data.get("note"))


@dataclass
class EvalTable:
    """Every row scored on ``sets``; ``metric``: the set whose perplexity picks the best
    row (lower is better); ``chosen``: the label of the published row."""

    sets: list[EvalSet]
    rows: list[EvalRow] = field(default_factory=list)
    metric: str | None = None
    chosen: str | None = None

    def best(self, kinds: tuple[str, ...] = ("merge", "variant")) -> EvalRow | None:
        """The row of ``kinds`` with the lowest perplexity on ``metric`` (the first set
        when ``metric`` is None); None when no such row has that score."""
        metric = self.metric or (self.sets[0].name if self.sets else None)
        scored = [r for r in self.rows if r.kind in kinds and metric in r.scores]
        return min(scored, key=lambda r: r.scores[metric].perplexity, default=None)

    def swept(self) -> list[str]:
        """The swept YAML paths, in the order the rows first name them."""
        return list(dict.fromkeys(k for r in self.rows for k in r.values))

    def to_json(self) -> dict:
        return {"sets": [asdict(s) for s in self.sets], "rows": [r.to_json() for r in self.rows],
                "metric": self.metric, "chosen": self.chosen}

    @classmethod
    def from_json(cls, data: dict) -> EvalTable:
        sets = [EvalSet(**{**s, "texts": tuple(s["texts"])}) for s in data["sets"]]
        return cls(sets=sets, rows=[EvalRow.from_json(r) for r in data["rows"]],
                   metric=data.get("metric"), chosen=data.get("chosen"))
