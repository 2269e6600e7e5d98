"""Awaitables that are not plain coroutines, in the await chain.

- ``legacy``: awaits a generator-based coroutine (``@types.coroutine``) that does
  ``yield from asyncio.sleep()``;
- ``ticket``: awaits an object whose ``__await__`` is a generator (``Ticket.__await__``)
  doing ``yield from`` a future;
- ``delegate``: awaits an object whose ``__await__`` returns a coroutine's
  ``__await__()`` (a coroutine wrapper) over ``delegated()``.

Expected stacks: hold_legacy -> legacy_sleep -> sleep; hold_ticket -> Ticket.__await__;
hold_delegate -> delegated -> sleep.
"""

import asyncio
import types


def announce() -> None:
    """Print READY after a few more loop iterations, once every task is parked."""
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


@types.coroutine
def legacy_sleep():
    yield from asyncio.sleep(3600)  # LEGACY


class Ticket:
    def __init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    def __await__(self):
        return (yield from self.future)  # TICKET


async def delegated() -> None:
    await asyncio.sleep(3600)  # DELEGATED


class Delegate:
    def __await__(self):
        return delegated().__await__()


async def hold_legacy() -> None:
    await legacy_sleep()  # HOLD-LEGACY


async def hold_ticket() -> None:
    await Ticket()  # HOLD-TICKET


async def hold_delegate() -> None:
    await Delegate()  # HOLD-DELEGATE


async def main() -> None:
    asyncio.current_task().set_name("main")
    tasks = [asyncio.create_task(hold_legacy(), name="legacy"),
             asyncio.create_task(hold_ticket(), name="ticket"),
             asyncio.create_task(hold_delegate(), name="delegate")]
    announce()
    await asyncio.gather(*tasks)  # MAIN


asyncio.run(main())
