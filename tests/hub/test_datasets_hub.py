"""load_dataset_texts against localhub: the Hub's dataset layouts (data files by split
name, the card's `configs:`, the refs/convert/parquet branch), pinned revisions, errors
and ranged reads of a large row group."""

from __future__ import annotations

import io
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from merge_engine import HubAccess, InputError, SourceError, load_dataset_texts
from merge_engine.io import datasets
from merge_engine.io.datasets import READ_BLOCK
from tests.hostile import alias_bomb


def parquet(columns: dict, **options) -> bytes:
    """A parquet file of the given columns, in memory."""
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, **options)
    return out.getvalue()


def texts(prefix: str, n: int) -> bytes:
    return parquet({"text": [f"{prefix} {i}" for i in range(n)], "label": list(range(n))})


def push(hub, repo: str, files: dict[str, bytes], revision: str | None = None) -> str:
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    return hub.api("alice").create_commit(repo, ops, commit_message="data",
                                          repo_type="dataset", revision=revision).oid


def dataset(hub, repo: str, files: dict[str, bytes], private: bool = False) -> str:
    hub.api("alice").create_repo(repo, repo_type="dataset", private=private)
    return push(hub, repo, files)


def access(hub, user: str | None = "alice") -> HubAccess:
    return HubAccess(endpoint=hub.url, token=hub.tokens[user] if user else None)


def load(hub, repo: str, user: str | None = "alice", **kw):
    kw = {"config": None, "split": "test", "column": "text", "samples": 4, **kw}
    return load_dataset_texts(access(hub, user), repo, **kw)


def test_default_config_by_file_names(hub):
    sha = dataset(hub, "alice/plain", {
        "data/train-00000-of-00001.parquet": texts("train", 10),
        "data/test-00000-of-00002.parquet": parquet({"text": ["", None, "  ", "a", "b"]}),
        "data/test-00001-of-00002.parquet": parquet({"text": ["c", "d", "e"]}),
        "data/validation.csv": b"text\nnot parquet\n",
    })
    got, read_at = load(hub, "alice/plain")
    assert (got, read_at) == (["a", "b", "c", "d"], sha)  # empty texts skipped, files in order
    assert load(hub, "alice/plain", split="train", samples=3)[0] == ["train 0", "train 1",
                                                                      "train 2"]
    # Fewer texts than asked: what there is.
    assert load(hub, "alice/plain", samples=100)[0] == ["a", "b", "c", "d", "e"]
    # Keywords between delimiters, folders named after splits, and "everything is train".
    dataset(hub, "alice/keywords", {"my_eval_file.parquet": texts("kw", 2),
                                    "dev/part.parquet": texts("dev", 2)})
    assert load(hub, "alice/keywords")[0] == ["kw 0", "kw 1"]
    assert load(hub, "alice/keywords", split="validation")[0] == ["dev 0", "dev 1"]
    dataset(hub, "alice/single", {"all.parquet": texts("only", 3)})
    assert load(hub, "alice/single", split="train")[0] == ["only 0", "only 1", "only 2"]


def test_named_configs_from_the_card(hub):
    card = """---
license: mit
configs:
- config_name: en
  data_files:
  - split: test
    path: "english/test-*.parquet"
  - split: train
    path: ["english/train-*.parquet"]
- config_name: fr
  default: true
  data_files:
  - split: test
    path: french/*.parquet
- config_name: raw
  data_files: "raw/**/*.parquet"
---
# Two languages
"""
    sha = dataset(hub, "alice/multi", {
        "README.md": card.encode(),
        "english/test-0.parquet": texts("en", 5),
        "english/train-0.parquet": texts("en-train", 5),
        "french/a.parquet": texts("fr", 5),
        "raw/x/y/z.parquet": texts("raw", 5),
    })
    assert load(hub, "alice/multi", config="en", samples=2) == (["en 0", "en 1"], sha)
    assert load(hub, "alice/multi", config="en", split="train", samples=1)[0] == ["en-train 0"]
    assert load(hub, "alice/multi", samples=2)[0] == ["fr 0", "fr 1"]  # the default config
    assert load(hub, "alice/multi", config="raw", split="train", samples=1)[0] == ["raw 0"]
    with pytest.raises(SourceError, match="has no config 'de'; its configs are en, fr, raw"):
        load(hub, "alice/multi", config="de")
    with pytest.raises(SourceError, match="config 'fr' has no split 'validation'; its splits "
                                          "are test"):
        load(hub, "alice/multi", split="validation")


def test_refs_convert_parquet(hub):
    """A CSV dataset is read from the converter's branch; its SHA is that branch's."""
    main = dataset(hub, "alice/csv", {"data/test.csv": b"text\nhello\n",
                                      "README.md": b"---\nlicense: mit\n---\n"})
    api = hub.api("alice")
    api.create_branch("alice/csv", branch="refs/convert/parquet", repo_type="dataset")
    converted = push(hub, "alice/csv", {
        "default/test/0000.parquet": texts("converted", 3),
        "default/partial-train/0000.parquet": texts("partial", 3),
        "other/test/0000.parquet": texts("other", 3),
    }, revision="refs/convert/parquet")
    assert converted != main
    assert load(hub, "alice/csv") == (["converted 0", "converted 1", "converted 2"], converted)
    assert load(hub, "alice/csv", split="train", samples=1)[0] == ["partial 0"]
    assert load(hub, "alice/csv", config="other", samples=1)[0] == ["other 0"]
    asked = load(hub, "alice/csv", revision="refs/convert/parquet", samples=1)
    assert asked == (["converted 0"], converted)
    assert load(hub, "alice/csv", revision=converted, samples=1) == (["converted 0"], converted)
    # A main commit asked for by SHA holds no parquet file: said so, with the way out.
    with pytest.raises(SourceError, match="pass revision 'refs/convert/parquet'"):
        load(hub, "alice/csv", revision=main)
    dataset(hub, "alice/csv-only", {"data/test.csv": b"text\nhello\n"})
    with pytest.raises(SourceError, match="no parquet file holds this split at .* and no "
                                          "refs/convert/parquet branch"):
        load(hub, "alice/csv-only")


def test_pinned_revision_survives_later_pushes(hub):
    first = dataset(hub, "alice/moving", {"data/test-0.parquet": texts("old", 4)})
    api = hub.api("alice")
    api.create_branch("alice/moving", branch="v1", repo_type="dataset")
    second = push(hub, "alice/moving", {"data/test-0.parquet": texts("new", 4)})
    assert second != first
    assert load(hub, "alice/moving", revision=first) == (["old 0", "old 1", "old 2", "old 3"],
                                                         first)
    assert load(hub, "alice/moving", revision="v1")[1] == first
    assert load(hub, "alice/moving") == (["new 0", "new 1", "new 2", "new 3"], second)


def test_errors_name_repo_config_split_and_column(hub):
    dataset(hub, "alice/d", {"data/test-0.parquet": texts("t", 3),
                             "data/train-0.parquet": parquet({"text": ["", None]})})
    with pytest.raises(SourceError) as excinfo:
        load(hub, "alice/d", split="validation")
    message = str(excinfo.value)
    assert "dataset alice/d, split 'validation': no parquet file holds this split" in message
    with pytest.raises(InputError, match=r"alice/d, split 'test': data/test-0.parquet has no "
                                         r"column 'body'; its columns are text, label"):
        load(hub, "alice/d", column="body")
    with pytest.raises(InputError, match="column 'label' in data/test-0.parquet holds int64, "
                                         "not text"):
        load(hub, "alice/d", column="label")
    with pytest.raises(InputError, match="column 'text' holds no non-empty text"):
        load(hub, "alice/d", split="train")
    with pytest.raises(SourceError, match="dataset alice/nope, split 'test': no such dataset"):
        load(hub, "alice/nope")
    with pytest.raises(SourceError, match="the dataset has no revision 'v9'"):
        load(hub, "alice/d", revision="v9")
    with pytest.raises(SourceError, match="config 'en'"):
        load(hub, "alice/d", config="en")
    # A model of that name is not a dataset.
    hub.api("alice").create_repo("alice/model-only")
    with pytest.raises(SourceError, match="no such dataset"):
        load(hub, "alice/model-only")
    dataset(hub, "alice/broken", {"data/test-0.parquet": b"PAR1 this is not parquet PAR1"})
    with pytest.raises(SourceError, match="data/test-0.parquet at .* is not a readable parquet"):
        load(hub, "alice/broken")


def test_private_dataset_needs_the_token(hub):
    sha = dataset(hub, "alice/private", {"data/test-0.parquet": texts("secret", 2)},
                  private=True)
    for user in (None, "bob"):
        with pytest.raises(SourceError, match="alice/private.*private and the token given has "
                                              "no access"):
            load(hub, "alice/private", user=user)
    assert load(hub, "alice/private") == (["secret 0", "secret 1"], sha)
    # Gated: the listing is visible, the files are not.
    api = hub.api("alice")
    api.update_repo_settings("alice/private", private=False, gated="auto", repo_type="dataset")
    with pytest.raises(SourceError, match="alice/private, split 'test': the dataset is gated"):
        load(hub, "alice/private", user="bob")
    assert load(hub, "alice/private")[1] == sha


def test_few_samples_read_a_small_part_of_a_large_row_group(hub):
    """One row group of ~7 MB: 8 samples cost the footer and the first pages of one column
    (range requests), not the file."""
    rng = random.Random(0)
    rows = [f"row {i} " + "".join(rng.choices("abcdefgh ", k=40)) for i in range(60_000)]
    data = parquet({"id": list(range(len(rows))), "text": rows, "copy": rows},
                   row_group_size=len(rows), data_page_size=32 * 1024, use_dictionary=False,
                   compression="none")
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 1
    dataset(hub, "alice/big", {"data/test-0.parquet": data})
    hub.reset_stats()
    got, _ = load(hub, "alice/big", samples=8)
    assert got == rows[:8]
    served = hub.stats()["download"]["files"]["datasets/alice/big/data/test-0.parquet"]
    assert served <= 2 * READ_BLOCK < len(data) / 10, (served, len(data))


def test_a_read_over_the_limit_is_refused(hub, monkeypatch):
    """A page (here a 200 KB text) larger than MAX_READ_BYTES is refused, not buffered."""
    big = parquet({"text": ["x" * 200_000, "y"]}, compression="none", use_dictionary=False)
    small = parquet({"text": pa.array(["a", "b"]).dictionary_encode()})
    dataset(hub, "alice/pages", {"data/test-0.parquet": big, "data/train-0.parquet": small})
    assert load(hub, "alice/pages", split="train") == (["a", "b"], load(hub, "alice/pages")[1])
    monkeypatch.setattr(datasets, "MAX_READ_BYTES", 100_000)
    with pytest.raises(SourceError, match=r"alice/pages, split 'test': data/test-0.parquet at "
                                          r"\w+ needs a single read of \d+ bytes; the limit "
                                          r"is 100000"):
        load(hub, "alice/pages")


def test_a_row_group_that_decodes_to_too_much_text_is_refused_before_reading(hub, monkeypatch):
    """A few KB of zstd can declare gigabytes of text (10 KB -> 300 MB measured 2.85 GB of
    peak memory when read); the declared size of the column's chunk is checked first."""
    bomb = parquet({"text": ["a" * 5_000_000]}, compression="zstd")
    assert len(bomb) < 10_000
    dataset(hub, "alice/zip-bomb", {"data/test-0.parquet": texts("ok", 3),
                                    "data/test-1.parquet": bomb})
    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 1_000_000)
    assert load(hub, "alice/zip-bomb", samples=3)[0] == ["ok 0", "ok 1", "ok 2"]  # never reached
    with pytest.raises(SourceError, match=r"alice/zip-bomb, split 'test': data/test-1.parquet "
                                          r"holds 5,0\d\d,\d+ bytes of column 'text' in one row "
                                          r"group; the limit is 1,000,000"):
        load(hub, "alice/zip-bomb", samples=4)


def test_a_card_whose_yaml_aliases_explode_is_refused_quickly(hub, monkeypatch):
    """A few hundred bytes of aliases that expand to 9^8 strings (as file patterns: 14 s
    and 1.3 GB before); the card goes through the recipes' budgeted loader instead."""
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda *args, **kwargs: None)  # a raw push
    dataset(hub, "alice/bomb", {"README.md": f"---\n{alias_bomb()}---\n".encode(),
                                "x.parquet": texts("test", 3)})
    started = time.perf_counter()
    with pytest.raises(SourceError, match=r"alice/bomb.*card cannot be read: the card's YAML "
                                          r"has more than 50,000 YAML nodes"):
        load(hub, "alice/bomb")
    assert time.perf_counter() - started < 5
