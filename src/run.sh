#!/bin/sh
# Lambda Web Adapter handler: the adapter starts this script, waits for GET /health on $PORT,
# then proxies every invocation to it as HTTP.
set -eu

task_root="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
PYTHONPATH="${task_root}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONPATH

exec python -m uvicorn --factory tollgate.app:create_app \
    --host 127.0.0.1 --port "${PORT:-8080}" \
    --no-access-log --http httptools --loop uvloop --timeout-keep-alive 60
