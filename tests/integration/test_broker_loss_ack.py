"""A task that finishes after its worker lost the Redis broker does not take the worker down.

Found by the chaos suite (seed 738058, a Redis restart while many short tasks were running): the
task's ack went to the old channel, which the consumer had detached from the lost connection, and
kombu 5.7 raised AttributeError ("'NoneType' object has no attribute 'client'"), which is not among
the connection errors `ack_log_error` tolerates: the worker node exited ("Unrecoverable error").
"""

import logging

from kombu import Connection, Consumer, Producer, Queue

import shared.celery_app  # noqa: F401 (installs the guard)

QUEUE = "dark.test.broker-loss"


def test_acking_on_a_channel_detached_from_its_lost_connection_neither_raises_nor_acks(
    redis_url, caplog
):
    conn = Connection(redis_url)
    try:
        channel = conn.channel()
        queue = Queue(QUEUE, channel=channel)
        queue.declare()
        Producer(channel).publish({"instance": "x"}, routing_key=QUEUE)
        received = []
        Consumer(channel, [queue], callbacks=[lambda _body, m: received.append(m)]).consume()
        conn.drain_events(timeout=5)
        (message,) = received
        # What the consumer leaves behind when the broker connection breaks: the channel detached
        # from its connection, its client pool gone.
        conn.collect()
        channel._pool = None
        assert channel.connection is None

        with caplog.at_level(logging.WARNING):
            message.ack_log_error(
                logging.getLogger("test"), conn.connection_errors + conn.channel_errors
            )

        assert not message.acknowledged  # Redis still holds it: redelivered after the timeout
        assert "broker connection is gone" in caplog.text
    finally:
        conn.release()
