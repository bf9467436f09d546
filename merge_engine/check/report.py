"""What the checks found: the options they ran with and the report they produce."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CheckOptions:
    """How to check a merge.

    ``perplexity_factor``: a merge whose perplexity exceeds this many times the worst
    source's fails, unless ``allow_high_perplexity``. ``behaviour``: run the behaviour
    checks when possible (False: structural checks only). ``side_files``: the output was
    written with its tokenizer and generation files (``--no-copy-tokenizer`` clears it).
    ``cache_dir``: where the sources' perplexities are kept (Hub sources by repo and commit
    SHA, local ones by their files: :mod:`merge_engine.check.cache`), so a remerge measures
    only the sources that changed (None: no cache).
    """

    perplexity_factor: float = 3.0
    allow_high_perplexity: bool = False
    behaviour: bool = True
    side_files: bool = True
    device: str = "cpu"
    cache_dir: Path | None = None


@dataclass(frozen=True)
class SourceFigure:
    """One source's perplexity on the built-in text, or why it was not measured."""

    name: str
    perplexity: float | None
    note: str = ""


@dataclass
class CheckReport:
    """Structural results (one line per passed check), the perplexities of the merge and
    of each source, the sample generation, and why a part was skipped."""

    structure: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    perplexity: float | None = None
    sources: list[SourceFigure] = field(default_factory=list)
    prompt: str | None = None
    generation: str | None = None
    limit: float | None = None
    """The perplexity above which the merge fails (factor x the worst source)."""
    allowed_high: bool = False
    """The perplexity is above ``limit`` and the submission allowed it."""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The report as log lines."""
        out = [f"check passed: {line}" for line in self.structure]
        out += [f"check skipped: {line}" for line in self.skipped]
        if self.perplexity is not None:
            out.append(f"perplexity of the merge: {self.perplexity:.2f}")
            out += [f"perplexity of {s.name}: " + (f"{s.perplexity:.2f}" if s.perplexity
                                                   is not None else s.note)
                    for s in self.sources]
            if self.limit is not None:
                out.append(f"perplexity limit: {self.limit:.2f}"
                           + (" (exceeded; allowed by the submission)" if self.allowed_high
                              else ""))
        if self.generation is not None:
            out.append(f"greedy generation: {self.prompt!r} -> {self.generation!r}")
        return out

    def to_json(self) -> dict:
        return asdict(self)
