"""The Ray actors. Importing this package makes uvloop the event loop policy, so
the loop Ray creates for each async actor is a uvloop loop."""

import asyncio

import uvloop

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
