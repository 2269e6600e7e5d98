"""Async generators in the await chain.

- ``consumer``: ``async for`` over ``ticks()``, which is suspended in a sleep;
- ``nested``: ``async for`` over ``relay()``, itself iterating ``ticks()``;
- ``anext-default``: ``await anext(ticks(), None)`` (the awaitable ``anext`` returns
  with a default wraps the generator's ``__anext__``).

Expected stacks: consumer -> ticks -> sleep; nested -> relay -> ticks -> sleep;
anext_default -> ticks -> sleep.
"""

import asyncio


def announce() -> None:
    """Print READY after a few more loop iterations, once every task is parked."""
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


async def ticks():
    while True:
        await asyncio.sleep(3600)  # TICKS
        yield 1


async def relay():
    async for item in ticks():  # RELAY
        yield item


async def consumer() -> None:
    async for _ in ticks():  # CONSUMER
        pass


async def nested() -> None:
    async for _ in relay():  # NESTED
        pass


async def anext_default() -> None:
    await anext(ticks(), None)  # ANEXT


async def main() -> None:
    asyncio.current_task().set_name("main")
    tasks = [asyncio.create_task(consumer(), name="consumer"),
             asyncio.create_task(nested(), name="nested"),
             asyncio.create_task(anext_default(), name="anext-default")]
    announce()
    await asyncio.gather(*tasks)  # MAIN


asyncio.run(main())
