#!/usr/bin/env python3
"""Tutorial 2, Work queues, with pika: the producer, as RabbitMQ's tutorial writes it.

    python3 new_task.py First message.

Sends its words (default "Hello World!") to the durable queue task_queue as a persistent
message. The broker is AMQP_URL (default amqp://guest:guest@localhost:5672/%2F), so that the
same script runs against RabbitMQ and against mini-broker on another port.
"""
import os
import sys

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()

channel.queue_declare(queue="task_queue", durable=True)

message = " ".join(sys.argv[1:]) or "Hello World!"
channel.basic_publish(
    exchange="",
    routing_key="task_queue",
    body=message,
    properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
)
print(f" [x] Sent {message}")
connection.close()
