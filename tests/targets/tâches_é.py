"""Non-ASCII strings everywhere: this file's name, a function ``attendre_données``,
a class ``Überwacher`` and tasks named in Latin-1 ("tâche-é"), Cyrillic
("задача-1", UCS-2) and with an emoji ("🚀-fusée", UCS-4).

Expected: those names, and frames whose filename is this file's path.
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


async def attendre_données() -> None:
    await asyncio.sleep(3600)  # ATTENDRE


class Überwacher:
    async def prüfen(self) -> None:
        await attendre_données()  # PRÜFEN


async def main() -> None:
    asyncio.current_task().set_name("principale")
    tasks = [asyncio.create_task(attendre_données(), name="tâche-é"),
             asyncio.create_task(Überwacher().prüfen(), name="задача-1"),
             asyncio.create_task(attendre_données(), name="🚀-fusée")]
    announce()
    await asyncio.gather(*tasks)  # MAIN


asyncio.run(main())
