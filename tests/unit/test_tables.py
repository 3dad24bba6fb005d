from tollgate.local.tables import table_definitions


def test_template_defines_both_tables_with_ttl() -> None:
    definitions = table_definitions()

    assert set(definitions) >= {"UsageTable", "ConversationsTable"}
    for definition in definitions.values():
        assert definition["TimeToLiveAttribute"] == "expires_at"
        assert [k["AttributeName"] for k in definition["KeySchema"]] == ["pk", "sk"]
