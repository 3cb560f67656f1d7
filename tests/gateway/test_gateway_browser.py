"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright's Python package.

The pool and the gateway run in this test's event loop (as an application may run them). The gateway is
set up as `event serve --bind 0.0.0.0:PORT --token-file F` sets it up (a token, every Host answered) and
the browser reaches it at a non-loopback address of this machine when it has one. It signs in through
the form with the token, sees every queue in its role, filters the dead queue, opens a dead message (its
x-death history and its body), pauses a consumer, requeues two selected dead messages (the handler gets
them), deletes what matches a filter, and signs out. Set EVENT_DASHBOARD_SCREENSHOTS=docs to refresh the
screenshots in the documentation (1400 px and 390 px wide, and a dead message opened).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
from gateway_support import free_port
from support import Isolation, Management, Probe, eventually

from event import Dead, Message, Publisher, WorkerPool

playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright's Python package is missing")
gateway = pytest.importorskip("event.gateway", reason="the serve extra (starlette, uvicorn) is missing")
from event.control import VERSION  # noqa: E402
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
# axe-core from npm (tests/gateway/package.json: npm ci --prefix tests/gateway); the check is skipped,
# saying so, without it.
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS_JS = """
async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
  .filter((v) => v.impact === "serious" || v.impact === "critical")
  .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`)
"""

# Every element showing text, with its contrast against the background it is drawn on (the first
# ancestor with one), by WCAG 2's formula; disabled controls are exempt (WCAG 1.4.3).
LOW_CONTRAST_JS = """
() => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || el.closest(":disabled") || style.visibility === "hidden" || !el.offsetParent) continue;
    const fg = rgb(style.color).slice(0, 3);
    const a = lum(fg), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < 4.5) low.push(`${el.tagName}.${el.className} "${text}" ${ratio.toFixed(2)}`);
  }
  return low;
}
"""


def outside_address() -> str:
    """An address of this machine beyond loopback (the one other hosts would use), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address: str = s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


async def test_the_dashboard_signs_in_with_a_token_shows_roles_and_works_the_dead_queue(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Probe, tmp_path: Path
) -> None:
    pool = WorkerPool(**pool_kwargs, grace=2)
    failing = {"on": True}
    handled: list[str] = []

    @pool.consumer("dash.order", queue="orders")
    async def orders(ctx: object, msg: Message[Any]) -> None:
        if failing["on"] and msg.body["order"] == 0 and msg.attempt == 1:
            # Once through a park queue first: its dead copy then carries an x-death history.
            raise RuntimeError("the payment service timed out")
        if failing["on"]:
            raise Dead(f"order {msg.body['order']}: the payment service said no")
        handled.append(str(msg.message_id))

    @pool.consumer("dash.refund", queue="refunds")
    async def refunds(ctx: object, msg: Message[Any]) -> None:
        raise Dead("refunds are closed")

    @pool.consumer("dash.mail", queue="mails")
    async def mails(ctx: object, msg: Message[Any]) -> None:
        await asyncio.sleep(0)

    config = gateway.GatewayConfig.create(
        pool_kwargs["url"], namespace=iso.namespace, exchange=iso.exchange, management_url=management.base
    )
    port = free_port()
    host = outside_address()
    backend = gateway.Backend(config)
    backend.history.interval_s = 2.0  # the outcome charts need two samples: sooner than every 10 s
    app = gateway.create_app(config, token=TOKEN, loopback_only=False, backend=backend)
    http = server(app, host, port)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        for order in range(3):
            await publisher.publish("dash.order", {"order": order}, message_id=f"order-{order}")
        await publisher.publish("dash.refund", {"refund": 7}, message_id="refund-7")
        dead_queue = pool.dead_queue

        async def all_dead() -> bool:
            return await probe.depth(dead_queue) == 4

        await eventually(all_dead, timeout=40)
        failing["on"] = False
        serving = asyncio.create_task(http.serve())
        try:
            await eventually(lambda: http.started, timeout=10)
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 900})
                    shots = Path(os.environ.get("EVENT_DASHBOARD_SCREENSHOTS") or tmp_path)
                    await _drive(page, f"http://{host}:{port}/", iso, pool, handled, dead_queue, shots)
                finally:
                    await browser.close()
        finally:
            http.should_exit = True
            await serving


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now (injected past the page's CSP:
    Playwright evaluates outside it)."""
    if not AXE.exists():
        missing = f"no accessibility check: axe-core is missing at {AXE} (npm ci --prefix tests/gateway)"
        warnings.warn(missing, stacklevel=2)
        return []
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text() + "\n;true")
    found: list[str] = await page.evaluate(SERIOUS_JS)
    return found


async def _drive(
    page: Any, url: str, iso: Isolation, pool: WorkerPool, handled: list[str], dead_queue: str, shots: Path
) -> None:
    expect = playwright_api.expect
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    dialogs: list[str] = []

    async def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", lambda dialog: asyncio.ensure_future(accept(dialog)))
    await page.goto(url)
    assert await serious_violations(page) == []
    # Signed out: the sign-in form. A wrong token is refused, the right one opens the dashboard.
    await page.locator("#token").fill("not-the-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".login .error")).to_have_text("That is not the token.")
    await page.locator("#token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#namespace")).to_have_text(iso.namespace, timeout=10_000)
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["event_session"] and TOKEN not in cookies[0]["value"]

    # Every queue in its role: consumers with a Pause button each, the dead queue with its bounds, the
    # park queues summed up in one line, and no Pause button on anything but a consumer queue.
    orders = page.locator(f'#queues tr[data-queue="{iso.namespace}:orders"]')
    await expect(orders.locator("td.consumers")).to_have_text("1", timeout=15_000)
    dead_row = page.locator(f'#queues tr[data-queue="{dead_queue}"]')
    await expect(dead_row.locator("td.depth")).to_have_text("4", timeout=15_000)
    await expect(dead_row.locator("td.role")).to_have_text("dead (kept 30 d, at most 100,000)")
    await expect(page.locator("#queues tr.levels-park")).to_contain_text("21 park queues")
    await expect(page.locator('#queues tr[data-role="consumer"] button')).to_have_count(3)
    await expect(page.locator("#queues tbody button")).to_have_count(3)

    # The workers view: the pool of this test (this process: its pid and event's version, as the pool
    # reports them), consuming its three queues, none paused and nothing running.
    worker = page.locator("#workers tbody tr[data-connection]")
    await expect(worker).to_have_count(1, timeout=10_000)
    await expect(worker.locator("td.pid")).to_have_text(str(os.getpid()), timeout=10_000)
    await expect(worker.locator("td.version")).to_have_text(VERSION or "?")
    await expect(worker.locator("td.queues")).to_have_text(
        ", ".join(f"{iso.namespace}:{q} (consuming, 0 running)" for q in ("mails", "orders", "refunds"))
    )

    # The last hour as charts: one per consumer queue and the dead queue, three lines each; a consumer
    # queue has a second chart, of the outcomes its workers report, four lines, each named.
    chart = page.locator(f'#history figure[data-queue="{iso.namespace}:orders"]')
    await expect(chart.locator("svg:not(.outcomes) polyline")).to_have_count(3, timeout=15_000)
    assert "ready now 0" in (await chart.locator("svg:not(.outcomes)").get_attribute("aria-label") or "")
    outcomes = chart.locator("svg.outcomes")
    await expect(outcomes.locator("polyline")).to_have_count(4, timeout=25_000)
    label = await outcomes.get_attribute("aria-label") or ""
    assert all(f"{word} " in label for word in ("processed", "failed", "retried", "dead")), label
    await expect(chart.locator(".legend .key.line-dead")).to_have_text(re.compile(r"^dead \d+$"))
    dead_chart = page.locator(f'#history figure[data-queue="{dead_queue}"]')
    await expect(dead_chart).to_have_count(1)
    await expect(dead_chart.locator("svg.outcomes")).to_have_count(0)  # no consumer: nothing reported

    # The dead queue, newest first: order-0 died last (after its retry).
    rows = page.locator("#dead tbody tr[data-key]")
    await expect(rows).to_have_count(4)
    assert await rows.first.get_attribute("data-message-id") == "order-0"
    row = page.locator('#dead tr[data-message-id="order-1"]')
    await expect(row.locator("td.error")).to_contain_text("order 1: the payment service said no")
    await expect(row.locator("td.body")).to_contain_text('"order":1')

    # Filter by routing key, then clear the filter.
    await page.get_by_label("Routing key").fill("dash.refund")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(1)
    await expect(page.locator("#dead-total")).to_contain_text("4 message(s), 1 matching")
    await page.get_by_role("button", name="Clear filter").click()
    await expect(rows).to_have_count(4)

    # Open one: its facts, the error, every header with the x-death history, the body pretty-printed.
    await page.get_by_role("button", name="Open dead message order-0").click()
    opened = page.locator("#dead-message")
    await expect(opened).to_be_visible()
    await expect(page.locator("#dead-message-headers")).to_contain_text('"x-death"')
    await expect(page.locator("#dead-message-body")).to_have_text('{\n  "order": 0\n}')
    await expect(page.locator("#dead-message-error")).to_contain_text("order 0: the payment service said no")
    await page.screenshot(path=str(shots / "dashboard-dead-message.png"))
    assert await serious_violations(page) == []
    await page.get_by_role("button", name="Close").click()
    await expect(opened).to_be_hidden()

    # Pause a consumer from the page: the pool stops consuming, the page shows it.
    mails = page.locator(f'#queues tr[data-queue="{iso.namespace}:mails"]')
    await mails.get_by_role("button", name=f"Pause {iso.namespace}:mails").click()
    await expect(mails.locator("td.state")).to_have_text("paused", timeout=10_000)
    await eventually(lambda: f"{iso.namespace}:mails" in pool.paused, timeout=10)

    # Select two and requeue them: the confirmation says how many, the handler (no longer failing) gets them.
    await page.get_by_label("Select dead message order-1").check()
    await page.get_by_label("Select dead message order-2").check()
    await page.get_by_role("button", name="Requeue 2 selected").click()
    await eventually(lambda: sorted(handled) == ["order-1", "order-2"], timeout=15)
    assert dialogs[-1] == "Requeue 2 selected dead message(s) to the queues they failed in?"
    await expect(page.locator("#status")).to_contain_text("requeued 2 message(s)")
    await expect(rows).to_have_count(2, timeout=10_000)
    await page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at 390"
    await page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.set_viewport_size({"width": 1400, "height": 900})
    assert await page.evaluate(LOW_CONTRAST_JS) == []
    assert await serious_violations(page) == []
    await page.emulate_media(color_scheme="dark")  # prefers-color-scheme: dark
    assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(22, 24, 26)"
    assert await page.evaluate(LOW_CONTRAST_JS) == []
    await page.screenshot(path=str(shots / "dashboard-dark.png"), full_page=True)
    assert await serious_violations(page) == []
    await page.emulate_media(color_scheme="light")
    assert await page.evaluate("async () => (await fetch('favicon.ico')).status") == 200
    await page.goto(url + "api")  # the API's page
    assert await serious_violations(page) == []
    await page.go_back()

    # Delete all matching a filter: the confirmation says how many, the rest stay.
    await page.get_by_label("Error").fill("refunds are closed")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(1)
    await page.get_by_role("button", name="Delete all matching (1)").click()
    await expect(page.locator("#status")).to_contain_text("deleted 1 message(s)")
    assert dialogs[-1] == "Delete all 1 dead message(s) matching this filter for good?"
    await page.get_by_role("button", name="Clear filter").click()
    await expect(rows).to_have_count(1, timeout=10_000)
    assert sorted(handled) == ["order-1", "order-2"]

    # Sign out: back to the sign-in form, and the API refuses the browser again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#token")).to_be_visible(timeout=10_000)
    assert await page.context.cookies() == []
    refused = await page.request.get(url + "api/queues")
    assert refused.status == 401
    assert problems == []
