"""Several threads, each with its own event loop: threads ``loop-1`` and ``loop-2``
run ``worker-N`` (awaiting ``worker-N-child``), the main thread runs ``main``
(awaiting ``main-child``).  READY is followed by a JSON object mapping each loop
("main", "loop-1", "loop-2") to its thread's native id.
"""

import asyncio
import json
import threading

native_ids: dict[str, int] = {}


async def child() -> None:
    await asyncio.sleep(3600)  # CHILD


async def worker(label: str, parked: threading.Event) -> None:
    asyncio.current_task().set_name(f"worker-{label[-1]}")
    native_ids[label] = threading.get_native_id()
    task = asyncio.create_task(child(), name=f"worker-{label[-1]}-child")
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: loop.call_soon(lambda: loop.call_soon(parked.set)))
    await task  # WORKER


def thread_main(label: str, parked: threading.Event) -> None:
    asyncio.run(worker(label, parked))


async def main() -> None:
    asyncio.current_task().set_name("main")
    native_ids["main"] = threading.get_native_id()
    task = asyncio.create_task(child(), name="main-child")
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", json.dumps(native_ids), flush=True)

    loop.call_soon(tick, 20)
    await task  # MAIN


events = []
for label in ("loop-1", "loop-2"):
    parked = threading.Event()
    threading.Thread(target=thread_main, args=(label, parked), name=label, daemon=True).start()
    events.append(parked)
for parked in events:
    parked.wait()
asyncio.run(main())
