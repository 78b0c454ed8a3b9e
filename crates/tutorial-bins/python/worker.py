#!/usr/bin/env python3
"""Tutorial 2, Work queues, with pika: the worker, as RabbitMQ's tutorial writes it.

    python3 worker.py

Takes the tasks of the durable queue task_queue one at a time (prefetch 1), sleeps one
second per '.' in the task, then acknowledges it. Ctrl+C prints "Interrupted".

The broker is AMQP_URL (default amqp://guest:guest@localhost:5672/%2F). MS_PER_DOT (default
1000) sets how long a '.' takes, so that tests need not wait seconds.
"""
import os
import sys
import time

import pika


def main():
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    seconds_per_dot = int(os.environ.get("MS_PER_DOT", "1000")) / 1000
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()

    # Declaring is idempotent: whichever program starts first creates the queue.
    channel.queue_declare(queue="task_queue", durable=True)

    def callback(ch, method, properties, body):
        print(f" [x] Received {body.decode()}")
        time.sleep(body.count(b".") * seconds_per_dot)
        print(" [x] Done")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    # Fair dispatch: no new task before the last one is acknowledged.
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue="task_queue", on_message_callback=callback)

    print(" [*] Waiting for messages. To exit press CTRL+C")
    channel.start_consuming()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("Interrupted")
        try:
            sys.exit(0)
        except SystemExit:
            os._exit(0)
