#!/usr/bin/python3
"""A WebSocket round trip with a real client library (Python `websockets`).

usage: ws_roundtrip.py server          echo server on 127.0.0.1, prints its port
       ws_roundtrip.py client URL N    N echoes then a client close, then a
                                       session the server closes; prints JSON
"""

import asyncio
import json
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


if sys.argv[1] == "server":
    asyncio.run(server())
else:
    asyncio.run(client(sys.argv[2], int(sys.argv[3])))
