"""What a running gateway keeps out of its memory (docs/BENCHMARKS.md's resident memory).

Each package below is imported only where it is needed: PyJWT and `cryptography` for JWKS
keys (10 MB), boto3 over botocore (2.3 MB), pydantic-settings (not a dependency). A fresh
process builds the app as Lambda does and lists what it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

UNNEEDED = ["jwt", "cryptography", "boto3", "pydantic_settings"]
SCRIPT = (
    "import json, sys\n"
    "from tollgate.app import create_app\n"
    "create_app()\n"
    f"print(json.dumps([m for m in {UNNEEDED!r} if m in sys.modules]))\n"
)


@pytest.mark.parametrize("store", ["memory", "dynamodb"])
def test_a_shared_secret_gateway_imports_none_of_the_packages_it_does_not_use(store: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JWKS"))},
        "STORE_BACKEND": store,
        "USAGE_TABLE": "usage",
        "CONVERSATIONS_TABLE": "conversations",
        "JWT_SECRET": "resident-" + "s" * 48,
        "OPENAI_API_KEY": "unused",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
