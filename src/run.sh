#!/bin/sh
# Lambda Web Adapter handler: the adapter starts this script, waits for GET /health on $PORT,
# then proxies every invocation to it as HTTP.
set -eu

task_root="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
PYTHONPATH="${task_root}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONPATH

# httptools bounds no header size or count: here the function URL bounds the request (see the
# README's "Request limits"); the local run (tollgate.local.run) speaks h11 with limits.
exec python -m uvicorn --factory tollgate.app:create_app \
    --host 127.0.0.1 --port "${PORT:-8080}" \
    --no-access-log --http httptools --loop uvloop --timeout-keep-alive 60
