"""Every AWS call in the code has its permission in template.yaml, on the right resource of the
right function, and nothing else is granted.

The calls are read statically from src/: each module reachable by imports from a function's
entry point is parsed, and every boto3 operation it names — `client.put_item(...)`,
`partial(client.batch_write_item, ...)`, `db.call("UpdateItem", ...)`,
`get_paginator("...")`, the items of a `transact_write_items` — becomes the IAM action of
that operation (botocore's own service models name them), on the resource the enclosing
adapter class works on.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from tollgate.local.tables import load_template, repo_root

SOURCE = repo_root() / "src"
# The module each function starts from (run.sh execs uvicorn on the chat app).
ENTRY_POINTS = {
    "ChatFunction": "tollgate.app",
    "AggregatorFunction": "tollgate.aggregation.handler",
}
# IAM prefix of each service the code may call (botocore name -> IAM prefix).
SERVICES = {"dynamodb": "dynamodb", "logs": "logs", "cloudwatch": "cloudwatch", "sns": "sns"}
# The resource each adapter class works on; a class not listed here fails the test.
RESOURCES: dict[str, tuple[str, Any]] = {
    "DynamoUsageStore": ("dynamodb", {"GetAtt": "UsageTable.Arn"}),
    "DynamoRequestRegistry": ("dynamodb", {"GetAtt": "UsageTable.Arn"}),
    "AlertLatch": ("dynamodb", {"GetAtt": "UsageTable.Arn"}),
    "SnsNotifier": ("sns", {"Ref": "AlarmTopic"}),
    "DynamoConversationStore": ("dynamodb", {"GetAtt": "ConversationsTable.Arn"}),
    "DynamoReplyCache": ("dynamodb", {"GetAtt": "ConversationsTable.Arn"}),
    "RollupStore": ("dynamodb", {"GetAtt": "RollupsTable.Arn"}),
    "UserSettledSpend": ("dynamodb", {"Sub": "${UsageTable.Arn}/index/by-day"}),
    "GlobalShardCounters": ("dynamodb", {"GetAtt": "UsageTable.Arn"}),
    "CostLogReader": ("logs", {"GetAtt": "ChatFunctionLogGroup.Arn"}),
    "MetricsPublisher": ("cloudwatch", "*"),
}
# A transaction is authorised through the actions of its items.
TRANSACTION_ITEMS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


@dataclass(frozen=True)
class Grant:
    action: str
    resource: str  # canonical JSON of the template's resource expression

    @staticmethod
    def of(action: str, resource: Any) -> Grant:
        return Grant(action, json.dumps(resource, sort_keys=True))


def operations() -> dict[str, set[tuple[str, str]]]:
    """snake_case operation name -> {(service, OperationName)} from botocore's models."""
    session = botocore.session.get_session()
    found: dict[str, set[tuple[str, str]]] = {}
    for service in SERVICES:
        for name in session.get_service_model(service).operation_names:
            found.setdefault(xform_name(name), set()).add((service, name))
    return found


def module_path(module: str) -> Path | None:
    base = SOURCE / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def runtime_imports(tree: ast.Module) -> Iterator[str]:
    """Modules imported anywhere (functions included), except under `if TYPE_CHECKING:`."""
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and ast.unparse(branch.test) == "TYPE_CHECKING"
        for child in branch.body
        for node in ast.walk(child)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def reachable(entry: str) -> dict[str, ast.Module]:
    trees: dict[str, ast.Module] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        path = module_path(module)
        if module in trees or path is None or not module.startswith("tollgate"):
            continue
        trees[module] = ast.parse(path.read_text(encoding="utf-8"))
        pending.extend(runtime_imports(trees[module]))
    return trees


def enclosing_classes(tree: ast.Module) -> dict[int, str]:
    owner: dict[int, str] = {}
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for node in ast.walk(cls):
            owner[id(node)] = cls.name
    return owner


def called_operations(tree: ast.Module, known: set[str]) -> Iterator[tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("call", "_call", "get_paginator")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and xform_name(node.args[0].value) in known
        ):
            yield node, xform_name(node.args[0].value)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in known
            and re.search("client", ast.unparse(node.value), re.IGNORECASE)
        ):
            yield node, node.attr


def transaction_actions(tree: ast.Module) -> set[str]:
    return {
        TRANSACTION_ITEMS[key.value]
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and key.value in TRANSACTION_ITEMS
    }


def needed_grants(function: str) -> tuple[set[Grant], bool]:
    """(the grants the reachable code needs, whether it reads Secrets Manager)."""
    known = operations()
    needed: set[Grant] = set()
    reads_secrets = False
    for module, tree in reachable(ENTRY_POINTS[function]).items():
        reads_secrets |= "SecretsProvider" in ast.unparse(tree)
        owners = enclosing_classes(tree)
        for node, operation in called_operations(tree, set(known)):
            owner = owners.get(id(node))
            assert owner in RESOURCES, f"{module}: {operation} in {owner}: add it to RESOURCES"
            service, resource = RESOURCES[owner]
            (name,) = [name for svc, name in known[operation] if svc == service]
            if name == "TransactWriteItems":
                needed |= {Grant.of(f"dynamodb:{a}", resource) for a in transaction_actions(tree)}
            else:
                needed.add(Grant.of(f"{SERVICES[service]}:{name}", resource))
    return needed, reads_secrets


def statements(function: str) -> list[dict[str, Any]]:
    resource = load_template()["Resources"][function]
    found = []
    for policy in resource["Properties"]["Policies"]:
        for statement in policy["Statement"]:
            if "If" in statement:  # conditional statement: [condition, statement, NoValue]
                statement = statement["If"][1]
            found.append(statement)
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def granted(function: str) -> set[Grant]:
    return {
        Grant.of(action, resource)
        for statement in statements(function)
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }


@pytest.mark.parametrize("function", sorted(ENTRY_POINTS))
def test_every_call_is_granted_and_every_grant_is_used(function: str) -> None:
    needed, _ = needed_grants(function)
    assert needed, "the scan found no AWS call at all: the scanner is broken"
    grants = {g for g in granted(function) if g.action.split(":")[0] in SERVICES.values()}
    assert needed - grants == set(), "calls without a permission"
    assert grants - needed == set(), "permissions the code never uses"


@pytest.mark.parametrize("function", sorted(ENTRY_POINTS))
def test_secrets_are_granted_exactly_when_they_are_read(function: str) -> None:
    _, reads_secrets = needed_grants(function)
    actions = {grant.action for grant in granted(function)}
    assert ("secretsmanager:GetSecretValue" in actions) == reads_secrets
    assert ("kms:Decrypt" in actions) == reads_secrets


def test_every_granted_action_exists() -> None:
    """`dynamodb:TransactWriteItems`, for one, is not an IAM action."""
    session = botocore.session.get_session()
    prefixes = {**SERVICES, "secretsmanager": "secretsmanager", "kms": "kms"}
    existing = {
        f"{prefix}:{name}"
        for service, prefix in prefixes.items()
        for name in session.get_service_model(service).operation_names
    } - {"dynamodb:TransactWriteItems", "dynamodb:TransactGetItems"}
    for function in ENTRY_POINTS:
        for grant in granted(function):
            assert grant.action in existing, grant


def test_the_entry_points_are_the_template_handlers() -> None:
    resources = load_template()["Resources"]
    assert resources["ChatFunction"]["Properties"]["Handler"] == "run.sh"
    assert "tollgate.app:create_app" in (SOURCE / "run.sh").read_text(encoding="utf-8")
    handler = resources["AggregatorFunction"]["Properties"]["Handler"]
    assert handler.rsplit(".", 1)[0] == ENTRY_POINTS["AggregatorFunction"]
