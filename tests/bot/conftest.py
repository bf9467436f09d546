"""Bot fixtures: a localhub with a bot user, tiny source models on it, bot settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot.settings import Settings
from bot.store import Store
from bot.store_pg import PostgresStore
from merge_engine.synth import write_model
from tests.bot.botutil import BOT, BOT_TOKEN, SECRET, SHAPE, SOURCES
from tests.hubtools import USERS, Hub, hf_endpoint, hf_env, hub, receiver  # noqa: F401


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Local copies of the three source models (generated once per session)."""
    root = tmp_path_factory.mktemp("bot-models")
    return {
        repo: write_model(root / repo.split("/")[1], SHAPE, donor=i or None)
        for i, repo in enumerate(SOURCES)
    }


@pytest.fixture
def bothub(tmp_path: Path):
    """localhub with alice, bob and the bot user, test hooks on."""
    server = Hub(tmp_path / "bothub", {**USERS, BOT: BOT_TOKEN}, {"test_hooks": True}).start()
    yield server
    server.stop()


@pytest.fixture
def sources(bothub: Hub, model_dirs: dict[str, Path]) -> Hub:
    """alice/base, alice/donor-1, alice/donor-2 uploaded to the hub (public)."""
    api = bothub.api("alice")
    for repo, path in model_dirs.items():
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=path, commit_message="weights")
    return bothub


@pytest.fixture
def scorable(sources: Hub) -> Hub:
    """``sources`` with a word-level tokenizer.json on alice/base, so a merge of it can be
    evaluated (POST /api/recipes and /api/sweeps refuse evaluation without one)."""
    from tokenizers import Tokenizer, models

    words = {"<unk>": 0, **{f"w{i}": i for i in range(1, 64)}}
    path = sources.data_dir.parent / "base-tokenizer.json"
    Tokenizer(models.WordLevel(words, unk_token="<unk>")).save(str(path))
    sources.api("alice").upload_file(path_or_fileobj=str(path), path_in_repo="tokenizer.json",
                                     repo_id="alice/base")
    return sources


@pytest.fixture
def make_settings(tmp_path: Path, bothub: Hub) -> Callable[..., Settings]:
    """Settings for a bot on `bothub` with state under tmp_path/home; kwargs override."""

    def make(**overrides) -> Settings:
        values = {
            "home": tmp_path / "home",
            "endpoint": bothub.url,
            "token": BOT_TOKEN,
            "webhook_secret": SECRET,
            "lease_seconds": 10.0,
            "poll_seconds": 0.05,
            "backoff_seconds": 0.1,
            "device": "cpu",
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, settings: Settings) -> Store:
    """The bot's store, migrated: the SQLite file under home, or a Postgres database."""
    if request.param == "postgres":
        db: Store = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        db = Store(settings.db_path)
    db.migrate()
    yield db
    if isinstance(db, PostgresStore):
        db.close()
