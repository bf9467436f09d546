"""Beside the merge: a LoRA adapter extracted from a model and its base (``lora``), read
through the same sources and written whole or not at all."""

from merge_engine.extract.lora import (
    AdapterOptions,
    Extraction,
    LoraExtractor,
    ModuleResult,
    extract_lora,
    render_adapter_card,
)

__all__ = ["AdapterOptions", "Extraction", "LoraExtractor", "ModuleResult", "extract_lora",
           "render_adapter_card"]
