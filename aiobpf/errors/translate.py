"""What the collector raises, as the errors a user can act on (``aiobpf.errors``).

It sits just above the collector, whose exceptions it names; the daemon and the CLI
read processes through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiobpf.collector import procfs
from aiobpf.collector.layouts import LayoutError
from aiobpf.collector.memory import ProcessGone, ReadDenied, RemoteReadError
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.target import NoAsyncio, NotPython, UnsupportedPython
from aiobpf.errors import (
    AiobpfError,
    NoAsyncioError,
    NotPythonError,
    PermissionDeniedError,
    ProcessExitedError,
    ProcessNotFoundError,
    UnsupportedPythonError,
)


@contextmanager
def translate_errors(pid: int) -> Iterator[None]:
    """Turn what the collector raises into ``AiobpfError``s that say what to do."""
    try:
        yield
    except procfs.ProcessNotFound:
        if procfs.exists(pid):
            raise ProcessExitedError(pid) from None
        raise ProcessNotFoundError(pid) from None
    except ProcessGone:
        raise ProcessExitedError(pid) from None
    except (ReadDenied, PermissionError):
        raise PermissionDeniedError(pid) from None
    except NotPython as exc:
        raise NotPythonError(str(exc)) from None
    except UnsupportedPython as exc:
        raise UnsupportedPythonError(str(exc)) from None
    except NoAsyncio as exc:
        raise NoAsyncioError(str(exc)) from None
    except (RemoteReadError, DecodeError, LayoutError) as exc:
        if not procfs.exists(pid):
            raise ProcessExitedError(pid) from None
        raise AiobpfError(
            f"could not read the asyncio state of process {pid}: {exc}",
            "if the program is changing fast, try again; otherwise please report it with the "
            "output of: aiobpf doctor") from None
