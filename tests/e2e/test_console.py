"""The admin console in a real headless Chromium against a real server,
database and webhook receiver: history + live seam, filters, the newcomer's
webhook flow (create -> failed deliveries -> inspect -> fix the URL ->
replay what it missed), a read-only and a feed-only token, a narrow window.

Screenshots are kept in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

import outbox
from tests.support.browser import (
    WAIT_MS,
    count,
    ids,
    login,
    needs_chromium,
    open_page,
    screenshot,
    texts,
    wait_count,
)
from tests.support.receivers import running
from tests.support.servers import free_port, serve_app
from tests.support.waiting import wait_for

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = [pytest.mark.browser, needs_chromium]


def publish(conn: psycopg.Connection[Any], event_type: str, payload: Any, **kw: Any) -> int:
    with conn.transaction():
        return outbox.publish(conn, event_type, payload, **kw)


async def test_history_then_live_with_no_gap_no_repeat_and_scrolling_back(
    settings: Any, conn: psycopg.Connection[Any], db_url: str
) -> None:
    before = [publish(conn, "user.created", {"n": i, "username": f"old_{i}"}) for i in range(130)]
    # Drawn before the page reads its history, committed after it: only /ws
    # can bring it, and it must (the seam's hard case).
    late = psycopg.connect(db_url)
    late_id = outbox.publish(late, "ticket.created", {"title": "late commit"})
    try:
        async with serve_app(settings) as srv, open_page() as page:
            await login(page, srv.base_url, TOKEN)
            # History first: the newest page, newest first.
            assert await ids(page) == before[::-1][:100]
            assert late_id not in await ids(page)

            late.commit()
            live = [publish(conn, "user.created", {"n": 1000 + i}) for i in range(5)]

            async def all_live() -> bool:
                return {late_id, *live} <= set(await ids(page))

            await wait_for(all_live, timeout=20, what="the late commit and the live events")
            shown = await ids(page)
            assert len(shown) == len(set(shown)), "an event shows twice"
            assert set(shown) == {*before[30:], late_id, *live}

            # Scrolling back pages further into history, to the start of the log.
            await page.click("#older")
            await wait_count(page, "#events li.ev", 136, what="the older page")
            shown = await ids(page)
            assert len(shown) == len(set(shown))
            assert set(before) <= set(shown)
            await page.wait_for_selector("#older:has-text('Start of the log')", timeout=WAIT_MS)
            await screenshot(page, "console-history")
    finally:
        late.close()


async def test_filters_apply_to_what_is_on_screen_and_to_what_arrives(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    ann = publish(conn, "user.created", {"name": "Ann"}, key="u1")
    vpn = publish(
        conn, "ticket.created", {"title": "VPN broken"}, key="t1", traceparent=TRACEPARENT
    )
    bob = publish(conn, "user.created", {"name": "Bob"}, key="u2")
    msg = publish(conn, "ticket.message_added", {"text": "still BROKEN"}, key="t1")
    async with serve_app(settings) as srv, open_page() as page:
        await login(page, srv.base_url, TOKEN)
        await wait_count(page, "#events li.ev", 4)

        async def shown_after(field: str, value: str, expected: set[int]) -> None:
            await page.fill(field, value)

            async def matches() -> bool:
                return set(await ids(page)) == expected

            await wait_for(matches, timeout=10, what=f"{field}={value!r} shows {expected}")

        await shown_after("#filter-types", "ticket.*", {vpn, msg})
        await shown_after("#filter-types", "", {ann, vpn, bob, msg})
        await shown_after("#filter-key", "t1", {vpn, msg})
        await shown_after("#filter-key", "u*", {ann, bob})
        await shown_after("#filter-key", "", {ann, vpn, bob, msg})
        await shown_after("#filter-text", "broken", {vpn, msg})  # any case
        await shown_after("#filter-text", "bob", {bob})
        await shown_after("#filter-text", "", {ann, vpn, bob, msg})
        await page.fill("#filter-types", "nope")
        await page.wait_for_selector("#filter-state.error:has-text('not a type')", timeout=WAIT_MS)

        # What arrives live goes through the same filter.
        await shown_after("#filter-types", "user.*", {ann, bob})
        t2 = publish(conn, "ticket.created", {"title": "hidden"}, key="t2")
        u3 = publish(conn, "user.created", {"name": "Cid"}, key="u3")
        await wait_count(page, "#events li.ev", 3, what="the live user event")
        assert set(await ids(page)) == {ann, bob, u3}
        # A type chip toggles the type filter.
        await page.click('#chips .chip[data-type="ticket.created"]')
        assert "ticket.created" in await page.input_value("#filter-types")
        await shown_after("#filter-types", "", {ann, vpn, bob, msg, t2, u3})

        # An event opens into payload, key, traceparent and its deliveries.
        await page.click(f'#events li.ev[data-id="{vpn}"] .ev-head')
        await page.wait_for_selector(
            "#drawer:not([hidden]) [data-test=event-payload]", timeout=WAIT_MS
        )
        body = await page.inner_text("#drawer-body")
        assert "VPN broken" in body and "t1" in body and TRACEPARENT in body
        await page.wait_for_selector(
            "#drawer-body :text('No webhook receives this event')", timeout=WAIT_MS
        )
        await screenshot(page, "console-filter-event")


async def test_a_newcomer_creates_a_webhook_fixes_its_url_and_replays_what_it_missed(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    # One quick retry: a delivery to a dead URL fails for good within a second.
    settings = settings.replace(retry_schedule=(timedelta(milliseconds=200),))
    refused = free_port()  # nothing listens: connections are refused at once
    async with running() as rx, serve_app(settings) as srv, open_page() as page:
        await login(page, srv.base_url, TOKEN)
        await page.click("#nav-webhooks")
        await page.wait_for_selector("#hook-list :text('No webhooks yet')", timeout=WAIT_MS)

        # Create, with an API error shown next to its field first.
        await page.click("[data-test=new-webhook]")
        form = page.locator("[data-test=webhook-form]")
        await form.locator("#" + await _field_id(form, "Name")).fill("crm sync")
        url_input = form.locator("#" + await _field_id(form, "Endpoint URL"))
        await url_input.fill("ftp://crm.invalid/hook")
        await form.locator("#" + await _field_id(form, "Event types")).fill("user.*")
        await form.locator("[data-test=add-header]").click()
        await form.locator(".hrow .hname").fill("X-Tenant")
        await form.locator(".hrow .hvalue").fill("acme")
        await form.locator("[data-test=webhook-save]").click()
        url_error = form.locator('[data-error-for="url"]')
        await url_error.wait_for(timeout=WAIT_MS)
        assert "http" in (await url_error.inner_text()).lower()
        await url_input.fill(f"http://127.0.0.1:{refused}/hook")
        await form.locator("[data-test=webhook-save]").click()

        # The secret, shown once, with a copy button.
        secret_box = page.locator("[data-test=secret-dialog] [data-test=secret]")
        await secret_box.wait_for(timeout=WAIT_MS)
        assert (await secret_box.inner_text()).startswith("whsec_")
        assert await page.is_visible("[data-test=copy-secret]")
        await page.click("[data-test=secret-done]")
        await page.wait_for_selector("#hd-head :text('crm sync')", timeout=WAIT_MS)

        # Events it misses: the endpoint refuses, the deliveries fail.
        missed = [publish(conn, "user.created", {"user_id": i, "name": f"u{i}"}) for i in range(3)]
        publish(conn, "ticket.created", {"title": "not subscribed"})
        await page.click("#delivery-tabs button[data-status=failed]")
        await wait_count(page, "#deliveries tr.d-failed", 3, timeout=30, what="3 failed deliveries")
        await screenshot(page, "console-webhook-failing")

        # Open a failed one: its attempts say why.
        await page.click("#deliveries tr.d-failed")
        attempts = page.locator("#drawer [data-test=attempts] details.attempt")
        await attempts.first.wait_for(timeout=WAIT_MS)
        assert await attempts.count() == 2  # the first attempt and its one retry
        text = await page.inner_text("#drawer-body")
        assert "failed" in text and "ConnectError" in text
        assert "[redacted]" in text  # signatures never shown
        assert "webhook-id" in text
        await screenshot(page, "console-delivery-failed")
        await page.click("#drawer-close")

        # Fix the URL.
        await page.click("[data-test=edit]")
        form = page.locator("[data-test=webhook-form]")
        await form.locator("#" + await _field_id(form, "Endpoint URL")).fill(rx.url)
        await form.locator("[data-test=webhook-save]").click()
        await page.wait_for_selector(f"#hd-head :text('{rx.url}')", timeout=WAIT_MS)

        # Replay the range it missed: counted first, then confirmed.
        await page.click("[data-test=replay]")
        dialog = page.locator("[data-test=replay-dialog]")
        await dialog.locator("[data-test=preset-failure]").click()
        await dialog.locator("[data-test=replay-go]").click()
        counted = dialog.locator("[data-test=replay-count]")
        await counted.wait_for(timeout=WAIT_MS)
        assert "3 events" in await counted.inner_text()
        assert rx.requests == []  # nothing sent by counting
        await screenshot(page, "console-replay-count")
        await dialog.locator("[data-test=replay-go]:has-text('Replay 3 events')").click()

        async def received() -> bool:
            got = {r.headers.get("webhook-id") for r in rx.requests}
            return {f"evt_{i}" for i in missed} <= got

        await wait_for(received, timeout=30, what="the replayed events at the fixed URL")
        assert all(json.loads(r.body)["name"].startswith("u") for r in rx.requests)
        assert all(r.headers.get("x-tenant") == "acme" for r in rx.requests)  # custom header
        await page.click("#delivery-tabs button[data-status=success]")
        await wait_count(page, "#deliveries tr.d-success", 3, what="3 successful replays")
        assert (await texts(page, "#deliveries tr.d-success .tag")).count("replay 1") == 3

        # Per-key ordering: sent when chosen. A server without it (#17) says
        # "unknown field", and the form shows that next to the control.
        await page.click("[data-test=edit]")
        form = page.locator("[data-test=webhook-form]")
        await form.locator("#" + await _field_id(form, "Ordering")).select_option("key")
        await form.locator("[data-test=webhook-save]").click()
        ordering_error = form.locator('[data-error-for="ordering"]')
        await wait_for(
            lambda: _settled(page, ordering_error),
            timeout=10,
            what="ordering saved or refused next to its field",
        )
        if await ordering_error.is_visible():
            assert (await ordering_error.inner_text()).strip()
            await screenshot(page, "console-field-error")
            await form.locator("button:has-text('Cancel')").click()
        else:
            await page.wait_for_selector("#hd-facts :text('key')", timeout=WAIT_MS)

        # Send a test and inspect it.
        await page.click("#delivery-tabs button[data-status='']")
        await page.click("[data-test=send-test]")
        test_row = page.locator("#deliveries tr.d-success:has-text('webhook.test')")
        await test_row.wait_for(timeout=30_000)
        await test_row.click()
        await page.wait_for_selector(
            "#drawer [data-test=attempts] :text('HTTP 200')", timeout=WAIT_MS
        )
        body = await page.inner_text("#drawer-body")
        assert "x-webhook-event" in body and "webhook.test" in body
        assert "x-tenant" in body.lower()
        await screenshot(page, "console-delivery-ok")
        await page.click("#drawer-close")

        # Rotate the secret: the new one shown once, and when each header switches.
        await page.click("[data-test=rotate]")
        await page.click("[data-test=rotate-go]")
        await page.wait_for_selector(
            "[data-test=secret-dialog] :text('X-Webhook-Signature')", timeout=WAIT_MS
        )
        assert "old secret" in (await page.inner_text("[data-test=secret-dialog]")).lower() or (
            "previous secret" in (await page.inner_text("[data-test=secret-dialog]"))
        )
        await page.click("[data-test=secret-done]")

        # Delete, after a confirmation that can be cancelled.
        await page.click("[data-test=delete]")
        await page.click("[data-test=delete-dialog] button:has-text('Cancel')")
        assert await count(page, "#hook-list li.hook") == 1
        await page.click("[data-test=delete]")
        await page.click("[data-test=delete-dialog] [data-test=confirm]")
        await page.wait_for_selector("#hook-list :text('No webhooks yet')", timeout=WAIT_MS)


async def _settled(page: Any, error: Any) -> bool:
    """The form either closed (saved) or shows the error."""
    return await error.is_visible() or await count(page, "[data-test=webhook-form]") == 0


async def _field_id(form: Any, label: str) -> str:
    """The id of the input a label names (labels carry for=)."""
    lab = form.locator(f"label:text-is('{label}')")
    return str(await lab.get_attribute("for"))


async def test_a_read_token_sees_everything_and_can_change_nothing(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    from outbox.tokens import create_token

    publish(conn, "user.created", {"name": "Ann"})
    publish(conn, "ticket.created", {"title": "not for the feed token"})
    with conn.transaction():
        conn.execute(
            "INSERT INTO outbox.webhooks (name, url, event_types, secret, is_active)"
            " VALUES ('crm sync', 'http://127.0.0.1:9/hook', '{user.created}', 's', false)"
        )
    reader = create_token(conn, "viewer", scope="read")
    feeder = create_token(conn, "dash", scope="feed", events=["user.*"])
    async with serve_app(settings) as srv, open_page() as page:
        # A sink whose broker refuses (RabbitMQ with a wrong password): the
        # health view shows its lag and last error.
        async with httpx.AsyncClient(base_url=srv.base_url, headers=AUTH) as admin:
            sink = await admin.post(
                "/sinks",
                json={
                    "name": "broken-amqp",
                    "kind": "amqp",
                    "url": "amqp://guest:wrong@127.0.0.1:5672/",
                    "event_types": ["user.*"],
                    "exchange": "nope",
                    "routing_key": "{type}",
                },
            )
            assert sink.status_code == 201, sink.text
        publish(conn, "user.created", {"name": "Bea"})  # something for it to publish
        await login(page, srv.base_url, reader)
        assert (await page.inner_text("#scope")).strip() == "read only"
        await page.click("#nav-webhooks")
        await page.wait_for_selector("#hd-head :text('crm sync')", timeout=WAIT_MS)
        for write in (
            "[data-test=new-webhook]",
            "[data-test=send-test]",
            "[data-test=edit]",
            "[data-test=delete]",
            "[data-test=replay]",
            "[data-test=rotate]",
            "[data-test=toggle-active]",
        ):
            assert await count(page, write) == 0 or not await page.is_visible(write), write
        await page.click("#nav-health")
        await page.wait_for_selector("#health-summary[data-status]", timeout=WAIT_MS)
        row = page.locator("#sinks tr:has-text('broken-amqp')")
        await row.wait_for(timeout=WAIT_MS)
        await page.wait_for_selector(
            "#sinks tr:has-text('broken-amqp') .badge:text('failing')", timeout=30_000
        )
        assert "guest:wrong" not in await row.inner_text()  # the password is never shown
        await screenshot(page, "console-read-token")

        # A feed token: only the feed, and only its event patterns.
        await page.goto(f"{srv.base_url}/#token={feeder}")
        await page.reload()  # the same document otherwise: only the hash changed
        await page.wait_for_selector('#status[data-state="live"]', timeout=WAIT_MS)
        assert (await page.inner_text("#scope")).strip() == "feed only"
        assert not await page.is_visible("#nav-webhooks")
        assert not await page.is_visible("#nav-health")
        assert await page.is_visible("#view-events")
        await wait_count(page, "#events li.ev", 2)
        assert await texts(page, "#events li.ev .ev-type") == ["user.created"] * 2
        await page.goto(f"{srv.base_url}/#/webhooks")
        assert not await page.is_visible("#view-webhooks")
        # Opening an event shows no deliveries section (not the feed's to see).
        await page.click("#events li.ev .ev-head")
        await page.wait_for_selector("#drawer [data-test=event-payload]", timeout=WAIT_MS)
        assert await count(page, "#drawer [data-test=event-deliveries]") == 0


async def test_a_narrow_window_keeps_every_view_usable(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    for i in range(20):
        publish(
            conn, "ticket.created", {"title": f"Ticket number {i} with a long title"}, key=f"t{i}"
        )
    with conn.transaction():
        conn.execute(
            "INSERT INTO outbox.webhooks (name, url, event_types, secret)"
            " VALUES ('support desk', 'http://127.0.0.1:9/a/rather/long/path/for/a/phone',"
            " '{ticket.*}', 's')"
        )
    async with serve_app(settings) as srv, open_page(390, 844) as page:
        await login(page, srv.base_url, TOKEN)
        await wait_count(page, "#events li.ev", 20)
        assert await _no_sideways_scroll(page)
        await screenshot(page, "console-narrow-events")
        await page.click("#events li.ev .ev-head")
        await page.wait_for_selector(
            "#drawer:not([hidden]) [data-test=event-payload]", timeout=WAIT_MS
        )
        assert await _no_sideways_scroll(page)
        await page.click("#drawer-close")
        await page.click("#nav-webhooks")
        await page.click("#hook-list li.hook")
        await page.wait_for_selector("#hd-head :text('support desk')", timeout=WAIT_MS)
        assert await page.is_visible("[data-test=send-test]")
        assert await _no_sideways_scroll(page)
        await screenshot(page, "console-narrow-webhook", full_page=True)


async def _no_sideways_scroll(page: Any) -> bool:
    width: int = await page.evaluate("() => document.documentElement.scrollWidth")
    viewport: int = await page.evaluate("() => window.innerWidth")
    return width <= viewport


async def test_blocked_keys_show_on_the_webhook_page_and_skip_moves_a_key_on(
    settings: Any, conn: psycopg.Connection[Any]
) -> None:
    # A long retry wait: a failing head stays pending, holding its key back.
    settings = settings.replace(retry_schedule=(timedelta(seconds=60),))
    refused = free_port()
    with conn.transaction():
        conn.execute(
            "INSERT INTO outbox.webhooks (name, url, event_types, secret, ordering)"
            " VALUES ('ledger', %s, '{payment.*}', 's', 'key')",
            (f"http://127.0.0.1:{refused}/hook",),
        )
    k1 = [publish(conn, "payment.completed", {"n": i}, key="acct:1") for i in range(3)]
    publish(conn, "payment.completed", {"n": 9}, key="acct:2")
    async with serve_app(settings) as srv, open_page() as page:
        await login(page, srv.base_url, TOKEN)
        await page.click("#nav-webhooks")
        await page.wait_for_selector("#hd-head :text('ledger')", timeout=WAIT_MS)
        row = page.locator("[data-test=blocked-keys] tr[data-key='acct:1']")
        await row.wait_for(timeout=30_000)
        cells = await row.locator("td").all_inner_texts()
        assert cells[0] == "acct:1" and cells[4] == "2"  # two wait behind the failing head
        assert str(k1[0]) in cells[1]
        await wait_count(page, "#deliveries .tag.wait", 2, what="the waiting deliveries tagged")
        await screenshot(page, "console-blocked-keys")

        # Skip the head (after a confirmation): it ends failed, the key moves on.
        await row.locator("[data-test=key-skip]").click()
        await page.click("[data-test=skip-dialog] [data-test=confirm]")

        async def moved_on() -> bool:
            cells = await page.locator(
                "[data-test=blocked-keys] tr[data-key='acct:1'] td"
            ).all_inner_texts()
            return bool(cells) and str(k1[1]) in cells[1] and cells[4] == "1"

        await wait_for(moved_on, timeout=30, what="the next delivery of acct:1 at the head")
        status = conn.execute(
            "SELECT status FROM outbox.deliveries WHERE event_id = %s", (k1[0],)
        ).fetchone()
        assert status == ("failed",)
