"""Which database the bot uses: ``open_store(settings)``.

SQLite under ``MERGEBOT_HOME`` (one machine, the default) or, when
``MERGEBOT_DATABASE_URL`` is set, the Postgres database that a fleet of workers on several
machines shares.
"""

from __future__ import annotations

from .settings import Settings
from .store import Store
from .store_pg import PostgresStore


def open_store(settings: Settings) -> Store:
    """The bot's database: Postgres at ``settings.database_url`` when set, else SQLite."""
    if settings.database_url:
        return PostgresStore(settings.database_url)
    return Store(settings.db_path)
