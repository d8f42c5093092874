"""Small asyncio helpers the standard library gets subtly wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def gather_within(timeout_s: float, *aws: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    """``asyncio.gather`` bounded by ``timeout_s`` (TimeoutError past it).

    Not ``wait_for(gather(…))``: when the task waiting is cancelled (a stop, an
    HTTP cleanup), ``wait_for`` cancels the gather and never reads its
    CancelledError, and asyncio prints it with a traceback when the future is
    collected ("exception was never retrieved"), on the console of a command
    that promised one line. Awaiting the gather directly reads it."""
    async with asyncio.timeout(timeout_s):
        return await asyncio.gather(*aws, return_exceptions=return_exceptions)
