#!/usr/bin/env bash
# 1 server + 2 client processes on loopback; MODE=async for the asynchronous example.
set -e
cd "$(dirname "$0")"
MODE=${MODE:-sync}
PORT=${PORT:-3001}
python server.py --ip 127.0.0.1 --port "$PORT" --world_size 3 --round 3 --mode "$MODE" &
python client.py --ip 127.0.0.1 --port "$PORT" --world_size 3 --rank 1 --mode "$MODE" &
python client.py --ip 127.0.0.1 --port "$PORT" --world_size 3 --rank 2 --mode "$MODE" &
wait
