"""Hook specifications: the points where plugins (built-in or not) take part.

A plugin is a module or object with functions named like these, marked with
``@ingestkit.hookimpl``. Plugins may implement any subset and may omit
arguments they do not need. Hooks marked *firstresult* stop at the first
implementation that returns something other than ``None``.

The built-in terminal reporter, PostgreSQL recorder, last-failed and JUnit XML
plugins are written against exactly these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from pathlib import Path

    from .chunks import Chunk
    from .collection import CollectReport, Processor
    from .config import Config
    from .reports import ItemReport
    from .runner import Item, Plan, Runner
    from .session import Session
    from .sources import Entry, SourceSpec
    from .terminal import TerminalReporter

hookspec = pluggy.HookspecMarker("ingestkit")

# -- configuration ---------------------------------------------------------


@hookspec(historic=True)
def ingestkit_addoption(parser: argparse.ArgumentParser, config_keys: dict[str, str]) -> None:
    """Add command-line options and config keys.

    Called once per run, before the command line is parsed, for every plugin
    (also for plugins registered later, since the hook is historic).
    ``parser`` is an :class:`argparse.ArgumentParser`: call ``add_argument``.
    ``config_keys`` maps a ``[tool.ingestkit]`` key to its help text: add
    entries to declare config values; read them with ``config.getini(name)``.
    """


@hookspec(historic=True)
def ingestkit_configure(config: Config) -> None:
    """Called once the command line and config file are parsed, before collection.

    Plugins register further plugins (``config.pluginmanager.register``) or
    read options here. Historic: plugins registered later are called too.
    """


@hookspec
def ingestkit_unconfigure(config: Config) -> None:
    """Called once before the process (or in-process run) ends, after the batch."""


@hookspec(firstresult=True)
def ingestkit_cmdline_main(config: Config) -> int | None:
    """Perform the main command (run, ``--collect-only``, ``--fixtures``...).

    Return the exit code. The built-in ``main`` plugin runs a batch.
    """


@hookspec
def ingestkit_report_header(config: Config) -> list[str] | str | None:
    """Return lines to show in the terminal header, after ingestkit's own."""


# -- collection ------------------------------------------------------------


@hookspec(firstresult=True)
def ingestkit_ignore_collect(collection_path: Path, config: Config) -> bool | None:
    """Return True to skip a file or directory during collection."""


@hookspec
def ingestkit_collect_file(file_path: Path, session: Session) -> list[Processor] | None:
    """Collect processors from one file.

    Called for each file under the paths being collected. Return a list of
    :class:`~ingestkit.collection.Processor` (or None if the file is not
    yours). The built-in collector handles files matching ``files`` patterns.
    Raise to report a collection error for the file.
    """


@hookspec
def ingestkit_collection_modifyitems(
    session: Session, config: Config, processors: list[Processor]
) -> None:
    """Filter or reorder the collected processors in place (``-k`` does this)."""


@hookspec
def ingestkit_collectreport(report: CollectReport) -> None:
    """Called for each collection error (a file that failed to import)."""


@hookspec
def ingestkit_collection_finish(session: Session) -> None:
    """Called after collection, with ``session.processors`` final."""


# -- sources and items -----------------------------------------------------


@hookspec(firstresult=True)
def ingestkit_make_source(
    spec: SourceSpec, processor: Processor, session: Session
) -> Iterable[Entry] | None:
    """Turn a processor's ``@ingestkit.source(...)`` into entries.

    ``spec.src`` is what the decorator was given or, when that was a callable
    taking fixtures, what the call returned.

    Return an iterable of :class:`~ingestkit.sources.Entry` to handle a source
    type of your own (a plugin adding a Parquet or paged-API reader does this);
    return None to leave it to the next plugin. The built-in implementation
    handles iterables, fixture-injected callables and the built-in readers.
    """


@hookspec(firstresult=True)
def ingestkit_processor_entries(processor: Processor, session: Session) -> Iterable[Entry] | None:
    """Return the entries a processor runs over in this batch.

    The default reads the source through :func:`ingestkit_make_source`;
    the last-failed plugin returns stored payloads for ``--lf``.
    """


# -- running ---------------------------------------------------------------


@hookspec
def ingestkit_batch_start(session: Session) -> None:
    """Called when the batch starts, after its row exists in ``ingestkit.batches``."""


@hookspec(firstresult=True)
def ingestkit_runtestloop(session: Session) -> bool | None:
    """Run every processor of the session. The built-in runner implements it."""


@hookspec
def ingestkit_processor_start(processor: Processor, session: Session) -> None:
    """Called before a processor's first item."""


@hookspec
def ingestkit_processor_finish(processor: Processor, session: Session) -> None:
    """Called after a processor's last item and the teardown of its fixtures."""


@hookspec
def ingestkit_runtest_setup(item: Item) -> None:
    """Called before an item's processor is called. Raise to make it an ``error``.

    Like every per-item hook, only called when some plugin implements it, so
    it costs nothing otherwise.
    """


@hookspec(firstresult=True)
def ingestkit_runtest_call(item: Item, kwargs: dict[str, Any]) -> object | None:
    """Call the processor for ``item`` with its fixture ``kwargs``.

    Called once per item, after setup. The runner's own implementation
    (``trylast``) calls the processor, as pytest's ``pytest_pyfunc_call`` does:
    an implementation that returns None (an observer, or a ``wrapper=True``
    hook) leaves the call to it. Return anything but None to say the processor
    was called (and so replace it); raise to fail the item.

    :param item: the item being run.
    :param kwargs: the processor's arguments, by name.
    """


@hookspec
def ingestkit_runtest_teardown(item: Item) -> None:
    """Called after the call, before item-scoped fixtures are torn down."""


@hookspec
def ingestkit_runtest_makereport(item: Item, report: ItemReport) -> None:
    """Adjust an item's report (status, message) before it is recorded."""


@hookspec
def ingestkit_runtest_logreport(report: ItemReport) -> None:
    """Receive each item's final report, after its chunk committed."""


@hookspec(firstresult=True)
def ingestkit_chunk_run(runner: Runner, plan: Plan, items: list[Item], read: int) -> bool | None:
    """Run a chunk of a processor's items: the run mode (see :mod:`ingestkit.chunks`).

    Called by the runner for each chunk read from a processor's source. The
    in-process runner's implementation (``trylast``) runs the items and commits
    them with their outcome rows; the leader of ``-n`` queues them for its
    workers instead.

    :param runner: the batch's :class:`~ingestkit.runner.Runner`.
    :param plan: how the processor's items are called (fixtures, key, model).
    :param items: the chunk's items, keyed and de-duplicated.
    :param read: how many entries of the source made them.
    :return: True once the chunk is taken care of (firstresult).

    Use in conftest.py: no; a run mode is a plugin (``-p``, an entry point).
    """


@hookspec(firstresult=True)
def ingestkit_chunk_history(
    session: Session, processor: Processor, keys: list[str]
) -> dict[str, Any] | None:
    """Return the latest recorded outcome of these keys, as ``{key: reports.History}``.

    Called once per chunk before its items run; the runner decides
    ``unchanged``, ``attempt`` and ``previous_error`` from it.
    """


@hookspec
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """Add what must commit with a chunk's items, in their transaction.

    Called once per chunk, after its items ran and their writes were flushed.
    Append ``write(cursor)`` callables to ``chunk.writes``: they run in order
    right before COMMIT, in ingestkit's committing thread (so that the next
    chunk's items run meanwhile); do not touch the connection otherwise. The
    recorder adds the outcome rows here; under ``-n``, the ``workers`` plugin
    adds the end of the chunk's task (``chunk.task``; ``chunk.left`` holds the
    items a stopping worker did not run). A write that raises loses the chunk
    and stops the batch.
    """


@hookspec
def ingestkit_chunk_finish(session: Session, chunk: Chunk) -> None:
    """Called once a chunk is known to have committed (progress reporting happens here)."""


@hookspec
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    """Called once after the last processor, before the terminal summary."""


# -- reporting -------------------------------------------------------------


@hookspec
def ingestkit_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: Config
) -> None:
    """Add sections to the closing summary (``terminalreporter.write_line``)."""
