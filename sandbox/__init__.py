"""Loopback servers that receive what the engine sends: a real SMTP server
(aiosmtpd), a real webhook receiver (aiohttp) that checks signatures, and a
SendGrid v3 ``mail/send`` look-alike (aiohttp).

The demo, the tests and the benchmark point providers at these. Each counts what
it accepts and can be told to fail, to exercise error mapping and retries.

Run one in its own process (prints one JSON line of counts on SIGTERM/SIGINT)::

    python -m sandbox webhook --port 8099 --secret s3cret
    python -m sandbox smtp --port 2525
    python -m sandbox sendgrid --port 8098 --api-key SG.test
    python -m sandbox otlp --port 4318
"""

from sandbox.http import WebhookSink
from sandbox.ports import free_port
from sandbox.process import SinkProcess, main
from sandbox.sendgrid import SendGridSink
from sandbox.smtp import ReceivedMail, SmtpSink

__all__ = ["ReceivedMail", "SendGridSink", "SinkProcess", "SmtpSink", "WebhookSink", "free_port", "main"]
