"""Several runners at once, from a TOML file (``event worker --config workers.toml``)::

    namespace = "myapp"             # the pool's settings; all optional
    concurrency = 100
    on_dead = "./notify.sh"         # or a URL: see event.runners.hooks

    [[proxy]]
    routing_keys = ["app.resize"]
    to = "http://127.0.0.1:8000/jobs/{routing_key}"
    timeout = 30
    headers = { Authorization = "Bearer ..." }

    [[exec]]
    routing_keys = ["app.report"]
    command = ["./report.sh", "--fast"]
    max_concurrency = 4

Each ``[[proxy]]`` and ``[[exec]]`` table also takes ``queue``, ``timeout``, ``retries``, ``prefetch``
and ``max_concurrency``. A key this module does not know is an error, naming the key and the table.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event.errors import ConfigurationError
from event.pool import WorkerPool
from event.runners.hooks import DeadHook

POOL_KEYS = {"url", "namespace", "exchange", "concurrency", "grace", "on_dead", "proxy", "exec"}
COMMON_KEYS = {"routing_keys", "queue", "timeout", "retries", "prefetch", "max_concurrency"}
PROXY_KEYS = COMMON_KEYS | {"to", "headers"}
EXEC_KEYS = COMMON_KEYS | {"command"}
CONSUMER_OPTIONS = ("retries", "prefetch", "max_concurrency")


@dataclass
class Runners:
    """A pool with its runners, and what must be closed once it has stopped."""

    pool: WorkerPool
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Close every runner and the hook (their connections, the hook's backlog)."""
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()


def hooked_pool(on_dead: str | None, **pool_options: Any) -> Runners:
    """A :class:`WorkerPool` whose dead messages are told to ``on_dead`` (a URL or a command line)."""
    hook = DeadHook(on_dead) if on_dead else None
    runners = Runners(WorkerPool(on_dead=hook, **pool_options))
    if hook is not None:
        runners.closers.append(hook.close)
    return runners


def load(path: str | Path, *, url: str | None = None) -> Runners:
    """Read the TOML file at ``path`` and build its pool and runners; ``url`` overrides the file's."""
    try:
        settings = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the workers file {str(path)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"the workers file {str(path)!r} is not valid TOML: {exc}") from exc
    _known(settings, POOL_KEYS, f"{path}")
    pool_options = {
        k: settings[k] for k in ("namespace", "exchange", "concurrency", "grace") if k in settings
    }
    runners = hooked_pool(settings.get("on_dead"), url=url or settings.get("url"), **pool_options)
    for number, table in enumerate(_tables(settings, "proxy", path), start=1):
        _known(table, PROXY_KEYS, f"{path}: [[proxy]] number {number}")
        proxy = runners.pool.proxy(
            *_keys(table, f"{path}: [[proxy]] number {number}"),
            to=_required(table, "to", f"{path}: [[proxy]] number {number}"),
            headers=table.get("headers"),
            **_options(table),
        )
        runners.closers.insert(0, proxy.close)
    for number, table in enumerate(_tables(settings, "exec", path), start=1):
        _known(table, EXEC_KEYS, f"{path}: [[exec]] number {number}")
        runners.pool.command(
            *_keys(table, f"{path}: [[exec]] number {number}"),
            argv=_required(table, "command", f"{path}: [[exec]] number {number}"),
            **_options(table),
        )
    if not runners.pool.consumers:
        raise ConfigurationError(f"the workers file {str(path)!r} has no [[proxy]] or [[exec]] table")
    return runners


def _tables(settings: dict[str, Any], name: str, path: str | Path) -> list[dict[str, Any]]:
    tables = settings.get(name, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError(f"{path}: {name} must be an array of tables, written [[{name}]]")
    return tables


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {unknown}; known: {sorted(keys)}")


def _required(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ConfigurationError(f"{where} needs {key} = ...")
    return table[key]


def _keys(table: dict[str, Any], where: str) -> list[str]:
    keys = _required(table, "routing_keys", where)
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigurationError(f"{where}: routing_keys must be a non-empty list of strings")
    return keys


def _options(table: dict[str, Any]) -> dict[str, Any]:
    chosen = {k: table[k] for k in CONSUMER_OPTIONS if k in table}
    for key in ("queue", "timeout"):
        if key in table:
            chosen[key] = table[key]
    return chosen
