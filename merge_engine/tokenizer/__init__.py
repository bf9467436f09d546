"""Stage 3, the tokenizer: each model's vocabulary (``files``), the output vocabulary and
every model's row map onto it, chat templates, and the tokenizer files written out
(``vocab``)."""

from merge_engine.tokenizer.vocab import TOKENIZER_FILES, Vocab, build_vocab, write_tokenizer

__all__ = ["TOKENIZER_FILES", "Vocab", "build_vocab", "write_tokenizer"]
