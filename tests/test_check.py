"""The check stage: structural faults made by hand in a tiny merged model are caught with
one line, a merge that scrambles the weights is stopped, a good merge passes and its card
shows the figures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_engine import CheckError, CheckOptions, run_checks, run_merge
from merge_engine.api import RECIPE_NAME, load, open_sources
from merge_engine.check import behaviour
from merge_engine.cli import main

from .checkutil import TEMPLATE, tokenized_family
from .conftest import recipe_text

STRUCTURE = CheckOptions(behaviour=False)


def merge_recipe(paths, weight=0.3) -> str:
    base, d1, d2 = paths
    return recipe_text("task_arithmetic", base, [(d1, {"weight": 1.0}), (d2, {"weight": weight})])


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """(family, a good merge of it made with checks, its result)."""
    root = tmp_path_factory.mktemp("checks")
    paths = tokenized_family(root / "family")
    result = run_merge(merge_recipe(paths), root / "out", checks=CheckOptions())
    return paths, root / "out", result


@pytest.fixture
def copy(merged, tmp_path) -> Path:
    """A copy of the good merge to break by hand."""
    return Path(shutil.copytree(merged[1], tmp_path / "model"))


def sources_of(directory: Path):
    return open_sources(load(directory / RECIPE_NAME))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_weights(directory: Path, change) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def add_words(directory: Path, count: int) -> None:
    """Append ``count`` regular words to tokenizer.json's vocabulary."""
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    top = max(max(vocab.values()), *(t["id"] for t in data["added_tokens"]))
    vocab.update({f"extra{i}": top + 1 + i for i in range(count)})
    path.write_text(json.dumps(data))


def test_a_good_merge_passes_and_its_card_shows_the_figures(merged):
    paths, out, result = merged
    report = result.checks
    assert report.perplexity is not None and report.generation
    assert [s.name for s in report.sources] == [str(p) for p in paths]
    assert all(s.perplexity is not None for s in report.sources)
    # random weights: every model is close to uniform over the 96 rows
    assert all(40 < s.perplexity < 200 for s in report.sources)
    assert report.perplexity < report.limit == pytest.approx(
        3 * max(s.perplexity for s in report.sources))
    card = (out / "README.md").read_text()
    assert "## Checks" in card
    assert f"| this merge | {report.perplexity:.2f} |" in card
    for s in report.sources:
        assert f"| {s.name} | {s.perplexity:.2f} |" in card
    assert report.generation in card
    assert "tokenizer.json fits the embeddings" in card
    assert "every tensor LlamaForCausalLM expects is on disk with its shape" in card


def test_models_are_measured_at_once_one_per_core_as_memory_allows():
    cores = len(os.sched_getaffinity(0))
    assert behaviour.parallel_models(4, 1000, "cpu") == min(4, cores)
    assert behaviour.parallel_models(1, 1000, "cpu") == 1
    assert behaviour.parallel_models(4, behaviour.available_bytes("cpu"), "cpu") == 1
    assert behaviour.parallel_models(4, 1000, "cuda") == 1


def test_a_scrambling_merge_is_stopped_and_nothing_is_written(merged, tmp_path):
    paths = merged[0]
    with pytest.raises(CheckError, match=r"perplexity \d+\.\d+ is above 3x the worst") as e:
        run_merge(merge_recipe(paths, weight=40), tmp_path / "out", checks=CheckOptions())
    assert "\n" not in str(e.value) and "greedy generation" in str(e.value)
    assert e.value.report.perplexity > e.value.report.limit
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_scrambling_merge_is_published_when_allowed(merged, tmp_path):
    options = CheckOptions(allow_high_perplexity=True)
    result = run_merge(merge_recipe(merged[0], weight=40), tmp_path / "out", checks=options)
    assert result.checks.allowed_high
    assert "exceeded; the submission allowed it" in (tmp_path / "out/README.md").read_text()


def _tie_but_keep_head(d):
    edit_json(d / "config.json", tie_word_embeddings=True)


def _untie_without_head(d):
    edit_weights(d, lambda t: t.pop("lm_head.weight"))


def _nan(d):
    def change(t):
        t["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    edit_weights(d, change)


def _added_token_out_of_range(d):
    path = d / "tokenizer.json"
    data = json.loads(path.read_text())
    data["added_tokens"][-1]["id"] = 120
    path.write_text(json.dumps(data))


FAULTS = {
    "vocab_size": (lambda d: edit_json(d / "config.json", vocab_size=128),
                   "config.json has vocab_size 128 but model.embed_tokens.weight has 96 rows"),
    "hidden_size": (lambda d: edit_json(d / "config.json", hidden_size=64),
                    "config.json has hidden_size 64 but model.embed_tokens.weight has 32 "
                    "columns"),
    "layer count": (lambda d: edit_json(d / "config.json", num_hidden_layers=4),
                    "config.json has num_hidden_layers 4 but layer 3 is missing"),
    "tied head written twice": (_tie_but_keep_head,
                                "config.json sets tie_word_embeddings true but lm_head.weight "
                                "is written too, a duplicate of model.embed_tokens.weight"),
    "untied without head": (_untie_without_head,
                            "config.json sets tie_word_embeddings false but no output head"),
    "tokenizer longer than embeddings": (lambda d: add_words(d, 60),
                                         r"tokenizer.json has 1\d\d token ids but the embeddings "
                                         "have only 96 rows"),
    "added token out of range": (_added_token_out_of_range,
                                 "tokenizer.json's added token '<|extra|>' has id 120, "
                                 "outside the 96 embedding rows"),
    "eos id out of range": (lambda d: edit_json(d / "config.json", eos_token_id=500),
                            "config.json has eos_token_id 500, outside the 96 embedding rows"),
    "special token missing": (lambda d: edit_json(d / "tokenizer_config.json",
                                                  eos_token="<|end|>"),
                              "tokenizer_config.json's eos_token '<|end|>' is not in "
                              "tokenizer.json's vocabulary"),
    "added token moved": (lambda d: edit_json(d / "tokenizer_config.json", added_tokens_decoder={
        "7": {"content": "<|extra|>", "special": True}}),
                          "tokenizer_config.json lists added token '<|extra|>' at id 7 but "
                          "tokenizer.json has it at"),
    "generation config lost": (lambda d: (d / "generation_config.json").unlink(),
                               "generation_config.json of .*base was not carried over"),
    "generation config changed": (lambda d: edit_json(d / "generation_config.json",
                                                      eos_token_id=5),
                                  "generation_config.json differs from .*base's"),
    "NaN": (_nan, "tensor model.layers.1.mlp.up_proj.weight in model.safetensors holds NaN"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_structural_fault_is_caught_in_one_line(copy, fault):
    make, message = FAULTS[fault]
    run_checks(copy, sources_of(copy), options=STRUCTURE)  # the copy is good
    make(copy)
    with pytest.raises(CheckError, match=message) as e:
        run_checks(copy, sources_of(copy), options=STRUCTURE)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: edit_json(d / "config.json", intermediate_size=80),
     r"tensor model.layers.0.mlp.gate_proj.weight has shape \[64, 32\] on disk but "
     r"LlamaForCausalLM expects \[80, 32\] from config.json"),
    (lambda d: edit_weights(d, lambda t: t.pop("model.layers.2.self_attn.k_proj.weight")),
     "tensor model.layers.2.self_attn.k_proj.weight that LlamaForCausalLM expects from "
     "config.json is not on disk"),
])
def test_weights_are_checked_against_the_architecture(copy, change, message):
    change(copy)
    with pytest.raises(CheckError, match=message):
        run_checks(copy, options=CheckOptions())


def test_a_chat_template_of_a_source_must_reach_the_merge(tmp_path):
    paths = tokenized_family(tmp_path / "family", template_on=2)
    with pytest.raises(CheckError, match=r"no chat template but .*donor-2 has one; set "
                                         r"chat_template"):
        run_merge(merge_recipe(paths), tmp_path / "out", checks=STRUCTURE)
    result = run_merge(merge_recipe(paths) + "chat_template: auto\n", tmp_path / "out",
                       checks=STRUCTURE)
    assert "chat template present" in result.checks.structure
    assert json.loads((tmp_path / "out/tokenizer_config.json").read_text())[
        "chat_template"] == TEMPLATE


def test_cli_check_prints_the_report_or_one_line_and_exit_2(copy, capsys):
    assert main(["check", str(copy), "--structure-only"]) == 0
    printed = capsys.readouterr().out
    assert "check passed: config.json matches the weights" in printed
    assert "check skipped: behaviour checks: turned off" in printed
    edit_json(copy / "config.json", vocab_size=100)
    assert main(["check", str(copy), "--structure-only"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: config.json has vocab_size 100 but model.embed_tokens.weight has "
                   "96 rows\n")


def test_cli_run_with_check_fails_a_scrambling_merge(merged, tmp_path, capsys):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(merge_recipe(merged[0], weight=40))
    assert main(["run", str(recipe), str(tmp_path / "out"), "--check", "--quiet"]) == 2
    assert "perplexity" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert torch.isfinite(load_file(merged[1] / "model.safetensors")["lm_head.weight"]).all()
