"""Collection: find ``ingest_*.py`` files, import them, make Processors.

Built-in plugin ``collection``; the walking itself is :func:`collect`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import inspect
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from .config import split_nodeid
from .fixtures import fixture_marker
from .outcomes import UsageError
from .sources import SOURCE_ATTR, SourceSpec
from .typed import PIP_PYDANTIC

if TYPE_CHECKING:
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

_SKIP_DIRS = {"__pycache__", "node_modules", ".ingestkit", ".git", ".hg", ".tox", ".nox"}


@dataclass(eq=False)
class Processor:
    """One ``process_*`` function: what runs once per record of its source."""

    nodeid: str  # "<path relative to rootdir>::<function>"
    name: str
    func: Any
    path: Path
    module: ModuleType
    source: SourceSpec | None = None
    selected_keys: set[str] | None = None  # node ids with [KEY] narrow to these
    keywords: set[str] = field(default_factory=set)

    @property
    def module_nodeid(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def location(self) -> str:
        return f"{self.module_nodeid}:{self.func.__code__.co_firstlineno}"


@dataclass
class CollectReport:
    """A file that could not be collected."""

    nodeid: str
    path: Path
    lineno: int | None
    message: str
    longrepr: str


def _relpath(path: Path, rootdir: Path) -> str:
    try:
        return path.relative_to(rootdir).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, rootdir)).as_posix()


def _matches(name: str, patterns: Any) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _module_name(relpath: str) -> str:
    stem = relpath[:-3] if relpath.endswith(".py") else relpath
    return "_ingestkit_." + re.sub(r"\W", "_", stem.replace("/", "."))


class Collector:
    """Imports files for one session, and undoes its sys.path/sys.modules changes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.config = session.config
        self.rootdir = session.config.rootdir
        self._conftests: dict[Path, ModuleType | None] = {}
        self._conftest_errors: dict[Path, BaseException] = {}
        self.added_modules: list[str] = []
        self.added_paths: list[str] = []

    def import_file(self, path: Path) -> ModuleType:
        relpath = _relpath(path, self.rootdir)
        name = _module_name(relpath)
        directory = str(path.parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)
            self.added_paths.append(directory)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        self.added_modules.append(name)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module

    def load_conftests(self, directory: Path) -> None:
        """Load conftest.py files from rootdir (or the top) down to ``directory``."""
        chain = [directory, *directory.parents]
        if self.rootdir in chain:
            chain = chain[: chain.index(self.rootdir) + 1]
        for folder in reversed(chain):
            path = folder / "conftest.py"
            if path in self._conftest_errors:
                # every file below a broken conftest.py is an error, never run without it
                raise self._conftest_errors[path]
            if path in self._conftests or not path.is_file():
                continue
            baseid = _relpath(folder, self.rootdir)
            baseid = "" if baseid == "." else baseid + "/"
            try:
                module = self.import_file(path)
                self._register_conftest(module, path, baseid)
            except Exception as exc:
                self._conftest_errors[path] = exc
                raise
            self._conftests[path] = module

    def _register_conftest(self, module: ModuleType, path: Path, baseid: str) -> None:
        """Register a conftest as a plugin and parse its fixtures.

        Registering it calls its ``ingestkit_configure`` (a historic hook);
        plugins that registers are parsed too, visible everywhere, as in pytest.
        """
        pm = self.config.pluginmanager
        before = {id(p) for p in pm.get_plugins()}
        try:
            pm.register(module, name=str(path))
            manager = self.session.fixturemanager
            manager.parse(module, baseid)
            for plugin in pm.get_plugins():
                if id(plugin) not in before and plugin is not module:
                    manager.parse(plugin, "")
        except Exception:
            if pm.is_registered(module):  # its hooks must not run without it
                pm.unregister(module)
            raise

    def hook_for(self, path: Path) -> Any:
        """The hooks for ``path``: without conftest.py files not above it (pytest's ihook)."""
        hook = self.config.hook
        folder = path.parent
        foreign = [
            module
            for conftest, module in self._conftests.items()
            if module is not None
            and conftest.parent != folder
            and conftest.parent not in folder.parents
        ]
        if not foreign:
            return hook
        return _HookProxy(self.config.pluginmanager, foreign)

    def cleanup(self) -> None:
        for name in self.added_modules:
            sys.modules.pop(name, None)
        for directory in self.added_paths:
            if directory in sys.path:
                sys.path.remove(directory)
        for module in self._conftests.values():
            if module is not None and self.config.pluginmanager.is_registered(module):
                self.config.pluginmanager.unregister(module)


class _HookProxy:
    """``config.hook`` with some plugins left out (pluggy's ``subset_hook_caller``)."""

    def __init__(self, pm: pluggy.PluginManager, remove: list[Any]) -> None:
        self._pm = pm
        self._remove = remove

    def __getattr__(self, name: str) -> Any:
        return self._pm.subset_hook_caller(name, remove_plugins=self._remove)


def collection_error(path: Path, rootdir: Path, exc: BaseException) -> CollectReport:
    relpath = _relpath(path, rootdir)
    where, lineno = _error_location(path, exc)
    message = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, ModuleNotFoundError) and exc.name == "pydantic":
        message += f" (typed records with pydantic models need it: {PIP_PYDANTIC})"
    shown = _relpath(where.resolve(), rootdir) if where.is_absolute() else str(where)
    header = f"{shown}:{lineno}: {message}" if lineno else f"{shown}: {message}"
    tb = "".join(
        traceback.format_exception(
            type(exc), exc, exc.__traceback__ if not isinstance(exc, SyntaxError) else None
        )
    )
    return CollectReport(relpath, path, lineno, header, tb)


def _error_location(path: Path, exc: BaseException) -> tuple[Path, int | None]:
    """Where importing ``path`` failed: the line of a syntax error, else the last
    frame of the user's code (not importlib's or ingestkit's); else ``path``."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return Path(exc.filename), exc.lineno
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "importlib" not in f.filename and "/ingestkit/" not in f.filename]
    if user:
        return Path(user[-1].filename), user[-1].lineno
    return path, None


def processors_in(module: ModuleType, path: Path, session: Session) -> list[Processor]:
    config = session.config
    relpath = _relpath(path, config.rootdir)
    patterns = config.getini("functions")
    found = []
    seen: set[int] = set()
    for name, obj in list(vars(module).items()):
        if not _matches(name, patterns) or not inspect.isfunction(obj) or id(obj) in seen:
            continue
        if fixture_marker(obj) is not None:  # a fixture named process_* is not a processor
            continue
        seen.add(id(obj))
        keywords = {name, path.name, *Path(relpath).parent.parts}
        found.append(
            Processor(
                nodeid=f"{relpath}::{name}",
                name=name,
                func=obj,
                path=path,
                module=module,
                source=getattr(obj, SOURCE_ATTR, None),
                keywords=keywords,
            )
        )
    return found


@hookimpl(trylast=True)
def ingestkit_collect_file(file_path: Path, session: Session) -> list[Processor] | None:
    if not _matches(file_path.name, session.config.getini("files")):
        return None
    module = session.collector.import_file(file_path)
    session.fixturemanager.parse(module, f"{_relpath(file_path, session.config.rootdir)}::")
    return processors_in(module, file_path, session)


@hookimpl(trylast=True)
def ingestkit_ignore_collect(collection_path: Path, config: Any) -> bool | None:
    name = collection_path.name
    if collection_path.is_dir():
        return (
            name in _SKIP_DIRS
            or name.startswith(".")
            or (collection_path / "pyvenv.cfg").exists()
            or name == "site-packages"
        )
    return None


def _walk(path: Path, session: Session) -> list[Path]:
    if path.is_file():
        return [path]
    try:  # a directory's conftest.py may ignore what is in it, as in pytest
        session.collector.load_conftests(path)
    except Exception:
        pass  # reported with the files below it
    files = []
    for child in sorted(path.iterdir()):
        hook = session.collector.hook_for(child)
        if hook.ingestkit_ignore_collect(collection_path=child, config=session.config):
            continue
        if child.is_dir():
            files.extend(_walk(child, session))
        elif child.suffix == ".py" and child.name != "conftest.py":
            files.append(child)
    return files


def _parse_selector(rest: str) -> tuple[str, str | None]:
    """``"process_x[KEY]"`` -> ``("process_x", "KEY")``."""
    if rest.endswith("]") and "[" in rest:
        name, _, key = rest[:-1].partition("[")
        return name, key
    return rest, None


def collect(session: Session) -> tuple[list[Processor], list[CollectReport]]:
    """Collect the processors of ``session.config.args`` in pytest's order."""
    config = session.config
    processors: list[Processor] = []
    errors: list[CollectReport] = []
    done: dict[Path, list[Processor]] = {}
    whole: set[int] = set()  # processors some argument selected without a key
    for arg in _args(config):
        path_part, rest = split_nodeid(arg)
        path = (config.invocation_dir / path_part).resolve()
        selected: list[Processor] = []
        for file_path in _files(path, arg, session):
            if file_path not in done:
                done[file_path] = _collect_file(file_path, session, errors)
            selected.extend(done[file_path])
        if rest:
            selected = _select(selected, rest, whole)
            if not selected and not errors:
                name = _parse_selector(rest)[0]
                raise UsageError(f"not found: {arg} (no processor {name!r} in {path_part})")
        else:
            _select_whole(selected, whole)
        for proc in selected:
            if proc not in processors:
                processors.append(proc)
    return processors, errors


def _files(path: Path, arg: str, session: Session) -> list[Path]:
    """The files to collect for argument ``arg`` (``path``, resolved)."""
    if not path.exists():
        raise UsageError(f"file or directory not found: {arg}")
    if path.is_dir():
        try:  # so that --fixtures sees them even where nothing is collected yet
            session.collector.load_conftests(path)
        except Exception:
            pass  # reported with the files below it
    return _walk(path, session)


def _args(config: Config) -> list[str]:
    """What to collect: the arguments, else ``paths`` from config, else the current directory."""
    if config.args:
        return list(config.args)
    if config.getini("paths"):
        return [str(config.rootdir / p) for p in config.getini("paths")]
    return [str(config.invocation_dir)]


def _collect_file(
    file_path: Path, session: Session, errors: list[CollectReport]
) -> list[Processor]:
    """The processors of one file; a file that fails to import is a report in ``errors``."""
    try:
        session.collector.load_conftests(file_path.parent)
        results = session.collector.hook_for(file_path).ingestkit_collect_file(
            file_path=file_path, session=session
        )
    except Exception as exc:
        report = collection_error(file_path, session.config.rootdir, exc)
        errors.append(report)
        session.config.hook.ingestkit_collectreport(report=report)
        results = []
    return [p for result in results if result for p in result]


def _select(selected: list[Processor], rest: str, whole: set[int]) -> list[Processor]:
    """The processors an argument's ``::name`` or ``::name[KEY]`` part names.

    A key narrows a processor to the keys selected, unless an argument has
    selected it whole (``whole``, ids of processors).
    """
    name, key = _parse_selector(rest)
    matching = [p for p in selected if p.name == name]
    if key is None:
        _select_whole(matching, whole)
        return matching
    for proc in matching:
        if id(proc) not in whole:
            proc.selected_keys = (proc.selected_keys or set()) | {key}
    return matching


def _select_whole(processors: list[Processor], whole: set[int]) -> None:
    for proc in processors:
        whole.add(id(proc))
        proc.selected_keys = None
