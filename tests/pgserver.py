"""A throwaway Postgres server for tests and benchmarks (Debian's ``postgresql`` package).

``PgServer.start()`` runs ``initdb`` and ``postgres`` in a fresh temp dir, listening only
on a Unix socket there, with fsync off; as root it runs them as the unprivileged
``nobody`` (Postgres refuses to run as root). ``database_url(schema)`` gives a URL whose
connections use their own schema, so each test gets an empty database cheaply.
``unavailable()`` says why no server can be had here, or None.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

USER = "mergebot"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_user() -> list[str]:
    """The command prefix that runs Postgres as a non-root user."""
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


def unavailable() -> str | None:
    """Why a Postgres server cannot be started here (None when it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'mergebot[postgres]')"
    if _bindir() is None:
        return "Postgres is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, so Postgres cannot drop privileges"
    return None


class PgServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mergebot-pg-"))
        self.data = self.dir / "data"
        self._counter = 0

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*_as_user(), *args], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> PgServer:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")
        bindir = _bindir()
        self._pg_ctl = str(bindir / "pg_ctl")
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-k {self.dir} -c listen_addresses='' -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self._pg_ctl, "-D", str(self.data), "-o", options, "-l",
                  str(self.dir / "log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}@/postgres?host={quote(str(self.dir), safe='')}"

    def database_url(self, schema: str | None = None) -> str:
        """A URL whose connections see only ``schema`` (created empty; default: a new one)."""
        import psycopg

        if schema is None:
            self._counter += 1
            schema = f"t{os.getpid()}_{self._counter}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return self.admin_url + "&options=" + quote(f"-csearch_path={schema}", safe="")
