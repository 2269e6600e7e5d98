"""aiobpf: every asyncio task of a running CPython process, its stack and its awaiters."""

__version__ = "0.1.0"
