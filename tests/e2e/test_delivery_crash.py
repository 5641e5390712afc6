"""kill -9 of a worker process mid-request: the delivery is sent again after
the lease runs out, with the same webhook-id, and recorded once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from outbox.api.config import Settings
from outbox.relay.config import DeliverySettings
from tests.support.delivery import (
    TEST_SECRET,
    attempts,
    create_webhook,
    delivery,
    enqueue,
    fast,
    status_is,
    worker,
)
from tests.support.paths import ROOT
from tests.support.receivers import Hang, running
from tests.support.waiting import wait_for

WORKER = """
import asyncio
from outbox.api.config import Settings
from tests.support.delivery import new_worker
asyncio.run(new_worker(Settings.load()).run())
"""
LEASE = 2.0


async def test_killed_worker_delivery_is_sent_again_after_the_lease(
    aconn: psycopg.AsyncConnection[Any], db_url: str
) -> None:
    async with running() as rx:
        rx.script(Hang())  # the first request is held until the worker dies
        wid = await create_webhook(aconn, rx.url)
        event_id, did = await enqueue(aconn, wid, "user.created", {"user_id": 1})
        env = {
            **os.environ,
            "OUTBOX_DATABASE_URL": db_url,
            "OUTBOX_LEASE": f"{LEASE}s",
            "OUTBOX_WEBHOOK_TIMEOUT": "1.5",
            "OUTBOX_POLL_INTERVAL": "100ms",
            "OUTBOX_RETRY_SCHEDULE": "50ms",
            "OUTBOX_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        }
        proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env)
        try:
            await asyncio.wait_for(rx.arrived.wait(), timeout=15)
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        claimed = await delivery(aconn, did)
        assert claimed["status"] == "pending" and claimed["locked_by"] is not None

        default_lease = DeliverySettings.model_fields["lease"].default
        settings: Settings = fast(db_url, lease=default_lease)
        async with worker(settings) as w:
            w.wake()
            await wait_for(lambda: status_is(aconn, did, "success"), timeout=15)
    first, second = rx.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"evt_{event_id}"
    assert second.at - first.at >= LEASE - 1.0  # not before the lease ran out
    Webhook(TEST_SECRET).verify(second.body, second.headers)
    d = await delivery(aconn, did)
    assert d["attempt_number"] == 1 and d["locked_by"] is None
    [a] = await attempts(aconn, did)  # the killed attempt left no record
    assert a["outcome"] == "success"
