"""Configuration: rootdir and config-file discovery, options, plugin loading."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import shlex
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspec
from .outcomes import UsageError
from .stash import Stash

if TYPE_CHECKING:
    from .session import Session

#: Built-in plugins, registered in this order. Those in ESSENTIAL cannot be blocked.
BUILTIN_PLUGINS = (
    "session",
    "collection",
    "builtin",
    "state",
    "http",
    "files",
    "runner",
    "recorder",
    "batches",
    "keyword",
    "lastfailed",
    "terminal",
    "junitxml",
    "lookback",
    "forget",
    "prune",
    "html",
    "workers",
    "notify",
)
ESSENTIAL = frozenset({"session", "collection", "builtin", "runner", "recorder", "batches"})
#: The built-in plugins a worker of a shared batch does without: its leader keeps the
#: batch's row (``batches``), selects (``keyword``), reruns (``lastfailed``) and reports.
#: (``files`` it keeps: a worker records the files the leader hands it, see leader.py.)
LEADER_ONLY = frozenset(
    {"batches", "keyword", "lastfailed", "junitxml", "lookback", "forget", "prune"}
    | {"html", "notify"}
)
#: The built-in plugins a worker loads.
WORKER_PLUGINS = tuple(name for name in BUILTIN_PLUGINS if name not in LEADER_ONLY)

#: ``[tool.ingestkit]`` keys ingestkit itself understands.
CONFIG_KEYS = {
    "dsn": "database to ingest into (else INGESTKIT_DSN, DATABASE_URL, or embedded)",
    "paths": "where to collect when no paths are given on the command line",
    "files": "glob patterns of files to collect (default: ingest_*.py)",
    "functions": "glob patterns of processor functions (default: process_*)",
    "addopts": "extra command-line options, as if typed before the others",
    "log_level": "lowest level of log lines stored with each item (default: INFO)",
    "store_payloads": "'latest' (default), 'failed' or 'all'",
}
DEFAULTS: dict[str, Any] = {
    "paths": [],
    "files": ["ingest_*.py"],
    "functions": ["process_*"],
    "addopts": [],
    "store_payloads": "latest",
    "dsn": None,
}

#: The type of each built-in config value: "str", or "list" (of strings; a
#: single string is a list of one), with an example for the error message.
CONFIG_TYPES: dict[str, tuple[str, str]] = {
    "dsn": ("str", '"postgresql://etl@localhost/shop"'),
    "paths": ("list", '["pipelines"]'),
    "files": ("list", '["ingest_*.py"]'),
    "functions": ("list", '["process_*"]'),
    "addopts": ("str or list", '"--tb=short"'),
    "store_payloads": ("str", '"failed"'),
}


def _toml(value: Any) -> str:
    """``value`` written as in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def validate_inicfg(
    inicfg: dict[str, Any], where: Path | None, parser: argparse.ArgumentParser | None = None
) -> dict[str, Any]:
    """Check every built-in config value's type and, where the option of the same
    name has choices, its choice; return the values with a single string for a
    list made a list of one. A bad value raises UsageError naming it and the fix.
    """
    if not isinstance(inicfg, dict):
        raise UsageError(
            f"{where or 'config'}: [tool.ingestkit] = {_toml(inicfg)} is not a table; "
            'write e.g. [tool.ingestkit] with paths = ["pipelines"] under it'
        )
    values = dict(inicfg)
    choices = {
        action.dest: action.choices
        for action in (parser._actions if parser is not None else ())
        if action.choices is not None
    }
    for name, value in inicfg.items():
        kind, example = CONFIG_TYPES.get(name, ("", ""))
        if kind == "list" and isinstance(value, str):
            values[name] = [value]
        problem = _type_problem(kind, value)
        if problem is None and name in choices and value not in choices[name]:
            allowed = ", ".join(_toml(c) for c in choices[name])
            default = DEFAULTS.get(name)
            usual = default if default in choices[name] else next(iter(choices[name]))
            problem, example = f"is not one of {allowed}", _toml(usual)
        if problem is not None:
            raise UsageError(
                f"{where or 'config'}: {name} = {_toml(value)} {problem}; "
                f"write e.g. {name} = {example}"
            )
    return values


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: For each kind of config value (CONFIG_TYPES): whether a value is of it, and what
#: the message says when not. A single string is a list of one.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "is not a string"),
    "list": (lambda v: isinstance(v, str) or _strings(v), "is not a list of strings"),
    "str or list": (
        lambda v: isinstance(v, str) or _strings(v),
        "is not a string or a list of strings",
    ),
}


def _type_problem(kind: str, value: Any) -> str | None:
    """What is wrong with the type of a config value of ``kind``, or None."""
    check = _KINDS.get(kind)
    if check is None or check[0](value):
        return None
    return check[1]


#: Option groups of ``--help``, in this order (pytest's ``parser.getgroup``).
OPTION_GROUPS = {
    "general": "general",
    "selection": "selecting what runs",
    "reporting": "reporting",
    "logging": "logging",
    "workers": "running in parallel",
    "lookback": "looking back (no run; reads ingestkit.batches/items)",
    "prune": "pruning history (no run)",
    "config": "configuration",
}
#: Where the built-in options that their plugins add without a group are shown.
DEFAULT_GROUPS = {
    "version": "general",
    "dsn": "general",
    "plugins": "general",
    "dry_run": "general",
    "reprocess": "selection",
    "keyword": "selection",
    "maxfail": "selection",
    "last_failed": "selection",
    "failed_first": "selection",
    "numprocesses": "workers",
    "join_batch": "workers",
    "collect_only": "selection",
    "fixtures": "reporting",
    "verbose": "reporting",
    "quiet": "reporting",
    "tb": "reporting",
    "store_payloads": "general",
    "chunk_size": "general",
    "item_timeout": "general",
}
#: Environment variables ingestkit reads, for ``--help``.
ENV_VARS = {
    "INGESTKIT_DSN": "the target database (before DATABASE_URL and dsn in config)",
    "DATABASE_URL": "the target database, when INGESTKIT_DSN is not set",
    "INGESTKIT_ADDOPTS": "extra command-line options, after addopts from config",
    "NO_COLOR": "set (to anything): no colour, unless --color=yes",
    "FORCE_COLOR": "set (to anything): colour even when not on a terminal",
    "INGESTKIT_NOTIFY_URL": "webhook told of a batch with failures (as notify_url)",
}
ENV_ADDOPTS = "INGESTKIT_ADDOPTS"


class OptionGroup(argparse._ArgumentGroup):
    """A ``--help`` section; ``addoption`` is ``add_argument``, as in pytest."""

    def addoption(self, *names: str, **attrs: Any) -> argparse.Action:
        return self.add_argument(*names, **attrs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, with named option groups."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        self.groups: dict[str, OptionGroup] = {}
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def getgroup(self, name: str, description: str = "") -> OptionGroup:
        """The option group ``name`` (made on first use), as pytest's ``parser.getgroup``."""
        group = self.groups.get(name)
        if group is None:
            title = description or OPTION_GROUPS.get(name, name)
            group = self.groups[name] = OptionGroup(self, title=title)
            self._action_groups.append(group)
        return group

    def addoption(self, *names: str, **attrs: Any) -> argparse.Action:
        return self.getgroup("general").add_argument(*names, **attrs)

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        """A plugin's own group: the named group of the same title, if there is one."""
        title = args[0] if args else kwargs.get("title")
        for name, group in self.groups.items():
            if title in (name, group.title):
                return group
        return super().add_argument_group(*args, **kwargs)

    def place_ungrouped(self) -> None:
        """Move built-in options added without a group to their group; others stay in "options"."""
        for action in list(self._optionals._group_actions):
            name = DEFAULT_GROUPS.get(action.dest)
            if name is not None:
                self._optionals._group_actions.remove(action)
                self.getgroup(name)._group_actions.append(action)

    def describe(self, config_keys: dict[str, str]) -> None:
        """``--help``'s epilog: the config keys and environment variables."""
        width = max(len(k) for k in [*config_keys, *ENV_VARS]) + 2
        keys = "\n".join(f"  {k:<{width}}{v}" for k, v in sorted(config_keys.items()))
        env = "\n".join(f"  {k:<{width}}{v}" for k, v in ENV_VARS.items())
        self.epilog = (
            "[tool.ingestkit] keys in pyproject.toml (or ingestkit.toml; -o KEY=VALUE):\n"
            f"{keys}\n\nenvironment variables:\n{env}"
        )


def _add_config_options(parser: ArgumentParser) -> None:
    for name in OPTION_GROUPS:
        parser.getgroup(name)
    parser.getgroup("logging").addoption(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        default=None,
        metavar="LEVEL",
        help="lowest level of log lines stored with each item (default: INFO; log_level in config)",
    )
    group = parser.getgroup("config")
    group.addoption(
        "-o",
        "--override-ini",
        dest="override_ini",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [tool.ingestkit] value, e.g. -o store_payloads=all",
    )
    group.addoption(
        "--rootdir",
        metavar="DIR",
        help="the rootdir (node ids and state are relative to it); its config file is read",
    )


def _overrides(pairs: list[str], inicfg: dict[str, Any]) -> dict[str, Any]:
    """``inicfg`` with each ``-o KEY=VALUE`` applied (a list key: split like a shell)."""
    values = dict(inicfg)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-o {pair!r}: write -o KEY=VALUE, e.g. -o store_payloads=all")
        name = name.strip()
        kind = CONFIG_TYPES.get(name, ("str", ""))[0]
        values[name] = shlex.split(value) if kind == "list" else value
    return values


def _rootdir_config(rootdir: Path) -> tuple[Path | None, dict[str, Any]]:
    ini = rootdir / "ingestkit.toml"
    if ini.is_file():
        return ini, _read_toml(ini)
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("ingestkit")
        if section is not None:
            return pyproject, section
    return None, {}


def split_nodeid(arg: str) -> tuple[str, str]:
    """``"a/b.py::process_x[k]"`` -> ``("a/b.py", "process_x[k]")``."""
    path, sep, rest = arg.partition("::")
    return path, rest


#: Folders that end the search for an ``.ingestkit/`` marker: a project's VCS root.
VCS_MARKERS = (".git", ".hg")


def find_rootdir(args: list[str], invocation_dir: Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """Return (rootdir, config file or None, config values).

    Going up from the common ancestor of the path arguments, the first
    directory holding a ``pyproject.toml`` with ``[tool.ingestkit]``, an
    ``ingestkit.toml`` or an ``.ingestkit/`` folder; else the invocation dir.
    An ``.ingestkit/`` counts only up to the project's own root (a VCS root),
    and never in or above the home or temporary directory, so a run there
    cannot re-root the projects below it (see :func:`_marker_stops`).
    """
    paths = [(invocation_dir / split_nodeid(a)[0]).resolve() for a in args if not a.startswith("-")]
    paths = [p if p.is_dir() else p.parent for p in paths] or [invocation_dir.resolve()]
    ancestor = Path(os.path.commonpath([str(p) for p in paths]))
    stops = _marker_stops()
    markers = True
    for directory in (ancestor, *ancestor.parents):
        ini = directory / "ingestkit.toml"
        if ini.is_file():
            return directory, ini, _read_toml(ini)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            data = _read_toml(pyproject)
            section = data.get("tool", {}).get("ingestkit")
            if section is not None:
                return directory, pyproject, section
        if directory in stops and directory != ancestor:
            markers = False  # a home or temp folder's .ingestkit/ is a stray run's
        if markers and (directory / ".ingestkit").is_dir():
            return directory, None, {}
        if directory in stops or any((directory / vcs).exists() for vcs in VCS_MARKERS):
            markers = False  # the project's own root: nothing above it is the project
    return invocation_dir.resolve(), None, {}


def _marker_stops() -> set[Path]:
    """The home and temporary directories: where the search for ``.ingestkit/`` ends."""
    stops = {Path(tempfile.gettempdir()).resolve()}
    with contextlib.suppress(RuntimeError, KeyError):
        stops.add(Path.home().resolve())
    return stops


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


class Config:
    """Parsed options, config values, rootdir and the plugin manager of one run."""

    #: the run's Session, once it exists (set by it)
    session: Session

    def __init__(self, pluginmanager: pluggy.PluginManager, invocation_dir: Path) -> None:
        self.pluginmanager = pluginmanager
        self.hook = pluginmanager.hook
        self.invocation_dir = invocation_dir
        self.rootdir = invocation_dir
        self.inipath: Path | None = None
        self.inicfg: dict[str, Any] = {}
        self.option = argparse.Namespace()
        self.args: list[str] = []
        self.argv: list[str] = []
        self.config_keys = dict(CONFIG_KEYS)
        self.secrets: list[str] = []
        self.stash = Stash()

    # -- values ------------------------------------------------------------

    def getini(self, name: str) -> Any:
        if name in self.inicfg:
            return self.inicfg[name]
        if name not in self.config_keys:
            raise ValueError(f"unknown config key {name!r}")
        return DEFAULTS.get(name)

    def getoption(self, name: str, default: Any = None) -> Any:
        return getattr(self.option, name, default)

    def get(self, name: str, default: Any = None) -> Any:
        """An option if set on the command line, else a config value, else ``default``."""
        value = getattr(self.option, name, None)
        if value is not None:
            return value
        return self.inicfg.get(name, default)

    def mask(self, text: str) -> str:
        """``text`` with every known secret (DSN passwords) replaced by ``***``.

        Longest first, so that a secret containing another is masked whole.
        """
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

    @property
    def cache_dir(self) -> Path:
        return self.rootdir / ".ingestkit"

    def ensure_cache_dir(self) -> Path:
        path = self.cache_dir
        path.mkdir(exist_ok=True)
        ignore = path / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# created by ingestkit\n*\n")
        readme = path / "README.md"
        if not readme.exists():
            readme.write_text(
                "# ingestkit cache directory\n\n"
                "Created by ingestkit. It marks the rootdir and holds"
                " the embedded PostgreSQL (`pgdata/`). Do not commit it.\n"
            )
        return path

    # -- construction ------------------------------------------------------

    def parse(self, args: list[str]) -> None:
        """Find rootdir and the config file, then parse ``addopts + args``.

        Plugins named with ``-p`` on the command line load first, so their
        options parse; the positional arguments then locate the rootdir, whose
        config file may add options (``addopts``) and plugins of its own.
        """
        args = [*shlex.split(os.environ.get(ENV_ADDOPTS, "")), *args]
        self._load_plugins(_preparse_plugins(args))
        parser = ArgumentParser(prog="ingestkit", add_help=True)
        _add_config_options(parser)
        self.hook.ingestkit_addoption.call_historic(
            kwargs=dict(parser=parser, config_keys=self.config_keys)
        )
        parser.place_ungrouped()
        parser.describe(self.config_keys)
        known, _unknown = parser.parse_known_args(args)
        if known.file_or_dir[:1] == ["worker"]:  # `ingestkit worker --batch ID` (./worker: a path)
            args = list(args)
            args.remove("worker")
            args.append("--worker")
            known, _unknown = parser.parse_known_args(args)
        if known.rootdir:
            self.rootdir = (self.invocation_dir / known.rootdir).resolve()
            if not self.rootdir.is_dir():
                raise UsageError(f"--rootdir {known.rootdir}: no such directory")
            self.inipath, self.inicfg = _rootdir_config(self.rootdir)
        else:
            self.rootdir, self.inipath, self.inicfg = find_rootdir(
                list(known.file_or_dir), self.invocation_dir
            )
        self.inicfg = validate_inicfg(self.inicfg, self.inipath, parser)
        if known.override_ini:
            self.inicfg = _overrides(known.override_ini, self.inicfg)
            self.inicfg = validate_inicfg(self.inicfg, self.inipath, parser)
        addopts = self.inicfg.get("addopts", [])
        if isinstance(addopts, str):
            addopts = shlex.split(addopts)
        self._load_plugins(_preparse_plugins(addopts), builtins=False)
        unknown = sorted(set(self.inicfg) - set(self.config_keys))
        if unknown:
            raise UsageError(f"{self.inipath}: unknown config key(s): {', '.join(unknown)}")
        self.argv = [*addopts, *args]
        self.option = parser.parse_args(self.argv)
        self.args = list(self.option.file_or_dir)
        if getattr(self.option, "worker", False) or getattr(self.option, "join_batch", None):
            self._keep_builtins(WORKER_PLUGINS)

    def _keep_builtins(self, names: tuple[str, ...]) -> None:
        """Unregister the built-in plugins not in ``names`` (a worker's run)."""
        pm = self.pluginmanager
        for name in BUILTIN_PLUGINS:
            plugin = pm.get_plugin(name)
            if name not in names and plugin is not None:
                pm.unregister(plugin)

    def _load_plugins(self, specs: list[str], builtins: bool = True) -> None:
        pm = self.pluginmanager
        for spec in specs:
            if spec.startswith("no:"):
                name = spec[3:]
                if name in ESSENTIAL:
                    raise UsageError(f"plugin {name!r} cannot be disabled")
                plugin = pm.get_plugin(name)
                if plugin is not None:  # blocked from addopts, after it loaded
                    pm.unregister(plugin)
                pm.set_blocked(name)
        if builtins:
            for name in BUILTIN_PLUGINS:
                if not pm.is_blocked(name):
                    pm.register(importlib.import_module(f"ingestkit.{name}"), name=name)
            pm.load_setuptools_entrypoints("ingestkit")
        for spec in specs:
            if spec.startswith("no:") or pm.has_plugin(spec) or pm.is_blocked(spec):
                continue
            try:
                module = importlib.import_module(spec)
            except ImportError as exc:
                raise UsageError(f"-p {spec}: cannot import plugin module: {exc}") from None
            if not pm.is_registered(module):  # e.g. already loaded from its entry point
                pm.register(module, name=spec)


def _preparse_plugins(args: list[str]) -> list[str]:
    specs = []
    for i, arg in enumerate(args):
        if arg == "-p" and i + 1 < len(args):
            specs.append(args[i + 1])
        elif arg.startswith("-p") and len(arg) > 2:
            specs.append(arg[2:])
    return specs


class PluginManager(pluggy.PluginManager):
    """pluggy's, where a function named ``ingestkit_*`` is a hook without the marker.

    As in pytest: a ``conftest.py`` (or plugin) writes ``def ingestkit_configure(config)``
    and it is called; ``@ingestkit.hookimpl`` is needed only for options (``tryfirst``...).
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None or not name.startswith("ingestkit_"):
            return opts
        try:
            method = getattr(plugin, name)
        except Exception:
            return None
        if not inspect.isroutine(method):
            return None
        return pluggy.HookimplOpts(
            wrapper=False,
            hookwrapper=False,
            optionalhook=False,
            tryfirst=False,
            trylast=False,
            specname=None,
        )


def make_pluginmanager() -> pluggy.PluginManager:
    pm = PluginManager("ingestkit")
    pm.add_hookspecs(hookspec)
    return pm


def make_config(args: list[str], plugins: list[Any] | None = None) -> Config:
    pm = make_pluginmanager()
    config = Config(pm, Path.cwd())
    for plugin in plugins or ():
        pm.register(plugin)
    config.parse(args)
    return config
