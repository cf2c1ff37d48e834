#!/usr/bin/python3
"""A WebSocket round trip with a real client library (Python `websockets`).

usage: ws_roundtrip.py server          echo server on 127.0.0.1, prints its port
       ws_roundtrip.py client URL N    N echoes then a client close, then a
                                       session the server closes; prints JSON
       ws_roundtrip.py flood URL N SIZE
                                       N binary messages of SIZE bytes sent
                                       while their echoes come back (both
                                       directions busy at once); prints JSON
"""

import asyncio
import json
import os
import sys

import websockets


async def echo(ws, path=None):
    async for msg in ws:
        if msg == "close-me":
            await ws.close(code=1000, reason="server closes")
            return
        await ws.send(msg)


async def server():
    async with websockets.serve(echo, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(url, n):
    out = {}
    async with websockets.connect(url, max_size=2**20) as ws:
        ok = 0
        for i in range(n):
            msg = "message %d " % i + "x" * (i % 200)
            await ws.send(msg)
            if await ws.recv() == msg:
                ok += 1
        out["echoes"] = ok
        await ws.close(code=1000, reason="client closes")
        out["client_close"] = ws.close_code
    async with websockets.connect(url) as ws:
        await ws.send("close-me")
        try:
            await ws.recv()
            out["server_close"] = "no close"
        except websockets.exceptions.ConnectionClosedOK as e:
            out["server_close"] = e.rcvd.code if e.rcvd else None
    print(json.dumps(out), flush=True)


async def flood(url, n, size):
    out = {}
    # Incompressible and uncompressed: every byte crosses the tunnel.
    payload = os.urandom(size - 4)
    async with websockets.connect(url, max_size=2**20, compression=None) as ws:

        async def send():
            for i in range(n):
                await ws.send(i.to_bytes(4, "big") + payload)

        sender = asyncio.create_task(send())
        ok = 0
        try:
            for i in range(n):
                msg = await ws.recv()
                if len(msg) == size and msg[:4] == i.to_bytes(4, "big"):
                    ok += 1
        except websockets.exceptions.ConnectionClosed as e:
            out["closed"] = str(e)
        sender.cancel()
        out["echoes"] = ok
    print(json.dumps(out), flush=True)


if sys.argv[1] == "server":
    asyncio.run(server())
elif sys.argv[1] == "flood":
    # Bounded: a stuck tunnel fails the run instead of hanging it.
    asyncio.run(asyncio.wait_for(flood(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), 60))
else:
    asyncio.run(client(sys.argv[2], int(sys.argv[3])))
