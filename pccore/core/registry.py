"""The plugin manager: loads plugins from the `pccore` entry-point group and looks components up by name.

Every plugin, built-in or third-party, is an entry point in the group `pccore` whose object (usually a
module) carries `@pccore.hookimpl` registration hooks. Each plugin is loaded and called on its own, so a
broken one is reported with its distribution and entry point and the rest still load (unless loading is
strict), and every component is attributed to the plugin that registered it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import json
import os
import re
import sys
import traceback
import weakref
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from pccore.core import hookspecs
from pccore.core.components import KINDS, PROTOCOLS, Component
from pccore.core.errors import PccoreError, PluginError, UsageError

STRICT_ENV = "PCCORE_STRICT_PLUGINS"
DISABLE_ENV = "PCCORE_DISABLE_PLUGINS"
GROUP = "pccore"
LOCAL = "(local)"


def hook_name(kind: str) -> str:
    """The registration hook of a kind of component, e.g. `pccore_register_precision`."""
    return f"pccore_register_{kind}"


@attrs.define(frozen=True)
class PluginInfo:
    """One loaded plugin: its entry-point name, distribution, version and components (kind -> names)."""

    name: str
    distribution: str
    version: str
    components: dict[str, list[str]] = attrs.field(factory=dict, hash=False)
    entry_point: str = ""


@attrs.define(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered something malformed, and why."""

    distribution: str
    entry_point: str
    value: str
    error: str

    def describe(self) -> str:
        """One line naming the distribution, the entry point and the error."""
        return (
            f"plugin {self.entry_point!r} from distribution {self.distribution!r} "
            f"(entry point {self.entry_point} = {self.value}) failed: {self.error}"
        )


class _Malformed(Exception):
    """A plugin's hook returned something that is not a valid list of components."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_text(err: BaseException) -> str:
    """The error as one line; an exception's type is shown unless it is our own malformed-plugin report."""
    return _one_line(str(err) if isinstance(err, _Malformed) else f"{type(err).__name__}: {err}")


def _normalize(name: str) -> str:
    """A distribution name compared the way packaging does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _choices(kind: str, name: str, valid: Iterable[str]) -> str:
    """`; did you mean 'x'? Choose one of: a, b, c` for an unknown name."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if not valid:
        return f"{hint}; no {kind} components are installed"
    sep = " " if hint else "; "
    return f"{hint}{sep}Choose one of: {', '.join(valid)}"


def _validate(kind: str, result: Any) -> list[Component]:
    """Check what a registration hook returned: an iterable (or None) of well-formed Components."""
    if result is None:
        return []
    if isinstance(result, (str, bytes, Component)) or not isinstance(result, Iterable):
        raise _Malformed(
            f"pccore_register_{kind}() returned {type(result).__name__}, expected an iterable of "
            "pccore.Component"
        )
    components = list(result)
    seen: set[str] = set()
    for item in components:
        if not isinstance(item, Component):
            raise _Malformed(
                f"pccore_register_{kind}() returned a {type(item).__name__} ({_one_line(repr(item))[:80]}), "
                "expected pccore.Component"
            )
        if not isinstance(item.name, str) or not item.name or any(c.isspace() for c in item.name):
            raise _Malformed(f"{kind} component name {item.name!r} must be a non-empty string without spaces")
        if item.name in seen:
            raise _Malformed(f"{kind} {item.name!r} is registered twice by the same plugin")
        seen.add(item.name)
        if not (isinstance(item.params, type) and attrs.has(item.params)):
            raise _Malformed(f"{kind} {item.name!r}: params {item.params!r} is not an attrs class")
        if not callable(item.factory):
            raise _Malformed(f"{kind} {item.name!r}: factory {item.factory!r} is not callable")
        if item.label is not None and (not isinstance(item.label, str) or not item.label.isprintable()):
            raise _Malformed(f"{kind} {item.name!r}: label {item.label!r} must be None or a one-line string")
    return components


def _protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a protocol asks for."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return sorted(set(names))


_LIVE_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()
"""Every registry alive, so that `blame` can ask each which components it built."""


def _versioned(info: PluginInfo) -> str:
    return f"{info.distribution!r}" + (f" {info.version}" if info.version else "")


class Registry:
    """Components by kind and name, each attributed to the plugin that registered it."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._pm = pluggy.PluginManager(GROUP)
        self._pm.add_hookspecs(hookspecs)
        self._components: dict[str, dict[str, tuple[Component, PluginInfo]]] = {k: {} for k in KINDS}
        self._plugins: list[PluginInfo] = []
        self._failures: list[PluginFailure] = []
        self.disabled: list[str] = []
        """Entry points skipped because PCCORE_DISABLE_PLUGINS (or `disabled`) named them."""
        self._built: dict[int, tuple[weakref.ref, str, str, PluginInfo]] = {}
        _LIVE_REGISTRIES.add(self)

    @property
    def plugins(self) -> list[PluginInfo]:
        """Loaded plugins, sorted by distribution and entry-point name."""
        return sorted(self._plugins, key=lambda p: (_normalize(p.distribution), p.name))

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that could not be loaded (non-strict mode only; strict mode raises instead)."""
        return list(self._failures)

    def names(self, kind: str) -> list[str]:
        """The sorted names of every component of a kind."""
        return sorted(self._kind(kind))

    def component(self, kind: str, name: str) -> Component:
        """The component record of `kind` called `name`; UsageError with close matches if there is none."""
        table = self._kind(kind)
        if name not in table:
            message = f"unknown {kind} {name!r}{_choices(kind, name, table)}"
            if self._failures:
                message += (
                    f" ({len(self._failures)} plugin(s) failed to load; run `pccore plugins` to see why)"
                )
            raise UsageError(message)
        return table[name][0]

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registered a component."""
        self.component(kind, name)
        return self._components[kind][name][1]

    def build(self, kind: str, name: str, params: Any = None) -> Any:
        """Build a component from its parameters (the defaults when `params` is None) and check its
        interface, so a plugin that returns the wrong object fails here with its name, not mid-run.

        A factory that raises (other than with a pccore error of its own) is a PluginError naming the
        component, its kind, its distribution and the exception. The built object is remembered, so that
        an exception its methods raise later can be traced back to it (`blame`)."""
        record = self.component(kind, name)
        info = self.provider(kind, name)
        try:
            obj = record.factory(record.params() if params is None else params)
        except PccoreError:
            raise
        except Exception as err:  # a plugin's own code may raise anything
            raise PluginError(
                f"{kind} {name!r} from distribution {_versioned(info)} failed to build: {_error_text(err)}"
            ) from err
        protocol = PROTOCOLS[kind]
        missing = [m for m in _protocol_members(protocol) if not hasattr(obj, m)]
        if missing:
            raise PluginError(
                f"{kind} {name!r} from distribution {info.distribution!r} is broken: its factory returned a "
                f"{type(obj).__module__}.{type(obj).__qualname__}, which lacks {', '.join(missing)} "
                f"(required by {protocol.__name__})"
            )
        self.remember(obj, kind, name)
        return obj

    def remember(self, obj: Any, kind: str, name: str) -> None:
        """Record `obj` as made by the component `kind`/`name` (the component itself, or what it built,
        such as an architecture's blocks), by identity and without keeping it alive, so that `blame` can
        name the component when `obj`'s code raises. Objects that take no weak reference are skipped
        (their plugin is still found by its module)."""
        info = self.provider(kind, name)
        key = id(obj)
        try:
            ref = weakref.ref(obj, lambda _ref: self._built.pop(key, None))
        except TypeError:
            return
        self._built[key] = (ref, kind, name, info)

    def built_component(self, obj: Any) -> tuple[str, str, PluginInfo] | None:
        """(kind, name, provider) of an object this registry built and that is still alive, else None."""
        entry = self._built.get(id(obj))
        if entry is None or entry[0]() is not obj:
            return None
        return entry[1], entry[2], entry[3]

    def plugin_of_module(self, module: str) -> PluginInfo | None:
        """The loaded plugin whose entry point's package holds `module` (e.g. `fakeplug.sub` belongs to a
        plugin whose entry point is `fakeplug.mod`), else None."""
        targets = [(info.entry_point.partition(":")[0], info) for info in self._plugins]
        top = module.partition(".")[0]
        exact = [info for target, info in targets if target == module]
        same_package = [info for target, info in targets if top and target.partition(".")[0] == top]
        return (exact or same_package or [None])[0]

    def register(
        self, plugin_object: object, name: str, distribution: str = LOCAL, version: str = "", value: str = ""
    ) -> PluginInfo | None:
        """Add a plugin object (a module or any object with hook implementations) under `name`.

        Returns its PluginInfo, or None when it failed and was skipped (non-strict mode). A component
        name already registered by another plugin raises PluginError naming both providers.
        """
        value = value or f"{getattr(plugin_object, '__name__', type(plugin_object).__name__)}"
        key = f"{distribution}:{name}"
        try:
            if self._pm.is_registered(plugin_object):
                other = self._pm.get_name(plugin_object)
                raise _Malformed(f"the same object is already registered as plugin {other!r}")
            if self._pm.get_plugin(key) is not None:
                raise _Malformed(f"a plugin named {name!r} from {distribution!r} is already registered")
            self._pm.register(plugin_object, name=key)
        except (pluggy.PluginValidationError, _Malformed) as err:
            return self._fail(distribution, name, value, err)
        try:
            self._check_hooks(plugin_object)
            found = {kind: self._call(kind, plugin_object) for kind in KINDS}
        except Exception as err:  # a plugin's own code may raise anything
            self._pm.unregister(plugin_object)
            return self._fail(distribution, name, value, err)
        info = PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            components={k: sorted(c.name for c in cs) for k, cs in found.items() if cs},
            entry_point=value,
        )
        for kind, components in found.items():
            for comp in components:
                if comp.name in self._components[kind]:
                    self._pm.unregister(plugin_object)
                    raise PluginError(self._conflict(kind, comp.name, info))
        for kind, components in found.items():
            for comp in components:
                self._components[kind][comp.name] = (comp, info)
        self._plugins.append(info)
        return info

    def _kind(self, kind: str) -> dict[str, tuple[Component, PluginInfo]]:
        if kind not in self._components:
            raise UsageError(f"unknown component kind {kind!r}{_choices('component kind', kind, KINDS)}")
        return self._components[kind]

    def _check_hooks(self, plugin_object: object) -> None:
        """Reject hooks pluggy would silently ignore: unknown hook names and unmarked functions."""
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as err:
            raise _Malformed(f"{err}; the hooks are: {', '.join(hook_name(k) for k in KINDS)}") from None
        for kind in KINDS:
            attr = getattr(plugin_object, hook_name(kind), None)
            if callable(attr) and self._pm.parse_hookimpl_opts(plugin_object, hook_name(kind)) is None:
                raise _Malformed(f"{hook_name(kind)} is not decorated with @pccore.hookimpl")

    def _call(self, kind: str, plugin_object: object) -> list[Component]:
        """Call this plugin's implementations of one registration hook and validate what they return."""
        caller = getattr(self._pm.hook, hook_name(kind))
        components: list[Component] = []
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin_object:
                components += _validate(kind, impl.function())
        return components

    def _conflict(self, kind: str, name: str, newcomer: PluginInfo) -> str:
        first = self._components[kind][name][1]
        return (
            f"{kind} {name!r} is registered twice: by plugin {first.name!r} from distribution "
            f"{first.distribution!r} and by plugin {newcomer.name!r} from distribution "
            f"{newcomer.distribution!r}. Uninstall one of them, or disable one with "
            f"{DISABLE_ENV}={newcomer.name}"
        )

    def _fail(self, distribution: str, name: str, value: str, err: BaseException) -> None:
        failure = PluginFailure(distribution, name, value, _error_text(err))
        if self.strict:
            raise PluginError(f"{failure.describe()} (strict plugin loading is on)") from err
        print(
            f"pccore: warning: {failure.describe()}; continuing without it "
            f"({STRICT_ENV}=1 makes this an error, {DISABLE_ENV}={name} silences it)",
            file=sys.stderr,
        )
        self._failures.append(failure)
        return None


@attrs.define(frozen=True)
class Culprit:
    """The plugin code an exception came from: the component whose method raised it (when known), the
    plugin that provides it, and the function and line."""

    plugin: PluginInfo
    kind: str | None
    name: str | None
    where: str

    def describe(self) -> str:
        """`nudging 'boom' (from distribution 'fakeplug' 1.0, in fakeplug.Boom.output_node, line 12)`."""
        what = f"{self.kind} {self.name!r}" if self.kind else f"plugin {self.plugin.name!r}"
        return f"{what} (from distribution {_versioned(self.plugin)}, in {self.where})"


def _where(frame: Any, lineno: int) -> str:
    code = frame.f_code
    return f"{frame.f_globals.get('__name__', '?')}.{getattr(code, 'co_qualname', code.co_name)}, line {lineno}"


def blame(err: BaseException) -> Culprit | None:
    """The plugin code an exception was raised in, read from its traceback when it reaches the top: the
    innermost frame that runs in a loaded plugin's module, and the innermost frame whose `self` is a
    component a registry built. None when no plugin code is on the traceback. Nothing is recorded while
    training runs, so the hot loop pays nothing for this."""
    registries = list(_LIVE_REGISTRIES)
    in_plugin: tuple[PluginInfo, str] | None = None
    component: tuple[str, str, PluginInfo, str] | None = None
    for frame, lineno in reversed(list(traceback.walk_tb(err.__traceback__))):
        if in_plugin is None:
            module = str(frame.f_globals.get("__name__", ""))
            found = next((i for r in registries if (i := r.plugin_of_module(module)) is not None), None)
            if found is not None:
                in_plugin = (found, _where(frame, lineno))
        owner = frame.f_locals.get("self")
        if component is None and owner is not None:
            hit = next((h for r in registries if (h := r.built_component(owner)) is not None), None)
            if hit is not None:
                component = (*hit, _where(frame, lineno))
        if component is not None:
            break
    if component is not None:
        kind, name, info, where = component
        return Culprit(info, kind, name, in_plugin[1] if in_plugin and in_plugin[0] is info else where)
    if in_plugin is not None:
        return Culprit(in_plugin[0], None, None, in_plugin[1])
    return None


def _env_strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _env_disabled() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown)", ""
    return dist.metadata["Name"] or "(unknown)", dist.version or ""


def load_registry(strict: bool | None = None, disabled: Iterable[str] | None = None) -> Registry:
    """Load every plugin of the `pccore` entry-point group, one at a time, into a new Registry.

    `strict` defaults to PCCORE_STRICT_PLUGINS=1; `disabled` (entry-point or distribution names)
    to PCCORE_DISABLE_PLUGINS=a,b.
    """
    registry = Registry(strict=_env_strict() if strict is None else strict)
    blocked = list(_env_disabled() if disabled is None else disabled)
    used: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        distribution, version = _distribution(ep)
        hits = {b for b in blocked if b == ep.name or _normalize(b) == _normalize(distribution)}
        if hits:
            used |= hits
            registry.disabled.append(f"{distribution}:{ep.name}")
            continue
        try:
            obj = ep.load()
        except Exception as err:  # importing a plugin runs its code, which may raise anything
            registry._fail(distribution, ep.name, ep.value, err)
            continue
        registry.register(obj, ep.name, distribution=distribution, version=version, value=ep.value)
    for name in blocked:
        if name not in used:
            print(f"pccore: warning: {DISABLE_ENV} names {name!r}, which matches no installed plugin",
                  file=sys.stderr)
    return registry


_CACHE: dict[tuple[bool, tuple[str, ...]], Registry] = {}


def get_registry() -> Registry:
    """The process-wide registry for the current PCCORE_STRICT_PLUGINS / PCCORE_DISABLE_PLUGINS
    settings, loaded once."""
    key = (_env_strict(), tuple(sorted(_env_disabled())))
    if key not in _CACHE:
        _CACHE[key] = load_registry(strict=key[0], disabled=key[1])
    return _CACHE[key]


def reset_registry() -> None:
    """Forget the cached registry so the next get_registry() reloads plugins (tests change sys.path)."""
    _CACHE.clear()


def _human(registry: Registry) -> str:
    lines: list[str] = []
    for info in registry.plugins:
        version = f" {info.version}" if info.version else ""
        lines.append(f"{info.name}  ({info.distribution}{version}; {info.entry_point})")
        if not info.components:
            lines.append("    (no components)")
        for kind, names in info.components.items():
            lines.append(f"    {kind + ':':<15}{', '.join(names)}")
    if not registry.plugins:
        lines.append("no plugins installed")
    if registry.disabled:
        lines += ["", f"disabled by {DISABLE_ENV}: {', '.join(registry.disabled)}"]
    if registry.failures:
        lines += ["", "failed to load:"]
        lines += [f"    {f.describe()}" for f in registry.failures]
    return "\n".join(lines)


def plugins_command(args: argparse.Namespace) -> int:
    """`pccore plugins [--json]`: every loaded plugin with its distribution, version and components.

    The JSON list holds working plugins only; failures are reported on stderr as warnings.
    """
    registry = get_registry()
    if getattr(args, "json", False):
        data = [
            {
                "plugin": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "entry_point": p.entry_point,
                "components": p.components,
            }
            for p in registry.plugins
        ]
        print(json.dumps(data, indent=2))
    else:
        print(_human(registry))
    return 0
