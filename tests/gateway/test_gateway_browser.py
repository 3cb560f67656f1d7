"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright's Python package.

The pool and the gateway run in this test's event loop (as an application may run them). The gateway is
set up as `event serve --bind 0.0.0.0:PORT --token-file F` sets it up (a token, every Host answered) and
the browser reaches it at a non-loopback address of this machine when it has one: it signs in through the
form with the token, sees the queue depths and the dead messages, pauses a consumer and requeues one dead
message by clicking (the handler gets it), and signs out. Set EVENT_DASHBOARD_SCREENSHOT=docs/dashboard.png to
refresh the screenshot in the documentation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from gateway_support import free_port
from support import Isolation, Management, Probe, eventually

from event import Dead, Message, Publisher, WorkerPool

playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright's Python package is missing")
gateway = pytest.importorskip("event.gateway", reason="the serve extra (starlette, uvicorn) is missing")
from event.gateway.server import server  # noqa: E402 - after the skips above

CHROMIUM = os.environ.get("EVENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no chromium binary at {CHROMIUM}: apt-get install -y chromium (or set EVENT_CHROMIUM)",
    ),
]


TOKEN = "browser-test-token-0123456789"


def outside_address() -> str:
    """An address of this machine beyond loopback (the one other hosts would use), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address: str = s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


async def test_the_dashboard_signs_in_with_a_token_shows_depths_pauses_and_requeues_by_click(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Probe, tmp_path: Path
) -> None:
    pool = WorkerPool(**pool_kwargs, grace=2)
    failing = {"on": True}
    handled: list[str] = []

    @pool.consumer("dash.order", queue="orders")
    async def orders(ctx: object, msg: Message[Any]) -> None:
        if failing["on"]:
            raise Dead(f"order {msg.body['order']}: the payment service said no")
        handled.append(str(msg.message_id))

    @pool.consumer("dash.mail", queue="mails")
    async def mails(ctx: object, msg: Message[Any]) -> None:
        await asyncio.sleep(0)

    config = gateway.GatewayConfig.create(
        pool_kwargs["url"], namespace=iso.namespace, exchange=iso.exchange, management_url=management.base
    )
    port = free_port()
    host = outside_address()
    app = gateway.create_app(config, token=TOKEN, loopback_only=False)
    http = server(app, host, port)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        for order in range(3):
            await publisher.publish("dash.order", {"order": order}, message_id=f"order-{order}")
        dead_queue = pool.dead_queue

        async def all_dead() -> bool:
            return await probe.depth(dead_queue) == 3

        await eventually(all_dead, timeout=20)
        failing["on"] = False
        serving = asyncio.create_task(http.serve())
        try:
            await eventually(lambda: http.started, timeout=10)
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 820})
                    shot = os.environ.get("EVENT_DASHBOARD_SCREENSHOT") or str(tmp_path / "dashboard.png")
                    await _drive(page, f"http://{host}:{port}/", iso, pool, handled, dead_queue, shot)
                finally:
                    await browser.close()
        finally:
            http.should_exit = True
            await serving


async def _drive(
    page: Any, url: str, iso: Isolation, pool: WorkerPool, handled: list[str], dead_queue: str, shot: str
) -> None:
    expect = playwright_api.expect
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(url)
    # Signed out: the sign-in form. A wrong token is refused, the right one opens the dashboard.
    await page.locator("#token").fill("not-the-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".login .error")).to_have_text("That is not the token.")
    await page.locator("#token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#namespace")).to_have_text(iso.namespace, timeout=10_000)
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["event_session"] and TOKEN not in cookies[0]["value"]
    orders = page.locator(f'#queues tr[data-queue="{iso.namespace}:orders"]')
    await expect(orders.locator("td.consumers")).to_have_text("1", timeout=15_000)
    await expect(page.locator(f'#queues tr[data-queue="{dead_queue}"] td.depth')).to_have_text(
        "3", timeout=15_000
    )
    await expect(page.locator("#dead tbody tr[data-message-id]")).to_have_count(3)
    row = page.locator('#dead tr[data-message-id="order-1"]')
    await expect(row.locator("td.error")).to_contain_text("order 1: the payment service said no")
    await expect(row.locator("td.body")).to_contain_text('"order":1')

    # Pause a consumer from the page: the pool stops consuming, the page shows it.
    mails = page.locator(f'#queues tr[data-queue="{iso.namespace}:mails"]')
    await mails.get_by_role("button", name="Pause").click()
    await expect(mails.locator("td.state")).to_have_text("paused", timeout=10_000)
    await eventually(lambda: f"{iso.namespace}:mails" in pool.paused, timeout=10)

    # Requeue one dead message by clicking: the handler (no longer failing) gets it.
    await row.get_by_role("button", name="Requeue").click()
    await eventually(lambda: handled == ["order-1"], timeout=15)
    await expect(page.locator("#status")).to_contain_text("requeued 1 message(s)")
    await expect(page.locator("#dead tbody tr[data-message-id]")).to_have_count(2, timeout=10_000)
    await expect(page.locator('#dead tr[data-message-id="order-1"]')).to_have_count(0)
    await page.screenshot(path=shot, full_page=True)

    # Delete one by clicking, confirming the browser's dialog: gone for good, never handled.
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.locator('#dead tr[data-message-id="order-2"]').get_by_role("button", name="Delete").click()
    await expect(page.locator("#status")).to_contain_text("deleted 1 message(s)")
    await expect(page.locator("#dead tbody tr[data-message-id]")).to_have_count(1, timeout=10_000)
    assert handled == ["order-1"]

    # Sign out: back to the sign-in form, and the API refuses the browser again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#token")).to_be_visible(timeout=10_000)
    assert await page.context.cookies() == []
    refused = await page.request.get(url + "api/queues")
    assert refused.status == 401
    assert problems == []
