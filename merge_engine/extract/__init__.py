"""Beside the merge: a LoRA adapter extracted from a model and its base (``lora``), read
through the same sources and written whole or not at all."""

from merge_engine.extract.lora import Extraction, ModuleResult, extract_lora

__all__ = ["Extraction", "ModuleResult", "extract_lora"]
