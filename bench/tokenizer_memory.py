"""What loading an encoding costs in resident memory and time, lean load against tiktoken's.

    python bench/tokenizer_memory.py [--encoding o200k_base] [--runs 3] [--json out.json]

Each measurement runs in a fresh process, first set up like the gateway (tollgate.app
imported and create_app() built with the in-memory store, so openai, boto3, starlette and
pydantic are resident), then loads one encoding two ways:

  standard  tiktoken's own constructor (tiktoken_ext.openai_public) from a TIKTOKEN_CACHE_DIR,
            as tiktoken.get_encoding does: the Encoding keeps its Python dict of ranks
  lean      tollgate.adapters.tokenizer.get_encoding: the vendored file parsed line by line,
            the Python ranks dropped once the Rust CoreBPE is built, freed pages trimmed

and reports, from /proc/self/status, VmRSS before and after the load, VmHWM (the peak so
far, what Lambda reports as "Max Memory Used") and the load's wall and CPU time. Medians of
--runs processes. Measurement only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

CHILD_SCRIPT = r"""
import gzip, hashlib, json, resource, sys, time

def status_mb():
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values

def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

mode, name, cache_dir = sys.argv[1:4]
from tollgate.app import create_app
create_app()
import tiktoken
from tiktoken_ext import openai_public
from tollgate.adapters import tokenizer
if mode == "standard":
    # tiktoken looks for the file under the sha1 of its download URL: put the vendored copy there
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    packed = tokenizer.ENCODING_FILES[name].path(name).read_bytes()
    target = f"{cache_dir}/{hashlib.sha1(url.encode()).hexdigest()}"
    with open(target, "wb") as handle:
        handle.write(gzip.decompress(packed))
    del packed
before = status_mb()
wall, cpu = time.perf_counter(), cpu_s()
if mode == "standard":
    encoding = tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())
else:
    encoding = tokenizer.get_encoding(name)
wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
encoding.encode_ordinary("warm the regex")
after = status_mb()
print(json.dumps({
    "rss_before_mb": before["VmRSS"], "rss_after_mb": after["VmRSS"],
    "peak_mb": after["VmHWM"], "load_ms": wall * 1000, "load_cpu_ms": cpu * 1000,
}))
"""


def gateway_env(cache_dir: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        STORE_BACKEND="memory",
        USAGE_TABLE="bench-usage",
        CONVERSATIONS_TABLE="bench-conversations",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        OPENAI_API_KEY="bench-offline-key",
        JWT_SECRET="bench-secret-of-at-least-32-bytes!!",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        TIKTOKEN_CACHE_DIR=cache_dir,
        POWERTOOLS_METRICS_NAMESPACE="Tollgate",
        POWERTOOLS_SERVICE_NAME="tollgate",
    )
    return env


def measure(mode: str, encoding: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tiktoken-cache-") as cache_dir:
        completed = subprocess.run(
            [sys.executable, "-c", CHILD_SCRIPT, mode, encoding, cache_dir],
            env=gateway_env(cache_dir),
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} load failed:\n{completed.stderr}")
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def compare(encoding: str = "o200k_base", runs: int = 3) -> dict[str, Any]:
    """Medians of `runs` fresh processes per way of loading, interleaved so that a busy
    machine slows both alike."""
    samples: dict[str, list[dict[str, float]]] = {"standard": [], "lean": []}
    for _ in range(runs):
        for mode, measured in samples.items():
            measured.append(measure(mode, encoding))
    results: dict[str, Any] = {"encoding": encoding, "runs": runs, "modes": {}}
    for mode, measured in samples.items():
        median = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
        median["added_mb"] = median["rss_after_mb"] - median["rss_before_mb"]
        results["modes"][mode] = median
    return results


def render(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Loading the encoding",
        "",
        f"{results['encoding']} loaded in a fresh process after the gateway's own set-up "
        "(bench/tokenizer_memory.py): `standard` is tiktoken's constructor, which keeps its "
        "Python dict of ranks beside the Rust maps; `lean` is the gateway's (the ranks dropped "
        f"once the CoreBPE is built, freed pages trimmed). Median of {results['runs']}.",
        "",
        "| load | RSS before MB | RSS after MB | added MB | peak MB | load ms | CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, m in results["modes"].items():
        lines.append(
            f"| {mode} | {m['rss_before_mb']:.1f} | {m['rss_after_mb']:.1f} | "
            f"{m['added_mb']:.1f} | {m['peak_mb']:.1f} | {m['load_ms']:.0f} | "
            f"{m['load_cpu_ms']:.0f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoding", default="o200k_base")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = compare(args.encoding, args.runs)
    print("\n".join(render(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
