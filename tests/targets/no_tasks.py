"""A Python program that imports asyncio but runs no event loop (no tasks)."""

import asyncio  # noqa: F401
import time

print("READY", flush=True)
time.sleep(3600)
