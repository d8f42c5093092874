"""Set-up run in every Ray worker process before any actor starts (Ray's
``worker_process_setup_hook``): uvloop becomes the event loop policy, so the loop
Ray creates for each async actor is a uvloop loop. Done per worker process, not
at import, so importing ``actors`` elsewhere changes nothing."""

import asyncio

import uvloop


def setup() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
