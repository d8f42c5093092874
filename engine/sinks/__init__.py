"""Loopback servers that receive what the engine sends: a real SMTP server
(aiosmtpd), a real webhook receiver (aiohttp) that checks signatures, and a
SendGrid v3 ``mail/send`` look-alike (aiohttp).

The demo, the tests and the benchmark point providers at these. Each counts what
it accepts and can be told to fail, to exercise error mapping and retries.

Run one in its own process (prints one JSON line of counts on SIGTERM/SIGINT)::

    python -m engine.sinks webhook --port 8099 --secret s3cret
    python -m engine.sinks smtp --port 2525
    python -m engine.sinks sendgrid --port 8098 --api-key SG.test
"""

from engine.embedded import free_port
from engine.sinks.http import WebhookSink
from engine.sinks.process import SinkProcess, main
from engine.sinks.sendgrid import SendGridSink
from engine.sinks.smtp import ReceivedMail, SmtpSink

__all__ = ["ReceivedMail", "SendGridSink", "SinkProcess", "SmtpSink", "WebhookSink", "free_port", "main"]
