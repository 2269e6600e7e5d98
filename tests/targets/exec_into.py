"""An asyncio program that, on SIGUSR1, execs into a program that is not Python
(sleep), keeping its PID.

Usage: exec_into.py; prints READY, then waits for the signal.
"""

import asyncio
import os
import signal


async def waiter() -> None:
    await asyncio.Event().wait()


def become_sleep() -> None:
    os.execv("/bin/sleep", ["sleep", "300"])


async def main() -> None:
    tasks = [asyncio.create_task(waiter(), name=f"w{i}") for i in range(3)]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, become_sleep)
    await asyncio.sleep(0.05)
    print("READY", flush=True)
    await asyncio.gather(*tasks)


asyncio.run(main())
