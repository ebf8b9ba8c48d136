"""THE restart test: RabbitMQ's app is stopped and started (``rabbitmqctl stop_app`` /
``start_app``) in the middle of a publish run. Every message whose publish returned is
delivered; publishers and consumers reconnect by themselves.

It disturbs every RabbitMQ user on the machine for a few seconds, so it is short, always
restarts the app (try/finally) and is selected with ``-m rabbitmq``."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from waiting import wait_for

from esbhub.bus.envelope import Envelope
from esbhub.bus.rabbit import RabbitBroker
from esbhub.errors import BrokerUnavailable

pytestmark = pytest.mark.rabbitmq


def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout)


def test_rabbitmq_restart_during_publish_run_loses_no_confirmed_message(rabbit_url, unique):
    broker = RabbitBroker(rabbit_url, exchange=unique, unrouted_queue=f"{unique}.unrouted",
                          connection_name=unique, reconnect_max_interval=1.0, publish_timeout=3)
    q = f"{unique}.q"
    broker.connect()
    broker.declare_queue(q, ["party.v1"])

    confirmed: set[str] = set()
    failed = 0
    delivered: set[str] = set()
    lock = threading.Lock()
    stop_pub, stop_con = threading.Event(), threading.Event()
    phase = {"restarted": False}
    after_restart = {"confirmed": 0, "delivered": 0}

    def publisher(n: int) -> None:
        nonlocal failed
        i = 0
        while not stop_pub.is_set():
            batch = [Envelope.create("party.v1", {"p": n, "i": i + k}, source="restart-test") for k in range(5)]
            i += 5
            try:
                broker.publish_many(batch)
            except BrokerUnavailable:
                with lock:
                    failed += 1
                time.sleep(0.05)
                continue
            with lock:
                confirmed.update(e.id for e in batch)
                if phase["restarted"]:
                    after_restart["confirmed"] += len(batch)
            time.sleep(0.002)

    def on_delivery(d) -> None:
        with lock:
            delivered.add(d.envelope.id)
            if phase["restarted"]:
                after_restart["delivered"] += 1
        d.ack()

    consumer = threading.Thread(target=broker.consume, args=(q, on_delivery),
                                kwargs={"prefetch": 50, "stop": stop_con, "idle_timeout": 0.2})
    pubs = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    consumer.start()
    for t in pubs:
        t.start()
    try:
        wait_for(lambda: len(delivered) > 500, 20, "traffic before the restart")
        try:
            rabbitmqctl("stop_app")
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup", timeout=120)
        with lock:
            phase["restarted"] = True
        wait_for(lambda: after_restart["confirmed"] > 200, 60, "publishers to reconnect and get confirms")
        wait_for(lambda: after_restart["delivered"] > 200, 60, "the consumer to reconnect and get deliveries")
    finally:
        stop_pub.set()
        for t in pubs:
            t.join(30)
    try:
        with lock:
            sent = set(confirmed)
        wait_for(lambda: sent <= delivered, 60, "every confirmed message to be delivered")
        assert not (sent - delivered)
        assert len(sent) > 1000
    finally:
        stop_con.set()
        consumer.join(15)
        broker.delete_queue(q)
        broker.delete_queue(f"{unique}.unrouted")
        broker._control(lambda ch: (ch.exchange_delete(unique), ch.exchange_delete(f"{unique}.unrouted")),
                        what="cleanup")
        broker.close()
