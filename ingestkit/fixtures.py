"""Fixtures: definition, discovery, resolution by scope, and teardown.

Semantics follow pytest: a fixture is found by name, the definition nearest to
the processor wins (its module, then conftest.py files from its directory up to
rootdir, then plugins), a definition may request an outer one of the same name,
and each value is cached for its scope and torn down, in reverse setup order,
when that scope ends.
"""

from __future__ import annotations

import inspect
import linecache
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .outcomes import FixtureLookupError, ScopeMismatch

if TYPE_CHECKING:
    from .collection import Processor
    from .config import Config

#: Scopes, narrowest first.
SCOPES = ("item", "processor", "module", "batch")
SCOPE_RANK = {name: rank for rank, name in enumerate(SCOPES)}

FIXTURE_ATTR = "_ingestkit_fixture"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FixtureMarker:
    scope: str = "item"
    autouse: bool = False
    name: str | None = None

    def __call__(self, func: F) -> F:
        name = self.name or getattr(func, "__name__", repr(func))
        where = _def_location(func)
        if self.scope not in SCOPE_RANK:
            raise ValueError(
                f"fixture {name!r} ({where}): unknown fixture scope {self.scope!r}; "
                f"expected one of {', '.join(SCOPES)}"
            )
        if name == "request":
            raise ValueError(f"'request' is a reserved fixture name, use another name: {where}")
        if isinstance(fixture_marker(func), FixtureMarker):
            raise ValueError(f"@ingestkit.fixture is applied more than once to fixture {name!r}")
        setattr(func, FIXTURE_ATTR, self)
        return func


def fixture_marker(obj: Any) -> FixtureMarker | None:
    """The fixture marker of ``obj``, or None; never raises (lazy objects raise on getattr)."""
    try:
        marker = getattr(obj, FIXTURE_ATTR, None)
    except Exception:
        return None
    return marker if isinstance(marker, FixtureMarker) else None


_DEF_LINE = re.compile(r"\s*(async\s+)?(def|class)\s")


def def_lineno(func: Callable[..., Any]) -> int | None:
    """The line of ``def`` (not of the first decorator, as ``co_firstlineno``)."""
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    return _scan_to_def(code.co_filename, code.co_firstlineno)


def _scan_to_def(filename: str, first: int) -> int:
    for lineno in range(first, first + 50):
        line = linecache.getline(filename, lineno)
        if not line:
            break
        if _DEF_LINE.match(line):
            return lineno
    return first


def _def_location(func: Callable[..., Any]) -> str:
    """``file.py:line`` of a function's ``def``, by file name (rootdir is not known yet)."""
    code = getattr(func, "__code__", None)
    if code is None:
        return getattr(func, "__qualname__", repr(func))
    return f"{Path(code.co_filename).name}:{def_lineno(func)}"


@overload
def fixture(func: F) -> F: ...


@overload
def fixture(
    func: None = None, *, scope: str = "item", autouse: bool = False, name: str | None = None
) -> FixtureMarker: ...


def fixture(
    func: F | None = None,
    *,
    scope: str = "item",
    autouse: bool = False,
    name: str | None = None,
) -> F | FixtureMarker:
    """Mark a function as a fixture: ``@fixture`` or ``@fixture(scope=..., ...)``."""
    marker = FixtureMarker(scope, autouse, name)
    if func is not None:
        return marker(func)
    return marker


def argnames_of(func: Callable[..., Any]) -> tuple[str, ...]:
    """Names of the parameters a function wants injected (no defaults, no *args)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
    )


@dataclass(eq=False)
class FixtureDef:
    """One definition of a fixture; ``baseid`` is the node-id prefix it is visible under."""

    name: str
    func: Callable[..., Any]
    scope: str
    baseid: str
    autouse: bool = False
    argnames: tuple[str, ...] = ()
    location: str = ""

    @property
    def doc(self) -> str:
        lines = (inspect.getdoc(self.func) or "").strip().splitlines()
        return lines[0] if lines else ""

    def visible_to(self, nodeid: str) -> bool:
        return not self.baseid or nodeid.startswith(self.baseid)

    def describe(self) -> str:
        """``file:line: def name(args)``, as a line of a requesting chain."""
        func = getattr(self.func, "__name__", self.name)
        return f"{self.location}: def {func}({', '.join(self.argnames)})"


def _members(holder: Any) -> list[tuple[str, Any]]:
    """``(name, object)`` pairs of a module, dict or plugin object, bound methods included."""
    if isinstance(holder, dict):
        return list(holder.items())
    if isinstance(holder, ModuleType):
        return list(vars(holder).items())
    found = []
    for attr in dir(holder):  # a plugin object: fixtures may be methods of its class
        try:
            unbound = inspect.getattr_static(holder, attr)
        except AttributeError:
            continue
        if isinstance(unbound, (staticmethod, classmethod)):
            unbound = unbound.__func__
        if fixture_marker(unbound) is None:
            continue
        try:
            found.append((attr, getattr(holder, attr)))
        except Exception:
            continue
    return found


def _location(func: Callable[..., Any], rootdir: Path) -> str:
    """``file:line`` of a fixture: relative to rootdir, or ``ingestkit/...`` for built-ins."""
    code = getattr(func, "__code__", None)
    if code is not None:
        path, lineno = Path(code.co_filename), def_lineno(func)
    elif inspect.isclass(func):  # a class as a fixture factory
        try:
            path = Path(inspect.getsourcefile(func) or "")
            lineno = _scan_to_def(str(path), inspect.getsourcelines(func)[1])
        except (OSError, TypeError):
            return ""
    else:
        return ""
    package = Path(__file__).parent
    for base, prefix in ((package, "ingestkit/"), (rootdir, "")):
        try:
            return f"{prefix}{path.relative_to(base).as_posix()}:{lineno}"
        except ValueError:
            continue
    return f"{path}:{lineno}"


class FixtureManager:
    """Holds every known FixtureDef and computes what a processor needs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._defs: dict[str, list[FixtureDef]] = {}

    def parse(self, holder: Any, baseid: str) -> None:
        """Register the fixtures defined on a module or plugin object."""
        for attr, obj in _members(holder):
            marker = fixture_marker(obj)  # a lazy object raising on getattr is no fixture
            if marker is None or not callable(obj):
                continue
            self.add(
                FixtureDef(
                    name=marker.name or str(getattr(obj, "__name__", attr)),
                    func=obj,
                    scope=marker.scope,
                    baseid=baseid,
                    autouse=marker.autouse,
                    argnames=argnames_of(obj),
                    location=_location(obj, self.config.rootdir),
                )
            )

    def add(self, fdef: FixtureDef) -> None:
        defs = self._defs.setdefault(fdef.name, [])
        defs.append(fdef)
        # outermost first; for the same baseid the later definition wins
        defs.sort(key=lambda d: len(d.baseid))

    def defs_for(self, name: str, nodeid: str) -> list[FixtureDef]:
        """The definitions of ``name`` visible at ``nodeid``, outermost first."""
        return [d for d in self._defs.get(name, ()) if d.visible_to(nodeid)]

    def visible_anywhere(self) -> dict[str, list[FixtureDef]]:
        """Every definition known (of the files collected and their conftests), by name."""
        return {name: list(self._defs[name]) for name in sorted(self._defs)}

    def visible(self, nodeid: str) -> dict[str, list[FixtureDef]]:
        out = {}
        for name in sorted(self._defs):
            defs = self.defs_for(name, nodeid)
            if defs:
                out[name] = defs
        return out

    def closure(
        self,
        nodeid: str,
        argnames: Iterable[str],
        scope: str = "item",
        requester: str = "processor",
        autouse: bool = True,
        stack: Iterable[FixtureDef] = (),
        root: str | None = None,
    ) -> Closure:
        """Resolve ``argnames`` (plus autouse fixtures) for a requester of ``scope``.

        Autouse fixtures come first: wider scopes first, then outer
        definitions (plugins, outer conftests) before inner ones. ``stack``
        holds the fixtures being set up already (outermost request first),
        for ``request.getfixturevalue``; ``root`` names the requester in errors.
        """
        argnames = list(argnames)
        auto = self._autouse_names(nodeid) if autouse else []
        closure = Closure(resolving=list(stack))
        closure.root = root if root is not None else f"{nodeid}({', '.join(argnames)})"
        for name in [*auto, *argnames]:
            try:
                fdef = self._resolve(name, nodeid, scope, closure, requester)
            except (FixtureLookupError, ScopeMismatch) as exc:
                closure.error = exc
                return closure
            if name in argnames:
                closure.args.append((name, fdef))
            elif fdef is not None and fdef not in closure.autouse:
                closure.autouse.append(fdef)
        return closure

    def _autouse_names(self, nodeid: str) -> list[str]:
        """The autouse fixtures at ``nodeid``, in setup order.

        A name made autouse at some level stays autouse below it, in whatever
        definition is nearest (pytest #1601): outer levels first, wider scopes first.
        """
        keys: dict[str, tuple[int, int]] = {}
        for name, ds in self.visible(nodeid).items():
            first = next((d for d in ds if d.autouse), None)
            if first is not None:
                keys[name] = (-SCOPE_RANK[ds[-1].scope], len(first.baseid))
        return sorted(keys, key=keys.__getitem__)

    def _resolve(
        self,
        name: str,
        nodeid: str,
        scope: str,
        closure: Closure,
        requester: str,
    ) -> FixtureDef | None:
        """The definition of ``name`` for the fixture being resolved, and its dependencies.

        As in pytest, each definition of ``name`` already being set up (on
        the stack) uses up one level: the next request of ``name``, directly
        or through other fixtures, gets the next definition further out.
        """
        if name == "request":
            return None
        visible = self.defs_for(name, nodeid)
        active = [d for d in closure.resolving if d.name == name]
        if not active:
            defs = visible
        else:
            defs = visible[: visible.index(active[-1])] if active[-1] in visible else []
        if not defs:
            raise FixtureLookupError(self._lookup_message(name, nodeid, closure, bool(visible)))
        fdef = defs[-1]
        if SCOPE_RANK[fdef.scope] < SCOPE_RANK[scope]:
            raise ScopeMismatch(
                f"ScopeMismatch: {requester} with scope '{scope}' requested fixture "
                f"'{name}' with scope '{fdef.scope}'"
            )
        if fdef in closure.deps:
            return fdef
        closure.resolving.append(fdef)
        deps = []
        for argname in fdef.argnames:
            dep = self._resolve(argname, nodeid, fdef.scope, closure, f"fixture '{fdef.name}'")
            deps.append((argname, dep))
        closure.resolving.pop()
        closure.deps[fdef] = deps
        closure.order.append(fdef)
        return fdef

    def _lookup_message(self, name: str, nodeid: str, closure: Closure, recursive: bool) -> str:
        chain = ["requested by:", f"  {closure.root}"]
        chain += [f"  {d.describe()}" for d in closure.resolving]
        if recursive:  # every definition of the name is already being set up
            names = " -> ".join([*(d.name for d in closure.resolving), name])
            return f"recursive dependency involving fixture '{name}' detected: {names}\n" + (
                "\n".join(chain)
            )
        available = ", ".join(sorted({*self.visible(nodeid), "request"}))
        return (
            f"fixture '{name}' not found\n"
            f"available fixtures: {available}\n"
            "use 'ingestkit --fixtures [paths]' for help on them.\n" + "\n".join(chain)
        )


@dataclass(eq=False)
class Closure:
    """What one requester needs: its own arguments and every fixture below them."""

    args: list[tuple[str, FixtureDef | None]] = field(default_factory=list)
    autouse: list[FixtureDef] = field(default_factory=list)
    deps: dict[FixtureDef, list[tuple[str, FixtureDef | None]]] = field(default_factory=dict)
    order: list[FixtureDef] = field(default_factory=list)  # dependencies first
    error: Exception | None = None
    resolving: list[FixtureDef] = field(default_factory=list)
    root: str = ""  # the requester, first line of a "requested by" chain

    def wider_than_item(self) -> list[FixtureDef]:
        """Fixtures to set up when the processor starts: widest scope first.

        The sort is stable and a fixture only depends on fixtures of its own
        or a wider scope, so dependencies still come before their users.
        """
        wider = [d for d in self.order if d.scope != "item"]
        return sorted(wider, key=lambda d: -SCOPE_RANK[d.scope])

    def item_scoped(self) -> list[FixtureDef]:
        return [d for d in self.order if d.scope == "item"]


class FixtureRequest:
    """The ``request`` fixture: who is asking, and access to the fixture system."""

    def __init__(
        self,
        runtime: FixtureRuntime,
        nodeid: str,
        scope: str,
        fixturename: str | None,
        processor: Processor | None,
        parent: FixtureRequest | None = None,
        fixturedef: FixtureDef | None = None,
    ) -> None:
        self._runtime = runtime
        self.nodeid = nodeid
        self.scope = scope
        self.fixturename = fixturename
        self.processor = processor
        self._parent = parent
        self._fixturedef = fixturedef
        # fixtures are looked up where the request started (the item or processor),
        # also from a wider fixture defined further out, as in pytest
        self._lookup_nodeid: str = parent._lookup_nodeid if parent is not None else nodeid

    @property
    def config(self) -> Config:
        return self._runtime.config

    def addfinalizer(self, finalizer: Callable[[], object]) -> None:
        """Call ``finalizer`` when this request's scope ends."""
        self._runtime.finalizers[self.scope].append(finalizer)

    def _stack(self) -> list[FixtureDef]:
        """The fixtures being set up for this request, outermost request first."""
        stack = []
        request: FixtureRequest | None = self
        while request is not None:
            if request._fixturedef is not None:
                stack.append(request._fixturedef)
            request = request._parent
        return stack[::-1]

    def getfixturevalue(self, name: str) -> Any:
        """Set up (or reuse) fixture ``name`` from code.

        Inside fixture ``name`` itself it gives the definition ``name`` overrides.
        """
        requester = f"fixture '{self.fixturename}'" if self.fixturename else "processor"
        closure = self._runtime.manager.closure(
            self._lookup_nodeid,
            [name],
            self.scope,
            requester=requester,
            autouse=False,
            stack=self._stack(),
            root=f"{self._lookup_nodeid}: request.getfixturevalue({name!r})",
        )
        if closure.error is not None:
            raise closure.error
        return self._runtime.value(closure, closure.args[0][1], self)


class FixtureRuntime:
    """Cached fixture values and finalizers of one batch, per scope."""

    def __init__(self, manager: FixtureManager) -> None:
        self.manager = manager
        self.config = manager.config
        self.cache: dict[str, dict[FixtureDef, tuple[Any, BaseException | None]]] = {
            s: {} for s in SCOPES
        }
        self.finalizers: dict[str, list[Callable[[], object]]] = {s: [] for s in SCOPES}
        self.processor: Processor | None = None
        self.item_nodeid = ""

    def seed(self, fdef: FixtureDef, value: Any) -> None:
        self.cache[fdef.scope][fdef] = (value, None)

    def value(self, closure: Closure, fdef: FixtureDef | None, requester: FixtureRequest) -> Any:
        if fdef is None:  # "request"
            return requester
        cached = self.cache[fdef.scope].get(fdef)
        if cached is not None:
            if cached[1] is not None:
                raise cached[1]
            return cached[0]
        nodeid = self.item_nodeid if fdef.scope == "item" else self._nodeid_for(fdef.scope)
        request = FixtureRequest(
            self, nodeid, fdef.scope, fdef.name, self.processor, requester, fdef
        )
        try:
            kwargs = {
                argname: self.value(closure, dep, request)
                for argname, dep in closure.deps.get(fdef, ())
            }
            result = fdef.func(**kwargs)
            if inspect.isgenerator(result):
                value = next(result)
                self.finalizers[fdef.scope].append(_generator_finalizer(fdef, result))
            else:
                value = result
        except StopIteration:
            exc = RuntimeError(f"fixture '{fdef.name}' did not yield a value ({fdef.location})")
            self.cache[fdef.scope][fdef] = (None, exc)
            raise exc from None
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.cache[fdef.scope][fdef] = (None, exc)
            raise
        self.cache[fdef.scope][fdef] = (value, None)
        return value

    def _nodeid_for(self, scope: str) -> str:
        proc = self.processor
        if proc is None or scope == "batch":
            return ""
        return proc.nodeid if scope == "processor" else proc.module_nodeid

    def kwargs(self, closure: Closure, nodeid: str) -> dict[str, Any]:
        """Set up the autouse fixtures and return the arguments for one call."""
        request = FixtureRequest(self, nodeid, "item", None, self.processor)
        for fdef in closure.autouse:
            self.value(closure, fdef, request)
        return {name: self.value(closure, fdef, request) for name, fdef in closure.args}

    def teardown(self, scope: str) -> list[BaseException]:
        """Run the finalizers of ``scope`` in reverse order; return what they raised."""
        errors: list[BaseException] = []
        finalizers = self.finalizers[scope]
        cache = self.cache[scope]
        if not finalizers and not cache:  # the common case, once per item
            return errors
        while finalizers:
            fin = finalizers.pop()
            try:
                fin()
            except (Exception, SystemExit) as exc:  # sys.exit() in teardown code
                errors.append(exc)
        self.cache[scope].clear()
        return errors


def _generator_finalizer(fdef: FixtureDef, gen: Any) -> Callable[[], None]:
    def finish() -> None:
        try:
            next(gen)
        except StopIteration:
            return
        raise RuntimeError(f"fixture '{fdef.name}' yielded more than once ({fdef.location})")

    return finish
