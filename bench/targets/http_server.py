"""A small realistic asyncio service: an HTTP/1.1 keep-alive server on asyncio streams.

Each request is parsed, a JSON body is built (with a little work and an await on
another coroutine), and sent.  Usage: http_server.py PORT.  Prints READY; each line
read on stdin is answered with "REQUESTS CPU_SECONDS" so far.
"""

import asyncio
import json
import sys
import time

served = 0


async def render(path: str) -> bytes:
    await asyncio.sleep(0)
    body = {"path": path, "items": [{"id": i, "name": f"item-{i}"} for i in range(20)]}
    return json.dumps(body).encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global served
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode()
            body = await render(path)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("READY", flush=True)
    async with server:
        while await reader.readline():
            print(served, time.process_time(), flush=True)


asyncio.run(main(int(sys.argv[1])))
