"""A Python program that never imports asyncio."""

import time

print("READY", flush=True)
time.sleep(3600)
