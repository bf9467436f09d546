"""LoRA extraction: a donor made as base + a known low-rank change gives that change back,
PEFT loads the adapter, and bad input ends in one line and no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_engine.api import run_merge
from merge_engine.cli import main
from merge_engine.errors import InputError
from merge_engine.extract import AdapterOptions, extract_lora
from merge_engine.synth import LlamaShape, write_model

SHAPE = LlamaShape(hidden=32, intermediate=48, layers=2, vocab=40, heads=4, kv_heads=2)
RANK = 3
LINEAR = "model.layers.0.mlp.up_proj.weight"


def _save(directory: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    directory.mkdir(parents=True)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _low_rank(shape: tuple[int, int], singular: list[float], seed: int) -> torch.Tensor:
    """``U diag(singular) V^T`` with orthonormal U, V: singular values known exactly."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(shape[0], len(singular), generator=gen,
                                       dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], len(singular), generator=gen,
                                       dtype=torch.float64))
    return (u * torch.tensor(singular, dtype=torch.float64)) @ v.T


@pytest.fixture
def family(tmp_path):
    """(base, donor, changes): float32 models, donor = base + a rank-3 change on every
    weight matrix (embeddings and lm_head too), singular values 1, 0.5, 0.01."""
    generated = write_model(tmp_path / "gen", SHAPE, seed=1)
    config = json.loads((generated / "config.json").read_text()) | {"torch_dtype": "float32"}
    base = {k: v.float() for k, v in load_file(generated / "model.safetensors").items()}
    changes = {name: _low_rank(t.shape, [1.0, 0.5, 0.01], seed=i).float()
               for i, (name, t) in enumerate(base.items()) if t.dim() == 2}
    donor = {k: v + changes[k] if k in changes else v.clone() for k, v in base.items()}
    return (_save(tmp_path / "base", base, config), _save(tmp_path / "donor", donor, config),
            changes)


def _deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """``B @ A`` (embeddings: ``(B @ A)^T``) of every module, by weight name."""
    factors = load_file(adapter / "adapter_model.safetensors")
    out = {}
    for key, a in factors.items():
        module = key.removeprefix("base_model.model.").split(".lora_")[0]
        if key.endswith("lora_A.weight"):
            b = factors[key.replace("lora_A", "lora_B")]
            out[module + ".weight"] = b.double() @ a.double()
        elif key.endswith("lora_embedding_A"):
            b = factors[key.replace("lora_embedding_A", "lora_embedding_B")]
            out[module + ".weight"] = (b.double() @ a.double()).T
    return out


def _relative(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


def test_full_rank_gives_the_change_back(family, tmp_path):
    base, donor, changes = family
    result = extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=RANK)
    deltas = _deltas(tmp_path / "ad")
    assert set(deltas) == set(changes)
    for name, change in changes.items():
        assert _relative(deltas[name], change) < 1e-5, name
    assert {m.rank for m in result.modules} == {RANK}
    assert max(m.error for m in result.modules) < 1e-5
    embed = next(m for m in result.modules if m.module == "model.embed_tokens")
    assert embed.embedding and not any(
        m.embedding for m in result.modules if m.module != "model.embed_tokens")


def test_lower_ranks_give_the_truncation_error_of_the_dropped_values(family, tmp_path):
    base, donor, changes = family
    singular = torch.tensor([1.0, 0.5, 0.01], dtype=torch.float64)
    for rank in (1, 2):
        result = extract_lora(str(donor), str(base), tmp_path / f"r{rank}", max_rank=rank)
        expected = float(singular[rank:].norm() / singular.norm())
        deltas = _deltas(tmp_path / f"r{rank}")
        for module in result.modules:
            assert module.rank == rank
            assert module.error == pytest.approx(expected, rel=1e-4)
            name = module.module + ".weight"
            assert _relative(deltas[name], changes[name]) == pytest.approx(expected, rel=1e-3)


def test_the_cutoff_drops_small_singular_values(family, tmp_path):
    base, donor, _ = family
    result = extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=8, sv_cutoff=0.1)
    assert {m.rank for m in result.modules} == {2}
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 2 and config["rank_pattern"] == {}


def test_peft_loads_the_adapter_and_merge_and_unload_gives_the_donor(family, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base, donor, _ = family
    extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=RANK)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "ad").merge_and_unload()
    theirs = merged.state_dict()
    for name, tensor in load_file(donor / "model.safetensors").items():
        assert torch.allclose(theirs[name], tensor, rtol=1e-5, atol=1e-5), name


def test_ranks_that_differ_by_module_load_in_peft(family, tmp_path):
    """A module whose change has a lower rank gets its own r in rank_pattern."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base, donor, changes = family
    tensors = load_file(donor / "model.safetensors")
    base_up = load_file(base / "model.safetensors")[LINEAR]
    tensors[LINEAR] = base_up + _low_rank(tuple(base_up.shape), [1.0], seed=99).float()
    (donor / "model.safetensors").unlink()
    save_file(tensors, donor / "model.safetensors", metadata={"format": "pt"})
    result = extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=RANK, sv_cutoff=1e-3)
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["r"] == RANK
    assert config["rank_pattern"] == {r"model\.layers\.0\.mlp\.up_proj": 1}
    assert next(m.rank for m in result.modules if m.module + ".weight" == LINEAR) == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "ad").merge_and_unload()
    assert torch.allclose(merged.state_dict()[LINEAR], tensors[LINEAR], atol=1e-5)
    other = "model.layers.1.mlp.up_proj.weight"
    assert torch.allclose(merged.state_dict()[other], tensors[other], atol=1e-5)


def test_the_card_records_sources_rank_and_errors(family, tmp_path):
    base, donor, _ = family
    extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=2)
    card = (tmp_path / "ad" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert f"`{donor}`" in card and f"`{base}`" in card
    dropped = f"{0.01 / (1.0 + 0.25 + 0.0001) ** 0.5:.3g}"  # 0.00894
    assert f"| `model.layers.1.self_attn.q_proj` | [32, 32] | 2 | {dropped} |" in card


def test_norms_that_differ_are_reported_not_dropped_silently(family, tmp_path, capsys):
    base, donor, _ = family
    tensors = load_file(donor / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    (donor / "model.safetensors").unlink()
    save_file(tensors, donor / "model.safetensors", metadata={"format": "pt"})
    code = main(["extract-lora", str(donor), str(base), str(tmp_path / "ad"), "--max-rank", "3",
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and not err
    assert "16 modules, rank <= 3" in out
    assert "warning: model.norm.weight differs but LoRA cannot carry it (relative change 0.5)" \
        in out
    assert "model.norm.weight" in (tmp_path / "ad" / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--max-rank", "0"], "max_rank must be a whole number >= 1, got 0"),
    (["--max-rank", "2", "--sv-cutoff", "1.5"], "sv_cutoff must be in [0, 1), got 1.5"),
])
def test_bad_settings_exit_2(family, tmp_path, capsys, args, message):
    base, donor, _ = family
    assert main(["extract-lora", str(donor), str(base), str(tmp_path / "ad"), *args]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "ad").exists()


def test_identical_models_have_nothing_to_extract(family, tmp_path):
    base, _, _ = family
    with pytest.raises(InputError, match="have no differing weight matrix"):
        extract_lora(str(base), str(base), tmp_path / "ad", max_rank=2)
    assert not (tmp_path / "ad").exists()
    assert not any(p.name.startswith(".ad.partial") for p in tmp_path.iterdir())


def test_a_failure_midway_leaves_no_output(family, tmp_path, monkeypatch):
    import merge_engine.extract.lora as lora

    base, donor, _ = family

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lora, "save_file", broken)
    with pytest.raises(OSError):
        extract_lora(str(donor), str(base), tmp_path / "ad", max_rank=2)
    assert not (tmp_path / "ad").exists()
    assert not any(p.name.startswith(".ad.partial") for p in tmp_path.iterdir())


def test_a_missing_model_is_one_line_exit_2(family, tmp_path, capsys):
    base, _, _ = family
    code = main(["extract-lora", str(tmp_path / "nope"), str(base), str(tmp_path / "ad"),
                 "--max-rank", "2"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: model directory {tmp_path / 'nope'} " \
                                              "does not exist"


# the recipe form: a merge's adapter against its base_model, shard by shard ----------

MERGE = """\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {donor}
    parameters:
      weight: 0.5
dtype: float32
"""


def test_a_merge_s_adapter_is_extracted_as_its_shards_are_written(family, tmp_path):
    """The merge is base + 0.5 x a rank-3 change: its adapter at rank 3 gives the merged
    model back, from shards factorized one by one."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base, donor, _ = family
    recipe = MERGE.format(base=base, donor=donor)
    result = run_merge(recipe, tmp_path / "merged", device="cpu", out_shard_size=20_000,
                       adapter=AdapterOptions(max_rank=RANK), adapter_dir=tmp_path / "ad",
                       copy_tokenizer=False)
    assert len([f for f in result.files if f.suffix == ".safetensors"]) > 3  # several shards
    assert result.adapter.rank == RANK and len(result.adapter.modules) == 16
    assert max(m.error for m in result.adapter.modules) < 1e-5
    card = (tmp_path / "ad" / "README.md").read_text()
    assert "## Merge recipe" in card and "merge_method: task_arithmetic" in card
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "ad").merge_and_unload()
    theirs = merged.state_dict()
    ours = {}
    for shard in (tmp_path / "merged").glob("*.safetensors"):
        ours |= load_file(shard)
    assert set(ours) <= set(theirs)
    for name, tensor in ours.items():
        assert torch.allclose(theirs[name], tensor, rtol=1e-5, atol=1e-5), name


def test_merge_engine_run_writes_the_adapter_too(family, tmp_path, capsys):
    base, donor, _ = family
    (tmp_path / "r.yml").write_text(MERGE.format(base=base, donor=donor))
    code = main(["run", str(tmp_path / "r.yml"), str(tmp_path / "merged"), "--device", "cpu",
                 "--adapter", str(tmp_path / "ad"), "--max-rank", "2"])
    assert code == 0, capsys.readouterr().err
    assert "16 modules, rank <= 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["r"] == 2


@pytest.mark.parametrize("recipe, message", [
    ("merge_method: linear\nmodels:\n  - model: {donor}\n    parameters: {{weight: 1.0}}\n"
     "  - model: {base}\n    parameters: {{weight: 1.0}}\n",
     "merge_method linear has no base_model to extract a LoRA adapter against; publish the "
     "full weights instead"),
    (MERGE.replace("base_model: {base}", "base_model: {base}+{lora}"),
     "base_model {base}+{lora} carries a LoRA adapter; an adapter can only be extracted "
     "against a plain model"),
])
def test_an_adapter_needs_a_plain_base(family, tmp_path, capsys, recipe, message):
    base, donor, _ = family
    lora = tmp_path / "lora"
    extract_lora(str(donor), str(base), lora, max_rank=1)
    values = {"base": base, "donor": donor, "lora": lora}
    (tmp_path / "r.yml").write_text(recipe.format(**values))
    code = main(["run", str(tmp_path / "r.yml"), str(tmp_path / "merged"), "--device", "cpu",
                 "--adapter", str(tmp_path / "ad"), "--max-rank", "2"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: " + message.format(**values)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "ad").exists()


def test_a_failed_extraction_leaves_neither_directory(family, tmp_path):
    base, donor, _ = family
    recipe = MERGE.format(base=base, donor=donor).replace("0.5", "0.0")  # equals its base
    with pytest.raises(InputError, match="have no differing weight matrix"):
        run_merge(recipe, tmp_path / "merged", device="cpu", copy_tokenizer=False,
                  adapter=AdapterOptions(max_rank=2), adapter_dir=tmp_path / "ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "donor", "gen"]
