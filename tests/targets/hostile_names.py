"""Names chosen to break what shows them: a process name, task names, qualnames and file
names with bytes that are not UTF-8, lone surrogates, terminal escapes, newlines, quotes,
backslashes, braces and 10 kB of text.

``python hostile_names.py argv0``: re-executes itself with such an argv[0] (as
``exec -a`` does) and sets its comm (``prctl(PR_SET_NAME)``) to argv[0]'s first 15
bytes (UTF-8, but with an escape and a newline), so that psutil takes the whole
argv[0], a ``\xff`` byte included, as its name.
``python hostile_names.py comm``: only sets a short comm with a ``\xff`` byte, which
makes /proc/PID/status not UTF-8.

Prints READY once every task is parked.
"""

import asyncio
import ctypes
import os
import sys

PR_SET_NAME = 15
ARGV0 = b"\x1b[2J\nfake line!\xff\"}\\\x1b]0;pwned\x07" + b"n" * 10_000
COMM = b"\xff\x1b[31m\n\"}\\\x9b"
# Task names, and the qualname and file name given to the coroutine's code.
TASK_NAMES = ["\x1b[2J\nfake line", 'quote"brace}back\\slash', "surrogate\udcff",
              "bidi\u202eevil", "long" + "x" * 10_000 + "\x1b[31m"]
QUALNAME = "evil\n\"}\\\x1b[31mqual\udcff"
FILENAME = "/tmp/evil\n\"}\\\x1b[2J\udcff" + "f" * 10_000 + ".py"


def set_comm(name: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def announce() -> None:
    loop = asyncio.get_running_loop()

    def tick(n: int) -> None:
        if n:
            loop.call_soon(tick, n - 1)
        else:
            print("READY", flush=True)

    loop.call_soon(tick, 20)


async def parked() -> None:
    await asyncio.sleep(3600)


parked.__code__ = parked.__code__.replace(co_qualname=QUALNAME, co_filename=FILENAME)


async def main() -> None:
    tasks = [asyncio.create_task(parked(), name=name) for name in TASK_NAMES]
    announce()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "argv0" and not os.environ.get("HOSTILE_EXECED"):
        # No PATH: CPython would look the 10 kB argv[0] up in it and fail to start.
        env = {k: v for k, v in os.environ.items() if k != "PATH"}
        env["HOSTILE_EXECED"] = "1"
        os.execve(sys.executable, [ARGV0, "-u", os.path.abspath(__file__), mode], env)
    set_comm(ARGV0 if mode == "argv0" else COMM)
    asyncio.run(main())
