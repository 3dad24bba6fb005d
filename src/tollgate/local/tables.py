"""Create DynamoDB tables from template.yaml's own definitions (one source of truth)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TABLE_RESOURCE_TYPE = "AWS::DynamoDB::Table"
_CREATE_TABLE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
)


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _any_tag)


def repo_root() -> Path:
    """The checkout that holds template.yaml (the local run and tests work from a checkout)."""
    for directory in (Path.cwd(), *Path(__file__).resolve().parents):
        if (directory / "template.yaml").is_file():
            return directory
    raise FileNotFoundError("template.yaml not found above the working directory")


def load_template(path: Path | None = None) -> dict[str, Any]:
    text = (path or repo_root() / "template.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.load(text, Loader=_CloudFormationLoader)
    return loaded


def table_definitions(template: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """CreateTable arguments (without TableName) per logical id, plus `TimeToLiveAttribute`."""
    resources = (template or load_template())["Resources"]
    definitions: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != TABLE_RESOURCE_TYPE:
            continue
        properties = resource["Properties"]
        definition = {key: properties[key] for key in _CREATE_TABLE_KEYS if key in properties}
        ttl = properties.get("TimeToLiveSpecification") or {}
        if ttl.get("Enabled"):
            definition["TimeToLiveAttribute"] = ttl["AttributeName"]
        definitions[logical_id] = definition
    return definitions


def create_tables(client: DynamoDBClient, names: dict[str, str]) -> list[str]:
    """Create each table of `names` (logical id -> table name) that does not exist yet."""
    definitions = table_definitions()
    existing = {
        name
        for page in client.get_paginator("list_tables").paginate()
        for name in page["TableNames"]
    }
    created = []
    for logical_id, table_name in names.items():
        if table_name in existing:
            continue
        definition = dict(definitions[logical_id])
        ttl_attribute = definition.pop("TimeToLiveAttribute", None)
        client.create_table(TableName=table_name, **definition)
        client.get_waiter("table_exists").wait(TableName=table_name)
        if ttl_attribute:
            client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"AttributeName": ttl_attribute, "Enabled": True},
            )
        created.append(table_name)
    return created
