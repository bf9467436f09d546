"""Model references: Hub ids, revisions, LoRA, local directories, and round trips."""

from __future__ import annotations

import os

import pytest

from merge_engine.errors import RecipeError
from merge_engine.recipe.refs import ModelRef, is_hub_id, parse_ref, parse_ref_value


def _err(text, loc="models[0].model") -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse_ref(text, loc)
    return info.value


def test_hub_id():
    ref = parse_ref("garage-bAInd/Platypus2-13B")
    assert ref == ModelRef("garage-bAInd/Platypus2-13B", None, None)
    assert not ref.is_local
    assert str(ref) == "garage-bAInd/Platypus2-13B"


def test_hub_id_without_org():
    ref = parse_ref("gpt2")
    assert ref.path == "gpt2" and not ref.is_local


def test_hub_id_with_revision():
    ref = parse_ref("org/name@v1.0")
    assert (ref.path, ref.revision, ref.lora) == ("org/name", "v1.0", None)
    sha = "a" * 40
    assert parse_ref(f"org/name@{sha}").revision == sha
    assert parse_ref("org/name@refs/pr/3").revision == "refs/pr/3"


def test_lora():
    ref = parse_ref("org/base@main+org/adapter@abc")
    assert ref.path == "org/base" and ref.revision == "main"
    assert ref.lora == ModelRef("org/adapter", "abc")
    assert str(ref) == "org/base@main+org/adapter@abc"


def test_local_prefixes(tmp_path):
    assert parse_ref("/abs/path/model").is_local
    assert parse_ref("./rel/model").path == "./rel/model"
    assert parse_ref("../up/model").is_local
    home = parse_ref("~/models/x")
    assert home.path == os.path.expanduser("~/models/x") and home.is_local


def test_local_path_keeps_at_sign():
    ref = parse_ref("/data/models/m@2024")
    assert ref == ModelRef("/data/models/m@2024") and ref.revision is None


def test_existing_directory_is_local(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "weird dir@x").mkdir()
    monkeypatch.chdir(tmp_path)
    ref = parse_ref("org/name")
    assert ref.is_local and ref.revision is None
    assert parse_ref("weird dir@x") == ModelRef("weird dir@x")


def test_existing_directory_with_plus_in_name(tmp_path):
    path = tmp_path / "a+b"
    path.mkdir()
    ref = parse_ref(str(path))
    assert ref.path == str(path) and ref.lora is None


def test_local_lora(tmp_path):
    ref = parse_ref(f"{tmp_path}+./adapter")
    assert ref.path == str(tmp_path) and ref.lora == ModelRef("./adapter")


@pytest.mark.parametrize(
    "text",
    [
        "org/name",
        "org/name@main",
        "name",
        "org/name+org/lora",
        "org/name@r1+org/lora@r2",
        "/abs/dir",
        "/abs/dir@x",
        "./rel+/abs/lora",
    ],
)
def test_round_trip(text):
    ref = parse_ref(text)
    assert str(ref) == text
    assert parse_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "x y",
        "org/na me",
        "a/b/c",
        "org/na--me",
        "org/na..me",
        "-org/name",
        "org/name-",
        "org/.name",
        "org/" + "n" * 97,
        "org/näme",
    ],
)
def test_invalid_hub_ids(text):
    err = _err(text)
    assert err.loc == "models[0].model"
    assert err.msg == f"{text!r} is neither a local directory nor a Hub repo id (org/name)"


@pytest.mark.parametrize("text", [
    "D:\\models\\x", "C:/x", "c:\\Users\\me\\llama", "\\\\server\\share\\model",
    "models\\x", "D:\\models\\x@main",
])
def test_a_windows_path_says_it_is_on_another_machine(text):
    err = _err(text)
    assert err.loc == "models[0].model"
    assert err.msg == (f"{text!r} is a Windows path, a directory on another machine; use the "
                       "model's Hub repo id (org/name) instead")


def test_hub_name_length_limit():
    assert is_hub_id("org/" + "n" * 96)
    assert not is_hub_id("org/" + "n" * 97)


def test_bad_revisions():
    assert "empty revision" in _err("org/name@").msg
    assert "more than one '@'" in _err("org/name@a@b").msg


def test_too_many_plus():
    err = _err("a/b+c/d+e/f")
    assert err.loc == "models[0].model" and "'+'" in err.msg


def test_empty():
    assert "empty" in _err("").msg
    assert "empty" in _err("org/name+").msg


def test_default_loc_is_empty():
    with pytest.raises(RecipeError) as info:
        parse_ref("x y")
    assert info.value.loc == ""


def test_local_ref_cannot_have_revision():
    with pytest.raises(ValueError):
        ModelRef("/abs/dir", "main")


# --- mergekit's mapping form --------------------------------------------------------


def test_mapping_form():
    assert parse_ref_value({"model": "org/name@rev"}, "m") == ModelRef("org/name", "rev")
    ref = parse_ref_value(
        {"model": {"path": "org/name", "revision": "r1"}, "lora": "org/lora@r2"}, "m"
    )
    assert ref == ModelRef("org/name", "r1", ModelRef("org/lora", "r2"))
    assert parse_ref_value({"model": "org/name", "lora": None}, "m") == ModelRef("org/name")


def test_mapping_form_errors():
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"model": "org/name", "lroa": "x/y"}, "models[0].model")
    assert info.value.loc == "models[0].model.lroa"
    assert "did you mean 'lora'" in info.value.msg
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"lora": "x/y"}, "base_model")
    assert info.value.loc == "base_model" and "model" in info.value.msg
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"model": {"path": "/abs", "revision": "main"}}, "m")
    assert info.value.loc == "m.model.path" and "revision" in info.value.msg
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"model": {"path": "o/n@a", "revision": "b"}}, "m")
    assert "twice" in info.value.msg
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"model": {"revision": "b"}}, "m")
    assert info.value.loc == "m.model.path"
    with pytest.raises(RecipeError) as info:
        parse_ref_value({"model": "o/n", "override_architecture": "X"}, "m")
    assert info.value.loc == "m.override_architecture" and "not supported yet" in info.value.msg
    with pytest.raises(RecipeError) as info:
        parse_ref_value(3, "m")
    assert info.value.loc == "m"
