"""Stage 4, the plan: for each output tensor its inputs, method and parameters
(``build``), from the layer stacks and tied tensors of each architecture
(``architecture``); ``summary`` describes a plan for people (formula, model rows,
licenses, the JSON the Space and the bot show)."""

from merge_engine.plan.build import Plan, TensorInput, TensorTask, build_plan

__all__ = ["Plan", "TensorInput", "TensorTask", "build_plan"]
