"""The HTTP app the proxy tests POST to, run as its own process: ``python http_app.py HANG_S``.

It runs beside the worker, not on the test's event loop: on one loop, a busy worker delayed the app's
answers past the proxy's timeout (the proxy then rightly retried a job the app had already answered).

Each job is answered as its body's ``kind`` says (``ok`` 200, ``fail`` 500, ``busy`` 429 with
``Retry-After: 2`` the first time, ``gone`` 404, ``hang`` after HANG_S). It prints its port on the first
line of stdout, and serves what it saw as JSON at ``GET /state``; ``POST /pause`` sets a pause before
each answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import web


class App:
    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s
        self.pause = 0.0
        self.seen: dict[int, list[float]] = defaultdict(list)  # job -> arrival times (CLOCK_MONOTONIC)
        self.answered: dict[int, list[int]] = defaultdict(list)  # job -> statuses sent
        self.headers: dict[int, dict[str, str]] = {}
        self.dead_letters: list[dict[str, Any]] = []

    async def job(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        n, kind = body["n"], body.get("kind", "ok")
        self.seen[n].append(time.monotonic())
        self.headers[n] = {**request.headers, "path": request.path}
        if self.pause:
            await asyncio.sleep(self.pause)
        if kind == "hang":
            await asyncio.sleep(self.hang_s)
        status, extra = 200, {}
        if kind == "fail":
            status = 500
        elif kind == "busy" and len(self.seen[n]) == 1:
            status, extra = 429, {"Retry-After": "2"}
        elif kind == "gone":
            status = 404
        self.answered[n].append(status)
        return web.Response(status=status, text=f"job {n} says {kind}", headers=extra)

    async def dead(self, request: web.Request) -> web.Response:
        self.dead_letters.append(orjson.loads(await request.read()))
        return web.Response(text="noted")

    async def set_pause(self, request: web.Request) -> web.Response:
        self.pause = float(await request.text())
        return web.Response(text="ok")

    async def state(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                {
                    "seen": self.seen,
                    "answered": self.answered,
                    "headers": self.headers,
                    "dead_letters": self.dead_letters,
                },
                option=orjson.OPT_NON_STR_KEYS,
            ),
            content_type="application/json",
        )


async def main(hang_s: float) -> None:
    app = App(hang_s)
    application = web.Application()
    application.router.add_post("/dead", app.dead)
    application.router.add_post("/jobs/{key}", app.job)
    application.router.add_post("/pause", app.set_pause)
    application.router.add_get("/state", app.state)
    runner = web.AppRunner(application, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()  # until the test kills it


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1])))
