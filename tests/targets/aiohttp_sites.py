"""A real aiohttp server (Debian's python3-aiohttp) whose request handlers wait on a
slow upstream through aiohttp's client, as a service calling its backend does; and
that upstream.  Under load, most handler tasks are suspended in ``call_backend``,
deep inside aiohttp's client (``DataQueue.read``, aiohttp/streams.py).

Usage: aiohttp_sites.py front PORT UPSTREAM_PORT [uvloop]
       aiohttp_sites.py upstream PORT DELAY_S
Prints READY once it listens.
"""

import asyncio
import sys

from aiohttp import ClientSession, web

SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)
DELAY = web.AppKey("delay", float)


async def call_backend(session: ClientSession, url: str) -> str:
    async with session.get(url) as reply:   # handlers wait here
        return await reply.text()


async def handle(request: web.Request) -> web.Response:
    body = await call_backend(request.app[SESSION], request.app[UPSTREAM])
    return web.Response(text=body)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(request.app[DELAY])
    return web.Response(text="ok")


async def client_session(app: web.Application):
    async with ClientSession() as session:
        app[SESSION] = session
        yield


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    role, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    if role == "upstream":
        app[DELAY] = float(sys.argv[3])
        app.router.add_get("/", slow)
    else:
        app[UPSTREAM] = f"http://127.0.0.1:{sys.argv[3]}/"
        app.cleanup_ctx.append(client_session)
        app.router.add_get("/", handle)
    if "uvloop" in sys.argv[4:]:
        import uvloop
        uvloop.run(serve(app, port))
    else:
        asyncio.run(serve(app, port))


main()
