"""The ``ingestkit`` command: :func:`main` runs one invocation in-process."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import psycopg2.errors

from .config import Config, make_config
from .database import resource_problem
from .outcomes import UsageError
from .session import ExitCode, record_exit_code

INTERNAL = "INTERNAL ERROR: ingestkit itself failed (above); please report it."


def main(args: list[str] | None = None, plugins: list[Any] | None = None) -> int:
    """Run ingestkit in-process; return the exit code."""
    if args is None:
        args = sys.argv[1:]
    try:
        config = make_config(list(args), plugins)
    except UsageError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    code = _run(config)
    record_exit_code(config, code)
    return code


def _run(config: Config) -> int:
    try:
        config.hook.ingestkit_configure.call_historic(kwargs=dict(config=config))
        try:
            return int(config.hook.ingestkit_cmdline_main(config=config))
        finally:
            config.hook.ingestkit_unconfigure(config=config)
    except UsageError as exc:
        print(f"ERROR: {config.mask(str(exc))}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except psycopg2.errors.InsufficientPrivilege as exc:  # ingestkit's own tables
        first = (str(exc).strip().splitlines() or ["permission denied"])[0]
        print(
            f"ERROR: {config.mask(first)}: the role lacks a privilege on ingestkit's own tables;"
            " run as the owner of schema ingestkit, or as it: GRANT SELECT, INSERT, UPDATE,"
            " DELETE ON ALL TABLES IN SCHEMA ingestkit TO <role>",
            file=sys.stderr,
        )
        return ExitCode.USAGE_ERROR
    except psycopg2.OperationalError as exc:
        problem = resource_problem(exc)
        if problem is None:  # e.g. disk full before the batch started
            print(config.mask(traceback.format_exc()), file=sys.stderr)
            print(INTERNAL, file=sys.stderr)
            return ExitCode.INTERNAL_ERROR
        print(f"ERROR: {config.mask(problem)}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception:
        print(config.mask(traceback.format_exc()), file=sys.stderr)
        print(INTERNAL, file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def console_main() -> int:
    """The ``ingestkit`` console script."""
    code = main()
    sys.stdout.flush()
    raise SystemExit(code)
