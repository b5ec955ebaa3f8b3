"""The built-in fixtures (plugin ``builtin``): record, item, db, lookup, batch, log, config.

``request`` is provided by the fixture system itself. ``record``, ``item`` and
``log`` are filled in by the runner for each item; the rest live for the batch.
"""

from __future__ import annotations

import logging
from typing import Any

from .capture import ITEM_LOGGER
from .fixtures import FixtureRequest, fixture


def _outside_item(name: str) -> RuntimeError:
    return RuntimeError(f"fixture '{name}' is only available while an item runs")


@fixture
def record(request: FixtureRequest) -> Any:
    """The current record, as the source yielded it."""
    raise _outside_item("record")


@fixture
def item(request: FixtureRequest) -> Any:
    """The current item: .key, .nodeid, .attempt (1 on first try), .previous_error."""
    raise _outside_item("item")


@fixture
def log(request: FixtureRequest) -> logging.Logger:
    """A logging.Logger; what an item logs is stored with its outcome."""
    return logging.getLogger(ITEM_LOGGER)


@fixture(scope="batch")
def db(request: FixtureRequest) -> Any:
    """The run's database handle: execute, query, query_one, insert, upsert, connection."""
    return request.config.session.db


@fixture(scope="batch")
def lookup(request: FixtureRequest) -> Any:
    """lookup(table, returning="id", **match) -> value, cached for the batch."""
    return request.config.session.lookup


@fixture(scope="batch")
def batch(request: FixtureRequest) -> Any:
    """The batch: .id (UUID), .started_at, .meta (saved with the batch), .dry_run."""
    return request.config.session.batch


@fixture(name="config", scope="batch")
def config_fixture(request: FixtureRequest) -> Any:
    """Parsed options (config.option, config.getoption) and config values (config.getini)."""
    return request.config
