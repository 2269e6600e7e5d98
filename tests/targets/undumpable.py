"""An asyncio program that makes itself non-dumpable (prctl PR_SET_DUMPABLE 0):
only a reader with CAP_SYS_PTRACE may read its memory."""

import asyncio
import ctypes

PR_SET_DUMPABLE = 4


async def main() -> None:
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    print("READY", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
