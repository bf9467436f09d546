"""Tensors that are not in every model: buffers (non-floating tensors and the stale
floating buffers older transformers saved) are taken from the base, checked against the
models that also have them and never merged; a missing weight stays an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merge_engine import PlanError, run_merge, validate
from merge_engine.cli import main
from merge_engine.plan.architecture import is_buffer
from tests.conftest import recipe_text
from tests.tfmodels import (
    assert_one_rounding,
    edit,
    loading_info,
    task_arithmetic64,
    tensors,
    write_family,
)

BF16 = (torch.bfloat16,) * 3
WEIGHTS = (0.7, 0.4)


def recipe(dirs: list[Path], method: str = "task_arithmetic") -> str:
    return recipe_text(method, dirs[0], [(d, {"weight": w}) for d, w in
                                         zip(dirs[1:], WEIGHTS, strict=True)])


def check_merged(out: Path, dirs: list[Path], copied: dict[str, torch.Tensor]) -> None:
    """The output has the base's tensors: ``copied`` exactly (dtype included), every
    other one the float64 task-arithmetic merge rounded once."""
    inputs = [tensors(d) for d in dirs]
    merged = tensors(out)
    assert sorted(merged) == sorted(inputs[0])
    for name, value in merged.items():
        if name in copied:
            assert value.dtype == copied[name].dtype and torch.equal(value, copied[name]), name
        else:
            exact = task_arithmetic64(inputs[0][name], [x[name] for x in inputs[1:]], WEIGHTS)
            assert_one_rounding(value, exact, name)


def test_which_tensors_are_buffers() -> None:
    assert is_buffer("embeddings.position_ids", (1, 512), floating=False)
    assert is_buffer("bn.num_batches_tracked", (), floating=False)
    assert is_buffer("model.layers.0.self_attn.rotary_emb.inv_freq", (64,), floating=True)
    assert is_buffer("gpt_neox.layers.0.attention.rotary_emb.cos_cached", (1, 1, 8, 4), True)
    assert is_buffer("transformer.h.0.attn.bias", (1, 1, 64, 64), floating=True)
    assert is_buffer("h.3.attn.masked_bias", (), floating=True)
    assert is_buffer("gpt_neox.layers.0.attention.bias", (1, 1, 64, 64), floating=True)
    # real weights whose names look alike
    assert not is_buffer("transformer.h.0.attn.c_attn.bias", (96,), floating=True)
    assert not is_buffer("vision.blocks.0.attn.bias", (32,), floating=True)
    assert not is_buffer("model.layers.0.self_attn.q_proj.weight", (32, 32), floating=True)


def test_a_sentence_transformers_bert_base_with_position_ids_merges(tmp_path: Path) -> None:
    """The issue's case: the base saved ``embeddings.position_ids`` (int64), the donors,
    saved by a newer transformers, did not."""
    dirs = write_family(tmp_path, "bert", BF16)
    ids = torch.arange(64).unsqueeze(0)
    edit(dirs[0], {"embeddings.position_ids": ids})
    out = tmp_path / "out"
    result = run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    assert result.warnings == []
    check_merged(out, dirs, {"embeddings.position_ids": ids})
    assert loading_info(out, "bert") == loading_info(dirs[0], "bert")


def test_a_buffer_only_donors_have_is_left_out(tmp_path: Path) -> None:
    """The output has the base's layout: a donor's stale buffer does not come along."""
    dirs = write_family(tmp_path, "bert", BF16)
    edit(dirs[1], {"embeddings.position_ids": torch.arange(64).unsqueeze(0)})
    out = tmp_path / "out"
    run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    assert "embeddings.position_ids" not in tensors(out)
    check_merged(out, dirs, {})


def test_buffers_that_differ_are_kept_from_the_base_with_a_warning(tmp_path: Path) -> None:
    dirs = write_family(tmp_path, "bert", BF16)
    ids = torch.arange(64).unsqueeze(0)
    edit(dirs[0], {"embeddings.position_ids": ids,
                   "embeddings.token_type_ids": torch.zeros(1, 64, dtype=torch.int64)})
    edit(dirs[1], {"embeddings.position_ids": ids,
                   "embeddings.token_type_ids": torch.zeros(1, 64, dtype=torch.int32)})
    edit(dirs[2], {"embeddings.position_ids": ids.flip(1)})
    plan = validate(recipe(dirs))
    assert plan.warnings == [
        f"buffer embeddings.token_type_ids is I32 [1, 64] in {dirs[1]} but I64 [1, 64] in "
        f"{dirs[0]}; it is not merged, {dirs[0]}'s is kept"]
    out = tmp_path / "out"
    result = run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    differs = (f"tensor embeddings.position_ids has other values in {dirs[2]} than in "
               f"{dirs[0]}; it is not merged, {dirs[0]}'s is kept")
    assert result.warnings == [*plan.warnings, differs]
    assert differs in (out / "README.md").read_text()
    check_merged(out, dirs, {"embeddings.position_ids": ids,
                             "embeddings.token_type_ids": torch.zeros(1, 64, dtype=torch.int64)})


def test_stale_float_buffers_of_old_checkpoints_are_copied_not_merged(tmp_path: Path) -> None:
    """Llama-2 era checkpoints saved each layer's float32 ``rotary_emb.inv_freq`` next to
    bf16 weights, GPT-2's its causal masks: copied from the base bit for bit (in their
    own dtype), whatever the donors have."""
    dirs = write_family(tmp_path / "llama", "llama", BF16)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    stale = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in range(2)}
    edit(dirs[0], stale)
    edit(dirs[2], {name: inv_freq * 2 for name in stale})  # same names, other values
    out = tmp_path / "llama-out"
    result = run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    check_merged(out, dirs, stale)
    assert len(result.warnings) == 2 and all("rotary_emb.inv_freq has other values" in w
                                             for w in result.warnings)
    assert loading_info(out, "llama") == loading_info(dirs[0], "llama")

    dirs = write_family(tmp_path / "gpt2", "gpt2", BF16)
    masks = {}
    for i in range(2):
        masks[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        masks[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    for d in dirs:
        edit(d, masks)
    out = tmp_path / "gpt2-out"
    result = run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    assert result.warnings == []
    check_merged(out, dirs, masks)
    assert loading_info(out, "gpt2") == loading_info(dirs[0], "gpt2")


def test_a_weight_missing_from_donors_names_the_tensor_and_every_model(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = write_family(tmp_path, "llama", BF16)
    name = "model.layers.1.mlp.up_proj.weight"
    for d in dirs[1:]:
        edit(d, {name: None})
    with pytest.raises(PlanError) as caught:
        validate(recipe(dirs))
    assert str(caught.value) == (
        f"tensor {name} is missing from {dirs[1]}, {dirs[2]} but {dirs[0]} has it; a weight "
        "is merged from every model of the recipe (only buffers and tied output heads may "
        "be absent)")
    path = tmp_path / "recipe.yml"
    path.write_text(recipe(dirs))
    assert main(["run", str(path), str(tmp_path / "out")]) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tied_donor_gives_its_embedding_for_the_output_head(tmp_path: Path) -> None:
    """The architecture says ``lm_head.weight`` is tied to ``model.embed_tokens.weight``:
    a donor saved with tied embeddings lacks the head and is merged through its
    embedding."""
    dirs = write_family(tmp_path, "llama", BF16)
    donor = tensors(dirs[1])
    edit(dirs[1], {"lm_head.weight": None})
    out = tmp_path / "out"
    run_merge(recipe(dirs), out, device="cpu", random_seed=0)
    inputs = [tensors(dirs[0]), donor, tensors(dirs[2])]
    head = "lm_head.weight"
    embedding = donor["model.embed_tokens.weight"]
    exact = task_arithmetic64(inputs[0][head], [embedding, inputs[2][head]], WEIGHTS)
    assert_one_rounding(tensors(out)[head], exact, head)


def test_slices_take_each_layers_buffers_from_its_first_source(tmp_path: Path) -> None:
    """A frankenmerge of an old checkpoint (with ``inv_freq``) and a new one (without):
    each output layer has the buffers of the layer it comes from, renamed with it."""
    dirs = write_family(tmp_path, "llama", BF16)
    inv_freq = torch.rand(4)
    edit(dirs[0], {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in (0, 1)})
    text = (f"merge_method: passthrough\nslices:\n"
            f"  - sources:\n      - model: {dirs[0]}\n        layer_range: [0, 2]\n"
            f"  - sources:\n      - model: {dirs[1]}\n        layer_range: [1, 2]\n")
    out = tmp_path / "out"
    run_merge(text, out, device="cpu", random_seed=0)
    merged = tensors(out)
    stale = sorted(n for n in merged if n.endswith("inv_freq"))
    assert stale == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in (0, 1)]
    assert all(torch.equal(merged[n], inv_freq) for n in stale)
    donor = tensors(dirs[1])
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"],
                       donor["model.layers.1.mlp.up_proj.weight"])
