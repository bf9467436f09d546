"""The bot's durable state: one SQLite database (WAL) under MERGEBOT_HOME, or a shared
Postgres database (:mod:`bot.store_pg`) when ``MERGEBOT_DATABASE_URL`` is set.

Contracts:
- :func:`bot.database.open_store` picks the database from the settings. Both speak the
  same SQL (``?`` and ``:name`` parameters, ``RETURNING``, ``ON CONFLICT``); the few
  places where concurrent writers need more than SQLite's one-writer lock go through the
  connection's :meth:`Connection.lock`, :meth:`Connection.try_lock` and
  :meth:`Connection.skip_locked`, which are no-ops here.
- ``Store(path).migrate()`` applies the numbered migrations not yet in
  ``schema_migrations``, each in its own transaction; it is safe to run from several
  processes at once and on every start.
- Every write happens inside ``with store.write() as db:`` (``BEGIN IMMEDIATE``: one
  writer at a time across threads and processes, others wait up to ``busy_timeout``);
  reads use ``with store.read() as db:``. Connections are short-lived and per call, so a
  Store is shared freely between threads and a process may be killed at any point: a
  transaction is applied whole or not at all.
- Rows come back as frozen dataclasses (:class:`Recipe`, :class:`Job`); JSON columns are
  decoded. Tokens are never stored.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from merge_engine import EvalSet, EvalTable

BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE recipes (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            yaml TEXT NOT NULL,
            repo_id TEXT NOT NULL,
            private INTEGER NOT NULL DEFAULT 0,
            watch INTEGER NOT NULL DEFAULT 0,
            sources TEXT NOT NULL,          -- JSON list of Hub repo ids
            broken TEXT,                    -- why it cannot remerge (NULL when fine)
            last_shas TEXT,                 -- JSON {repo: sha} of the last good merge
            last_commit TEXT,
            deleted INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX recipes_owner ON recipes(owner);
        CREATE INDEX recipes_repo ON recipes(repo_id);
        CREATE TABLE recipe_sources (
            recipe_id INTEGER NOT NULL REFERENCES recipes(id),
            repo_id TEXT NOT NULL,
            PRIMARY KEY (recipe_id, repo_id)
        );
        CREATE INDEX recipe_sources_repo ON recipe_sources(repo_id);
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            recipe_id INTEGER NOT NULL REFERENCES recipes(id),
            owner TEXT NOT NULL,
            trigger TEXT NOT NULL,
            triggers INTEGER NOT NULL DEFAULT 1,   -- triggers this job absorbed
            force INTEGER NOT NULL DEFAULT 0,      -- merge even when the SHAs are unchanged
            status TEXT NOT NULL,                  -- queued running succeeded failed skipped
            stage TEXT,
            progress REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires REAL,
            source_shas TEXT,
            commit_sha TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        );
        CREATE INDEX jobs_status ON jobs(status, not_before);
        CREATE INDEX jobs_recipe ON jobs(recipe_id, status);
        CREATE INDEX jobs_owner ON jobs(owner, status);
        CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            ts REAL NOT NULL,
            line TEXT NOT NULL
        );
        CREATE INDEX job_logs_job ON job_logs(job_id, id);
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            identity TEXT UNIQUE,           -- repo@old..new for content events, else NULL
            event TEXT NOT NULL,
            repo TEXT,
            outcome TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            received_at REAL NOT NULL,
            last_at REAL NOT NULL
        );
        """,
    ),
    (
        2,
        """
        -- the target repo a job is about to create, recorded before it creates it
        ALTER TABLE jobs ADD COLUMN created_repo TEXT;
        CREATE TABLE repo_cleanups (        -- created repos of jobs that ended unsuccessfully
            job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
            repo_id TEXT NOT NULL,
            tries INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            outcome TEXT                    -- NULL while pending: deleted, kept, abandoned
        );
        CREATE INDEX repo_cleanups_pending ON repo_cleanups(outcome, not_before);
        """,
    ),
    (
        3,
        """
        -- publish even when the merge's perplexity is above the checks' limit
        ALTER TABLE recipes ADD COLUMN allow_high_perplexity INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        4,
        """
        CREATE TABLE job_runs (             -- where a backend ran a job (bot.backends)
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            backend TEXT NOT NULL,
            run_id TEXT NOT NULL,           -- e.g. the Hugging Face Job id
            flavor TEXT,
            adopted INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            PRIMARY KEY (job_id, attempt)
        );
        """,
    ),
    (
        5,
        """
        CREATE TABLE sweeps (               -- one recipe tried at several values (bot.sweeps)
            id INTEGER PRIMARY KEY,
            recipe_id INTEGER NOT NULL REFERENCES recipes(id),
            owner TEXT NOT NULL,
            yaml TEXT NOT NULL,             -- the recipe swept
            axes TEXT NOT NULL,             -- JSON {YAML path: [values]}
            evaluation TEXT NOT NULL,       -- JSON list of the evaluation sets
            metric TEXT NOT NULL,           -- the set whose perplexity picks the best
            publish TEXT NOT NULL,          -- best | branches
            status TEXT NOT NULL,           -- running publishing succeeded failed
            sources TEXT,                   -- JSON rows of the sources' scores
            best INTEGER,                   -- the chosen variant's index
            commit_sha TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX sweeps_recipe ON sweeps(recipe_id);
        CREATE TABLE sweep_variants (
            sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
            idx INTEGER NOT NULL,
            label TEXT NOT NULL,
            vals TEXT NOT NULL,             -- JSON {YAML path: value}
            yaml TEXT NOT NULL,             -- the variant's own recipe
            scores TEXT,                    -- JSON {set: score}, once evaluated
            PRIMARY KEY (sweep_id, idx)
        );
        -- a sweep's jobs: one per variant, then one (variant NULL) that publishes
        ALTER TABLE jobs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id);
        ALTER TABLE jobs ADD COLUMN variant INTEGER;
        CREATE INDEX jobs_sweep ON jobs(sweep_id, variant);
        """,
    ),
    (
        6,
        """
        -- multi-stage recipes: publish each intermediate on a branch stage-<name> too
        ALTER TABLE recipes ADD COLUMN publish_intermediates INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        7,
        """
        -- what a merge publishes: full weights, a LoRA adapter of it, or both (bot.publish)
        ALTER TABLE recipes ADD COLUMN publish TEXT NOT NULL DEFAULT 'full';
        ALTER TABLE recipes ADD COLUMN max_rank INTEGER;
        ALTER TABLE recipes ADD COLUMN sv_cutoff REAL NOT NULL DEFAULT 0;
        """,
    ),
    (
        8,
        """
        -- a merge scored on evaluation sets: JSON list of merge_engine.EvalSet, NULL for none
        ALTER TABLE recipes ADD COLUMN evaluation TEXT;
        """,
    ),
)


@dataclass(frozen=True)
class Recipe:
    id: int
    owner: str
    yaml: str
    repo_id: str
    private: bool
    watch: bool
    sources: tuple[str, ...]
    broken: str | None
    last_shas: dict[str, str | None] | None
    last_commit: str | None
    deleted: bool
    created_at: float
    updated_at: float
    allow_high_perplexity: bool = False
    publish_intermediates: bool = False
    publish: str = "full"
    """``full``, ``adapter`` or ``both`` (:data:`bot.publish.PUBLISH_MODES`)."""
    max_rank: int | None = None
    """The adapter's largest rank per module (None with ``full``)."""
    sv_cutoff: float = 0.0
    evaluation: tuple[EvalSet, ...] = ()
    """The sets every merge of this recipe is scored on (its card gets the table)."""

    def to_api(self) -> dict:
        return {
            "id": self.id,
            "owner": self.owner,
            "recipe": self.yaml,
            "repo_id": self.repo_id,
            "private": self.private,
            "watch": self.watch,
            "allow_high_perplexity": self.allow_high_perplexity,
            "publish_intermediates": self.publish_intermediates,
            "publish": self.publish,
            "max_rank": self.max_rank,
            "sv_cutoff": self.sv_cutoff,
            "evaluation": dump_sets(self.evaluation),
            "sources": list(self.sources),
            "broken": self.broken,
            "last_shas": self.last_shas,
            "last_commit": self.last_commit,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Job:
    id: int
    recipe_id: int
    owner: str
    trigger: str
    triggers: int
    force: bool
    status: str
    stage: str | None
    progress: float | None
    attempts: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    source_shas: dict[str, str | None] | None
    commit_sha: str | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    created_repo: str | None
    """The target repo this job recorded it would create (see :mod:`bot.cleanup`)."""
    sweep_id: int | None = None
    """The sweep this job belongs to (:mod:`bot.sweeps`), if any."""
    variant: int | None = None
    """Its variant's index in the sweep; None for the sweep's publishing job."""

    def to_api(self) -> dict:
        return {
            "id": self.id,
            "recipe_id": self.recipe_id,
            "owner": self.owner,
            "status": self.status,
            "stage": self.stage,
            "progress": self.progress,
            "trigger": self.trigger,
            "triggers": self.triggers,
            "attempts": self.attempts,
            "source_shas": self.source_shas,
            "commit": self.commit_sha,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "sweep_id": self.sweep_id,
            "variant": self.variant,
        }


def dump_sets(sets) -> list[dict] | None:
    """Evaluation sets as JSON data (None for none)."""
    return [asdict(s) for s in sets] or None


def load_sets(text: str | None) -> tuple[EvalSet, ...]:
    """The sets a ``recipes.evaluation`` column holds."""
    if not text:
        return ()
    return tuple(EvalTable.from_json({"sets": json.loads(text), "rows": []}).sets)


def _sets_column(sets) -> str | None:
    data = dump_sets(sets)
    return json.dumps(data) if data else None


def _recipe(row: sqlite3.Row) -> Recipe:
    return Recipe(
        id=row["id"],
        owner=row["owner"],
        yaml=row["yaml"],
        repo_id=row["repo_id"],
        private=bool(row["private"]),
        watch=bool(row["watch"]),
        sources=tuple(json.loads(row["sources"])),
        broken=row["broken"],
        last_shas=json.loads(row["last_shas"]) if row["last_shas"] else None,
        last_commit=row["last_commit"],
        deleted=bool(row["deleted"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        allow_high_perplexity=bool(row["allow_high_perplexity"]),
        publish_intermediates=bool(row["publish_intermediates"]),
        publish=row["publish"],
        max_rank=row["max_rank"],
        sv_cutoff=float(row["sv_cutoff"]),
        evaluation=load_sets(row["evaluation"]),
    )


def job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        recipe_id=row["recipe_id"],
        owner=row["owner"],
        trigger=row["trigger"],
        triggers=row["triggers"],
        force=bool(row["force"]),
        status=row["status"],
        stage=row["stage"],
        progress=row["progress"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        source_shas=json.loads(row["source_shas"]) if row["source_shas"] else None,
        commit_sha=row["commit_sha"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        created_repo=row["created_repo"],
        sweep_id=row["sweep_id"],
        variant=row["variant"],
    )


def _enable_wal(db: sqlite3.Connection, path: Path) -> None:
    """Switch the database to WAL mode (persistent). SQLite answers "database is locked"
    at once, without its busy handler, when another connection is switching it at the
    same moment (several processes starting on a new database), so this retries until
    ``BUSY_TIMEOUT_MS``."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"{path}: could not switch the database to WAL mode")
        time.sleep(0.01)


class Connection(sqlite3.Connection):
    """A SQLite connection with the concurrency hooks Postgres needs; here they do nothing,
    because ``BEGIN IMMEDIATE`` already makes writers take turns."""

    def lock(self, key: str) -> None:
        """Hold ``key`` until the transaction ends, waiting while another holds it."""

    def try_lock(self, key: str) -> bool:
        """Hold ``key`` until the transaction ends if no one else does; did we get it?"""
        return True

    def skip_locked(self, alias: str) -> str:
        """The clause that makes a SELECT lock the rows of ``alias`` it returns, skipping
        rows other transactions hold (empty here)."""
        return ""


class Store:
    """The database at ``path``; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, factory=Connection
        )
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on exit, rolled back on any exception."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        db = self._connect()
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""
        db = self._connect()
        try:
            _enable_wal(db, self.path)
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
        finally:
            db.close()
        for version, sql in MIGRATIONS:
            with self.write() as db:
                done = db.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                ).fetchone()
                if done:
                    continue
                for statement in _statements(sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
        return self.version()

    def version(self) -> int:
        with self.read() as db:
            row = db.execute("SELECT MAX(version) AS v FROM schema_migrations").fetchone()
        return row["v"] or 0

    # recipes ------------------------------------------------------------------------

    def add_recipe(
        self,
        db: sqlite3.Connection,
        *,
        owner: str,
        yaml: str,
        repo_id: str,
        private: bool,
        watch: bool,
        sources: list[str],
        allow_high_perplexity: bool = False,
        publish: str = "full",
        max_rank: int | None = None,
        sv_cutoff: float = 0.0,
        publish_intermediates: bool = False,
        evaluation: tuple[EvalSet, ...] = (),
    ) -> int:
        now = time.time()
        row = db.execute(
            "INSERT INTO recipes (owner, yaml, repo_id, private, watch, sources, created_at,"
            " updated_at, allow_high_perplexity, publish, max_rank, sv_cutoff,"
            " publish_intermediates, evaluation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (owner, yaml, repo_id, int(private), int(watch), json.dumps(sources), now, now,
             int(allow_high_perplexity), publish, max_rank, float(sv_cutoff),
             int(publish_intermediates), _sets_column(evaluation)),
        ).fetchone()
        recipe_id = int(row["id"])
        self._set_sources(db, recipe_id, sources)
        return recipe_id

    def replace_recipe(
        self,
        db: sqlite3.Connection,
        recipe_id: int,
        *,
        yaml: str,
        private: bool,
        watch: bool,
        sources: list[str],
        allow_high_perplexity: bool = False,
        publish: str = "full",
        max_rank: int | None = None,
        sv_cutoff: float = 0.0,
        publish_intermediates: bool = False,
        evaluation: tuple[EvalSet, ...] = (),
    ) -> None:
        """New YAML (or publication, or evaluation sets) for an existing recipe: forgets
        the last good SHAs and any breakage."""
        db.execute(
            "UPDATE recipes SET yaml = ?, private = ?, watch = ?, sources = ?, broken = NULL,"
            " last_shas = NULL, deleted = 0, updated_at = ?, allow_high_perplexity = ?,"
            " publish = ?, max_rank = ?, sv_cutoff = ?, publish_intermediates = ?,"
            " evaluation = ? WHERE id = ?",
            (yaml, int(private), int(watch), json.dumps(sources), time.time(),
             int(allow_high_perplexity), publish, max_rank, float(sv_cutoff),
             int(publish_intermediates), _sets_column(evaluation), recipe_id),
        )
        self._set_sources(db, recipe_id, sources)

    def set_recipe_yaml(self, db: sqlite3.Connection, recipe_id: int, yaml: str) -> None:
        """The YAML a sweep published (its best variant): what a remerge merges."""
        db.execute("UPDATE recipes SET yaml = ?, updated_at = ? WHERE id = ?",
                   (yaml, time.time(), recipe_id))

    def set_watch(self, db: sqlite3.Connection, recipe_id: int, watch: bool) -> None:
        db.execute(
            "UPDATE recipes SET watch = ?, updated_at = ? WHERE id = ?",
            (int(watch), time.time(), recipe_id),
        )

    def _set_sources(self, db: sqlite3.Connection, recipe_id: int, sources: list[str]) -> None:
        db.execute("DELETE FROM recipe_sources WHERE recipe_id = ?", (recipe_id,))
        db.executemany(
            "INSERT INTO recipe_sources (recipe_id, repo_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            [(recipe_id, s) for s in sources],
        )

    def get_recipe(self, recipe_id: int, db: sqlite3.Connection | None = None) -> Recipe | None:
        if db is None:
            with self.read() as db:
                return self.get_recipe(recipe_id, db)
        row = db.execute("SELECT * FROM recipes WHERE id = ?", (recipe_id,)).fetchone()
        return _recipe(row) if row else None

    def recipe_for_repo(self, db: sqlite3.Connection, repo_id: str) -> Recipe | None:
        """The live recipe publishing to ``repo_id``, if any."""
        row = db.execute(
            "SELECT * FROM recipes WHERE repo_id = ? AND deleted = 0 ORDER BY id LIMIT 1",
            (repo_id,),
        ).fetchone()
        return _recipe(row) if row else None

    def list_recipes(self, owner: str | None = None, limit: int = 100) -> list[Recipe]:
        with self.read() as db:
            if owner is None:
                rows = db.execute(
                    "SELECT * FROM recipes WHERE deleted = 0 ORDER BY id DESC LIMIT ?", (limit,)
                )
            else:
                rows = db.execute(
                    "SELECT * FROM recipes WHERE deleted = 0 AND owner = ? ORDER BY id DESC"
                    " LIMIT ?",
                    (owner, limit),
                )
            return [_recipe(r) for r in rows]

    def watching_recipes(self, db: sqlite3.Connection, repo_id: str) -> list[Recipe]:
        """Live recipes with ``watch`` on that use ``repo_id`` as a source."""
        rows = db.execute(
            "SELECT r.* FROM recipes r JOIN recipe_sources s ON s.recipe_id = r.id"
            " WHERE s.repo_id = ? AND r.watch = 1 AND r.deleted = 0 ORDER BY r.id",
            (repo_id,),
        )
        return [_recipe(r) for r in rows]

    def is_output_repo(self, db: sqlite3.Connection, repo_id: str) -> bool:
        """Is ``repo_id`` the target of any recipe, or the sibling adapter repo of one
        that publishes both (the bot's own output)?"""
        row = db.execute(
            "SELECT 1 FROM recipes WHERE repo_id = ? OR (publish = 'both' AND"
            " repo_id || '-lora' = ?) LIMIT 1", (repo_id, repo_id))
        return row.fetchone() is not None

    def watched_sources(self) -> set[str]:
        """Hub repos that some live, watched recipe reads."""
        with self.read() as db:
            rows = db.execute(
                "SELECT DISTINCT s.repo_id FROM recipe_sources s JOIN recipes r"
                " ON r.id = s.recipe_id WHERE r.watch = 1 AND r.deleted = 0"
            )
            return {r["repo_id"] for r in rows}

    def set_broken(self, db: sqlite3.Connection, recipe_id: int, reason: str | None) -> None:
        db.execute(
            "UPDATE recipes SET broken = ?, updated_at = ? WHERE id = ?",
            (reason, time.time(), recipe_id),
        )

    def record_success(
        self, db: sqlite3.Connection, recipe_id: int, shas: dict, commit: str | None
    ) -> None:
        """The recipe's last good merge; clears any breakage."""
        db.execute(
            "UPDATE recipes SET last_shas = ?, last_commit = COALESCE(?, last_commit),"
            " broken = NULL, updated_at = ? WHERE id = ?",
            (json.dumps(shas, sort_keys=True), commit, time.time(), recipe_id),
        )

    def delete_recipe(self, db: sqlite3.Connection, recipe_id: int) -> None:
        """Soft delete: it stops being watched; its jobs and history stay."""
        db.execute(
            "UPDATE recipes SET deleted = 1, watch = 0, updated_at = ? WHERE id = ?",
            (time.time(), recipe_id),
        )

    # jobs ---------------------------------------------------------------------------

    def get_job(self, job_id: int, db: sqlite3.Connection | None = None) -> Job | None:
        if db is None:
            with self.read() as db:
                return self.get_job(job_id, db)
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def recipe_jobs(self, recipe_id: int, limit: int = 20) -> list[Job]:
        with self.read() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE recipe_id = ? ORDER BY id DESC LIMIT ?",
                (recipe_id, limit),
            )
            return [job_from_row(r) for r in rows]

    def count_jobs(self, status: str | None = None) -> int:
        with self.read() as db:
            if status is None:
                return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def jobs_with_status(self, status: str, limit: int = 20) -> list[Job]:
        """The oldest ``limit`` jobs with ``status``."""
        with self.read() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY id LIMIT ?", (status, limit)
            )
            return [job_from_row(r) for r in rows]

    def append_log(self, job_id: int, line: str) -> None:
        with self.write() as db:
            db.execute(
                "INSERT INTO job_logs (job_id, ts, line) VALUES (?, ?, ?)",
                (job_id, time.time(), line),
            )

    def log_tail(self, job_id: int, lines: int = 50) -> list[str]:
        with self.read() as db:
            rows = db.execute(
                "SELECT line FROM job_logs WHERE job_id = ? ORDER BY id DESC LIMIT ?",
                (job_id, lines),
            ).fetchall()
        return [r["line"] for r in reversed(rows)]

    def record_run(
        self, job_id: int, attempt: int, *, backend: str, run_id: str, flavor: str | None,
        adopted: bool = False,
    ) -> None:
        """Where attempt ``attempt`` of the job runs (the latest record of an attempt wins)."""
        with self.write() as db:
            db.execute(
                "INSERT INTO job_runs (job_id, attempt, backend, run_id, flavor, adopted,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO"
                " UPDATE SET backend = excluded.backend, run_id = excluded.run_id,"
                " flavor = excluded.flavor, adopted = excluded.adopted,"
                " created_at = excluded.created_at",
                (job_id, attempt, backend, run_id, flavor, int(adopted), time.time()),
            )

    def last_run(self, job_id: int) -> dict | None:
        """The job's latest run record: attempt, backend, run_id, flavor, adopted."""
        with self.read() as db:
            row = db.execute(
                "SELECT attempt, backend, run_id, flavor, adopted FROM job_runs"
                " WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
                (job_id,),
            ).fetchone()
        return dict(row) | {"adopted": bool(row["adopted"])} if row else None

    # deliveries ---------------------------------------------------------------------

    def record_delivery(
        self,
        db: sqlite3.Connection,
        *,
        identity: str | None,
        event: str,
        repo: str | None,
        outcome: str,
    ) -> bool:
        """Record one webhook delivery; False when ``identity`` was seen before. One
        upsert, so concurrent deliveries of the same identity count once each."""
        now = time.time()
        row = db.execute(
            "INSERT INTO deliveries (identity, event, repo, outcome, received_at, last_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (identity) DO UPDATE"
            " SET count = deliveries.count + 1, last_at = excluded.last_at RETURNING count",
            (identity, event, repo, outcome, now, now),
        ).fetchone()
        return row["count"] == 1

    def delivery_stats(self) -> dict:
        """Deliveries recorded, total received (duplicates included), and by outcome."""
        with self.read() as db:
            rows = db.execute(
                "SELECT outcome, COUNT(*) AS n, SUM(count) AS total FROM deliveries"
                " GROUP BY outcome"
            ).fetchall()
        by_outcome = {r["outcome"]: r["n"] for r in rows}
        return {
            "recorded": sum(by_outcome.values()),
            "received": sum(r["total"] for r in rows),
            "by_outcome": by_outcome,
        }

    def last_delivery(self) -> dict | None:
        """The most recent webhook delivery: event, repo, outcome, count, last_at."""
        with self.read() as db:
            row = db.execute(
                "SELECT event, repo, outcome, count, last_at FROM deliveries"
                " ORDER BY last_at DESC, id DESC LIMIT 1"
            ).fetchone()
        return dict(row) if row else None


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our literals)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
