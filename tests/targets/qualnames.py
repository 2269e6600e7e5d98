"""Qualified names: a method (``Worker.run`` -> ``Worker._step``), a method of a
nested class (``Service.Poller.poll``), a static and a class method, and a nested
function (``outer`` -> ``outer.<locals>.inner``).
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


class Worker:
    async def run(self) -> None:
        await self._step()  # WORKER-RUN

    async def _step(self) -> None:
        await asyncio.sleep(3600)  # WORKER-STEP

    @staticmethod
    async def static() -> None:
        await asyncio.sleep(3600)  # STATIC

    @classmethod
    async def klass(cls) -> None:
        await asyncio.sleep(3600)  # CLASS


class Service:
    class Poller:
        async def poll(self) -> None:
            await asyncio.sleep(3600)  # POLL


async def outer() -> None:
    async def inner() -> None:
        await asyncio.sleep(3600)  # INNER

    await inner()  # OUTER


async def main() -> None:
    asyncio.current_task().set_name("main")
    tasks = [asyncio.create_task(Worker().run(), name="worker"),
             asyncio.create_task(Worker.static(), name="static"),
             asyncio.create_task(Worker.klass(), name="classmethod"),
             asyncio.create_task(Service.Poller().poll(), name="poller"),
             asyncio.create_task(outer(), name="nested-function")]
    announce()
    await asyncio.gather(*tasks)  # MAIN


asyncio.run(main())
