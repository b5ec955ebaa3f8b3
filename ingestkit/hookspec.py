"""Hook specifications: the points where plugins (built-in or not) take part.

A plugin is a module or object with functions named like these, marked with
``@ingestkit.hookimpl``. Plugins may implement any subset and may omit
arguments they do not need. Hooks marked *firstresult* stop at the first
implementation that returns something other than ``None``.

The built-in terminal reporter, PostgreSQL recorder, last-failed and JUnit XML
plugins are written against exactly these hooks.

A ``conftest.py`` may implement hooks too. As in pytest, the hooks about one
file, processor or item (collecting a file, a processor's start, entries and
end, its chunks' history and reports, the ``runtest`` hooks) are called only
for the conftest.py files at or above that file's folder; the others are
called for every conftest.py loaded. Each hook says which it is under "Use in
conftest.py".
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

    :param parser: an :class:`argparse.ArgumentParser`: call ``add_argument``.
    :param config_keys: maps a ``[tool.ingestkit]`` key to its help text: add
        entries to declare config values; read them with ``config.getini(name)``.

    Use in conftest.py: no; conftest.py files load after the command line
    is parsed. Options belong in a plugin (``-p``, an entry point).
    """


@hookspec(historic=True)
def ingestkit_configure(config: Config) -> None:
    """Called once the command line and config file are parsed, before collection.

    Plugins register further plugins (``config.pluginmanager.register``) or
    read options here. Historic: plugins registered later are called too.

    :param config: the run's configuration.

    Use in conftest.py: yes, called when the conftest.py is loaded.
    """


@hookspec
def ingestkit_unconfigure(config: Config) -> None:
    """Called once before the process (or in-process run) ends, after the batch.

    :param config: the run's configuration.

    Use in conftest.py: yes.
    """


@hookspec(firstresult=True)
def ingestkit_cmdline_main(config: Config) -> int | None:
    """Perform the main command (run, ``--collect-only``, ``--fixtures``...).

    Called once, after ``ingestkit_configure``.

    :param config: the run's configuration.
    :return: the process's exit code; None to leave the command to the next
        plugin. The built-in ``session`` plugin (``trylast``) runs a batch.

    Use in conftest.py: no; conftest.py files load during collection.
    """


@hookspec
def ingestkit_report_header(config: Config) -> list[str] | str | None:
    """Return lines to show in the terminal header, after ingestkit's own.

    Called once, when the terminal reporter writes the header.

    :param config: the run's configuration.
    :return: a line, a list of lines, or None.

    Use in conftest.py: yes, for a conftest.py at or above the paths given.
    """


# -- collection ------------------------------------------------------------


@hookspec(firstresult=True)
def ingestkit_ignore_collect(collection_path: Path, config: Config) -> bool | None:
    """Return True to skip a file or directory during collection.

    Called for each file and directory under the paths collected, before
    looking into it.

    :param collection_path: the file or directory.
    :param config: the run's configuration.
    :return: True to ignore it; None to let other plugins decide.

    Use in conftest.py: yes; only for paths below the conftest.py's folder.
    """


@hookspec
def ingestkit_collect_file(file_path: Path, session: Session) -> list[Processor] | None:
    """Collect processors from one file.

    Called for each file under the paths being collected. The built-in
    collector handles files matching the ``files`` patterns. Raise to report
    a collection error for the file.

    :param file_path: the file.
    :param session: the session.
    :return: a list of :class:`~ingestkit.collection.Processor`, or None if
        the file is not yours.

    Use in conftest.py: yes; only for files below the conftest.py's folder.
    """


@hookspec
def ingestkit_collection_modifyitems(
    session: Session, config: Config, processors: list[Processor]
) -> None:
    """Filter or reorder the collected processors in place (``-k`` does this).

    Called once, after every file is collected.

    :param session: the session.
    :param config: the run's configuration.
    :param processors: the processors, in run order: change the list in place.

    Use in conftest.py: yes; it sees every processor, as in pytest.
    """


@hookspec
def ingestkit_collectreport(report: CollectReport) -> None:
    """Called for each collection error (a file that failed to import).

    :param report: the file and its error.

    Use in conftest.py: yes; only for files below the conftest.py's folder.
    """


@hookspec
def ingestkit_collection_finish(session: Session) -> None:
    """Called after collection, with ``session.processors`` final.

    :param session: the session.

    Use in conftest.py: yes.
    """


# -- sources and items -----------------------------------------------------


@hookspec(firstresult=True)
def ingestkit_make_source(
    spec: SourceSpec, processor: Processor, session: Session
) -> Iterable[Entry] | None:
    """Turn a processor's ``@ingestkit.source(...)`` into entries.

    Called once per processor per batch, when its source is read (lazily: as
    the runner takes entries from the iterable). The built-in implementation
    (``trylast``) handles iterables, fixture-injected callables and the
    built-in readers.

    :param spec: ``spec.src`` is what the decorator was given or, when that
        was a callable taking fixtures, what the call returned.
    :param processor: the processor.
    :param session: the session.
    :return: an iterable of :class:`~ingestkit.sources.Entry` to handle a
        source type of your own (a plugin adding a reader does this); None to
        leave it to the next plugin.

    Use in conftest.py: yes; only for processors below the conftest.py's folder.
    """


@hookspec(firstresult=True)
def ingestkit_processor_entries(processor: Processor, session: Session) -> Iterable[Entry] | None:
    """Return the entries a processor runs over in this batch.

    Called once per processor, after ``ingestkit_processor_start``. The
    default (``trylast``) reads the source through ``ingestkit_make_source``;
    the last-failed plugin returns stored payloads for ``--lf``.

    :param processor: the processor.
    :param session: the session.
    :return: an iterable of :class:`~ingestkit.sources.Entry`, or None.

    Use in conftest.py: yes; only for processors below the conftest.py's folder.
    """


@hookspec(firstresult=True)
def ingestkit_file_dispatch(
    session: Session, processor: Processor, path: Path, size: int, sha256: str
) -> bool | None:
    """Whether another process reads a file of a processor's glob.

    Called by the file ledger before a file is parsed, once the file was found
    not read completely before. The leader of ``-n`` implements it: it queues the
    file as one task, and the worker that claims the task reads the whole file
    itself, commits its chunks with the task's progress (a worker that dies is
    followed by the next from the last committed chunk on) and records the file
    in ``ingestkit.files`` with its last chunk.

    :param session: the session.
    :param processor: the processor whose source the file is in.
    :param path: the file, as the glob found it.
    :param size: its size in bytes.
    :param sha256: the hex sha256 of its content.
    :return: True when the file is read elsewhere (it is not parsed here); None
        to read it here.

    Use in conftest.py: no; a run mode is a plugin (``-p``, an entry point).
    """


# -- running ---------------------------------------------------------------


@hookspec
def ingestkit_batch_start(session: Session) -> None:
    """Called when the batch starts, after its row exists in ``ingestkit.batches``.

    Called once per process that runs items (under ``-n``: the leader and
    each worker), before the first processor.

    :param session: the session.

    Use in conftest.py: yes.
    """


@hookspec(firstresult=True)
def ingestkit_runtestloop(session: Session) -> bool | None:
    """Run every processor of the session.

    Called once, after ``ingestkit_batch_start``. The in-process runner
    implements it (``trylast``); under ``-n`` the leader's and a worker's
    plugins do.

    :param session: the session.
    :return: True once the batch ran; None to leave it to the next plugin.

    Use in conftest.py: no; a run mode is a plugin.
    """


@hookspec
def ingestkit_processor_start(processor: Processor, session: Session) -> None:
    """Called before a processor's first item.

    Called once per processor in the leader (or the single process), and
    under ``-n`` in each worker that runs some of its items, before its
    fixtures wider than ``item`` are set up there.

    :param processor: the processor.
    :param session: the session.

    Use in conftest.py: yes; only for processors below the conftest.py's folder.
    """


@hookspec
def ingestkit_processor_finish(processor: Processor, session: Session) -> None:
    """Called after a processor's last item and the teardown of its fixtures.

    Called where ``ingestkit_processor_start`` was; in the leader, once every
    item of the processor is committed and reported.

    :param processor: the processor.
    :param session: the session.

    Use in conftest.py: yes; only for processors below the conftest.py's folder.
    """


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
    :return: True once the chunk is taken care of; None to leave it to the
        next plugin.

    Use in conftest.py: no; a run mode is a plugin (``-p``, an entry point).
    """


@hookspec
def ingestkit_runtest_setup(item: Item) -> None:
    """Called before an item's processor is called. Raise to make it an ``error``.

    Like every per-item hook, only called when some plugin implements it, so
    it costs nothing otherwise; under ``-n``, called in the worker that runs
    the item.

    :param item: the item about to run (``item.key``, ``item.record``...).

    Use in conftest.py: yes; only for items of processors below its folder.
    """


@hookspec(firstresult=True)
def ingestkit_runtest_call(item: Item, kwargs: dict[str, Any]) -> object | None:
    """Call the processor for ``item`` with its fixture ``kwargs``.

    Called once per item, after setup. The runner's own implementation
    (``trylast``) calls the processor, as pytest's ``pytest_pyfunc_call`` does:
    an implementation that returns None (an observer, or a ``wrapper=True``
    hook) leaves the call to it.

    :param item: the item being run.
    :param kwargs: the processor's arguments, by name.
    :return: anything but None to say the processor was called (and so
        replace it); raise to fail the item.

    Use in conftest.py: yes; only for items of processors below its folder.
    """


@hookspec
def ingestkit_runtest_teardown(item: Item) -> None:
    """Called after the call, before item-scoped fixtures are torn down.

    :param item: the item that ran. Raise to make a succeeded item an ``error``.

    Use in conftest.py: yes; only for items of processors below its folder.
    """


@hookspec
def ingestkit_runtest_makereport(item: Item, report: ItemReport) -> None:
    """Adjust an item's report (status, message) before it is recorded.

    Called once per item that ran, before its chunk commits.

    :param item: the item that ran.
    :param report: its report, to change in place.

    Use in conftest.py: yes; only for items of processors below its folder.
    """


@hookspec
def ingestkit_runtest_logreport(report: ItemReport) -> None:
    """Receive each item's final report, after its chunk committed.

    Under ``-n``, called in the worker that committed it and again in the
    leader, with the reports the workers sent back.

    :param report: the item's report, as recorded in ``ingestkit.items``.

    Use in conftest.py: yes; only for items of processors below its folder.
    """


@hookspec(firstresult=True)
def ingestkit_chunk_history(
    session: Session, processor: Processor, keys: list[str]
) -> dict[str, Any] | None:
    """Return the latest recorded outcome of these keys.

    Called once per chunk before its items run; the runner decides
    ``unchanged``, ``attempt`` and ``previous_error`` from it. The recorder
    implements it.

    :param session: the session.
    :param processor: the chunk's processor.
    :param keys: the chunk's keys (re-fed ``--lf`` items carry their own).
    :return: ``{key: reports.History}``; None to leave it to the next plugin.

    Use in conftest.py: yes (rarely useful); only for processors below its folder.
    """


@hookspec
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """Add what must commit with a chunk's items, in their transaction.

    Called once per chunk, in the process that commits it, after its items
    ran and their writes were flushed. Append ``write(cursor)`` callables to
    ``chunk.writes``: they run in order right before COMMIT, in ingestkit's
    committing thread (so that the next chunk's items run meanwhile); do not
    touch the connection otherwise. The recorder adds the outcome rows here;
    a worker adds the end of the chunk's task (``chunk.task``; ``chunk.left``
    holds the items a stopping worker did not run). A write that raises loses
    the chunk and stops the batch.

    :param session: the session.
    :param chunk: the chunk about to commit.

    Use in conftest.py: yes, for every processor's chunks.
    """


@hookspec
def ingestkit_chunk_finish(session: Session, chunk: Chunk) -> None:
    """Called once a chunk is known to have committed (progress reporting happens here).

    Under ``-n``, called in the worker that committed it and again in the
    leader, with the reports the workers sent back.

    :param session: the session.
    :param chunk: the committed chunk (``chunk.reports``, ``chunk.unchanged``).

    Use in conftest.py: yes; only for processors below the conftest.py's folder.
    """


@hookspec
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    """Called once after the last processor, before the terminal summary.

    Called in every process that called ``ingestkit_batch_start``; the
    ``batches`` plugin (``tryfirst``) finishes the batch's row first.

    :param session: the session.
    :param exitstatus: the batch's exit code.

    Use in conftest.py: yes.
    """


# -- reporting -------------------------------------------------------------


@hookspec
def ingestkit_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: Config
) -> None:
    """Add sections to the closing summary.

    Called once, after the built-in summary sections.

    :param terminalreporter: write with ``terminalreporter.write_line``.
    :param exitstatus: the batch's exit code.
    :param config: the run's configuration.

    Use in conftest.py: yes.
    """
