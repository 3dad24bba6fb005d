from tollgate.local.tables import load_template, table_definitions


def test_definitions_are_read_from_every_table_of_the_template() -> None:
    template = load_template()
    definitions = table_definitions(template)

    tables = {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::DynamoDB::Table"
    }
    assert set(definitions) == set(tables) >= {"UsageTable", "ConversationsTable"}
    for logical_id, properties in tables.items():
        definition = definitions[logical_id]
        assert definition["KeySchema"] == properties["KeySchema"]
        ttl = properties["TimeToLiveSpecification"]["AttributeName"]
        assert definition["TimeToLiveAttribute"] == ttl
        # the stores address every item by these two keys
        assert [k["AttributeName"] for k in definition["KeySchema"]] == ["pk", "sk"]
