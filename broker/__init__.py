"""The broker port and its adapters: RabbitMQ (aio-pika) and the in-process broker."""
