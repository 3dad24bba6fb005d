import pytest

pytestmark = pytest.mark.integration


def test_tables_created_from_template_match_it(dynamodb, table_names) -> None:
    from tollgate.local.tables import table_definitions

    definitions = table_definitions()
    for logical_id, name in table_names.items():
        described = dynamodb.describe_table(TableName=name)["Table"]
        assert described["KeySchema"] == definitions[logical_id]["KeySchema"]
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert ttl["AttributeName"] == definitions[logical_id]["TimeToLiveAttribute"]
