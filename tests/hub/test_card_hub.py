"""The published model card read back with huggingface_hub: slices, revisions, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from merge_engine import run_merge
from merge_engine.io.hub import HubAccess
from merge_engine.synth import write_model
from tests.conftest import TINY
from tests.hubtools import USERS
from tests.test_card import slices_text
from tests.test_lora import write_adapter

from .conftest import Family, publish_folder
from .test_publish import download, publish


def read_card(path: Path) -> ModelCard:
    card = ModelCard.load(path)
    assert card.data.to_dict() == yaml.safe_load(path.read_text().split("---\n")[1])
    return card


def test_published_frankenmerge_card_has_every_slice_and_revision(family: Family, tmp_path):
    base, d1, d2 = family.repos
    text = slices_text(
        "task_arithmetic",
        [[(base, (0, 1), {}), (d1, (0, 1), {"weight": 0.3}), (d2, (0, 1), {"weight": 0.5})],
         [(base, (1, 2), {}), (d1, (1, 2), {"weight": 0.7})],
         [(base, (0, 2), {}), (d1, (0, 2), {})]],
        head=f"base_model: {base}\nparameters:\n  weight: 1.0",
    )
    publish(family, tmp_path, text)
    card = read_card(download(family, tmp_path) / "README.md")
    api = family.hub.api("alice")
    sha = {r: api.model_info(r).sha for r in family.repos}
    assert card.data.base_model == family.repos
    assert card.data.base_model_relation == "merge"
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"merge", "mergekit", "task_arithmetic"} <= set(card.data.tags)
    merge = card.data.merge
    assert merge["base_model"] == {"model": base, "revision": sha[base], "slices": [0, 1, 2]}
    assert merge["models"] == [{"model": d1, "revision": sha[d1], "slices": [0, 1, 2]},
                               {"model": d2, "revision": sha[d2], "slices": [0]}]
    assert merge["parameters"] == {"weight": 1.0}
    uses = [(n, s["model"], s["revision"], s["layer_range"], s.get("parameters"))
            for n, sl in enumerate(merge["slices"]) for s in sl["sources"]]
    assert uses == [
        (0, base, sha[base], [0, 1], None), (0, d1, sha[d1], [0, 1], {"weight": 0.3}),
        (0, d2, sha[d2], [0, 1], {"weight": 0.5}),
        (1, base, sha[base], [1, 2], None), (1, d1, sha[d1], [1, 2], {"weight": 0.7}),
        (2, base, sha[base], [0, 2], None), (2, d1, sha[d1], [0, 2], {"weight": 1.0}),
    ]
    assert [s["output_layers"] for s in merge["slices"]] == [[0, 1], [1, 2], [2, 4]]
    url = family.hub.url
    assert (f"| 1 | [1, 2] | base | [{base}]({url}/{base}/tree/{sha[base]}) | [1, 2] | - | - "
            f"| - |\n|  |  | donor | [{d1}]({url}/{d1}/tree/{sha[d1]}) | [1, 2] | 0.7 | - |  |\n"
            ) in card.text
    assert f"| donor | [{d1}]({url}/{d1}) | [`{sha[d1]}`]" in card.text
    assert "| 0.3 / 0.7 / 1.0 |" in card.text


@pytest.mark.parametrize("adapter_license, license_id", [("mit", "other"),
                                                         ("apache-2.0", "apache-2.0")])
def test_lora_adapter_license_and_revision_are_in_the_card(hub, tmp_path, adapter_license,
                                                           license_id):
    publish_folder(hub, write_model(tmp_path / "tiny", TINY), "alice/tiny")
    publish_folder(hub, write_model(tmp_path / "tiny-2", TINY, donor=1), "alice/tiny-2")
    publish_folder(hub, write_adapter(tmp_path / "lora"), "alice/tiny-lora",
                   license=adapter_license)
    text = ("merge_method: linear\nmodels:\n"
            "  - model: alice/tiny+alice/tiny-lora\n    parameters:\n      weight: 0.5\n"
            "  - model: alice/tiny-2\n    parameters:\n      weight: 0.5\n")
    access = HubAccess(endpoint=hub.url, token=USERS["alice"], cache_dir=tmp_path / "cache")
    run_merge(text, tmp_path / "out", device="cpu", access=access, random_seed=0,
              card_options={"hub_url": hub.url})
    card = read_card(tmp_path / "out" / "README.md")
    api = hub.api("alice")
    sha = {r: api.model_info(r).sha for r in ("alice/tiny", "alice/tiny-2", "alice/tiny-lora")}
    assert card.data.base_model == ["alice/tiny", "alice/tiny-lora", "alice/tiny-2"]
    assert card.data.license == license_id
    assert card.data.merge["models"][0] == {
        "model": "alice/tiny+alice/tiny-lora", "revision": sha["alice/tiny"],
        "lora": {"model": "alice/tiny-lora", "revision": sha["alice/tiny-lora"]},
        "parameters": {"weight": 0.5}}
    note = f"alice/tiny: apache-2.0, alice/tiny-lora: {adapter_license}, alice/tiny-2: apache-2.0"
    assert (note in card.text) == (license_id == "other")
    assert f"[`{sha['alice/tiny-lora']}`]({hub.url}/alice/tiny-lora/commit/" in card.text
    assert f"alice/tiny@{sha['alice/tiny']}+alice/tiny-lora@{sha['alice/tiny-lora']}" \
        in card.text
