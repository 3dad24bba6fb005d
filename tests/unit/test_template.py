"""template.yaml keeps the deployment shape of docs/CONTRACTS.md and matches what the app reads."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.local.tables import load_template
from tollgate.settings import Settings

# Read by the app but deliberately absent from the deployed function's environment.
NOT_DEPLOYED_SETTINGS = {
    "openai_api_key",  # the key lives in Secrets Manager (OPENAI_API_KEY_SECRET_ARN)
    "jwt_secret",  # likewise (JWT_SECRET_ARN)
    "dynamodb_timeout_s",  # tuning knobs with safe defaults, not part of the contract
    "dynamodb_max_attempts",
    "secret_max_age_s",
    "price_table_path",
    "prompts_dir",
    "store_backend",  # "memory" is for benchmarks; a deployment always uses DynamoDB
}
# Read by the Lambda Web Adapter or Powertools, not by Settings.
PLATFORM_VARIABLES = {
    "AWS_LAMBDA_EXEC_WRAPPER",
    "AWS_LWA_INVOKE_MODE",
    "AWS_LWA_READINESS_CHECK_PATH",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
# What settling the budget and storing the turn may take after a reply (and its summary).
SETTLE_AND_STORE_MARGIN_S = 30


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def chat_function(template: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = template["Resources"]["ChatFunction"]
    assert function["Type"] == "AWS::Serverless::Function"
    return function


@pytest.fixture(scope="module")
def chat_environment(template: dict[str, Any], chat_function: dict[str, Any]) -> dict[str, Any]:
    """The chat function's variables merged over the Globals', as SAM does."""
    global_variables = template["Globals"]["Function"]["Environment"]["Variables"]
    function_variables = chat_function["Properties"]["Environment"]["Variables"]
    return {**global_variables, **function_variables}


def _parameter_of(value: Any) -> str | None:
    """The parameter behind `!Ref P`, or behind `!If [HasP, !Ref P, !Ref AWS::NoValue]`."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "If" in value:
        _condition, when_true, when_false = value["If"]
        if when_false == {"Ref": "AWS::NoValue"}:
            return _parameter_of(when_true)
    return None


def test_runtime_and_architecture(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]


def test_chat_function_is_built_by_the_makefile(chat_function: dict[str, Any]) -> None:
    assert chat_function["Metadata"]["BuildMethod"] == "makefile"
    properties = chat_function["Properties"]
    assert properties["CodeUri"] == "src/"
    assert properties["Handler"] == "run.sh"
    assert properties["MemorySize"] >= 1024


def test_web_adapter_layer_version_is_a_parameter(
    template: dict[str, Any], chat_function: dict[str, Any]
) -> None:
    (layer,) = chat_function["Properties"]["Layers"]
    assert layer == {
        "Sub": "arn:aws:lambda:${AWS::Region}:753240598075:layer:LambdaAdapterLayerArm64:"
        "${LambdaAdapterLayerVersion}"
    }
    assert str(template["Parameters"]["LambdaAdapterLayerVersion"]["Default"]) == "25"


def test_web_adapter_streams_and_checks_health(chat_environment: dict[str, Any]) -> None:
    assert chat_environment["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert chat_environment["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert chat_environment["AWS_LWA_READINESS_CHECK_PATH"] == "/health"
    assert str(chat_environment["PORT"]) == "8080"


def test_powertools_environment(chat_environment: dict[str, Any]) -> None:
    assert chat_environment["POWERTOOLS_SERVICE_NAME"] == "tollgate"
    assert chat_environment["POWERTOOLS_METRICS_NAMESPACE"] == "Tollgate"
    assert "POWERTOOLS_LOG_LEVEL" in chat_environment


def test_function_url_streams(chat_function: dict[str, Any]) -> None:
    url_config = chat_function["Properties"]["FunctionUrlConfig"]
    assert url_config["InvokeMode"] == "RESPONSE_STREAM"
    assert "Cors" not in url_config, "CORS is configured in one place only: the app"


def test_one_parameter_sets_auth_mode_and_url_auth_type(
    template: dict[str, Any], chat_function: dict[str, Any], chat_environment: dict[str, Any]
) -> None:
    assert template["Parameters"]["AuthMode"]["AllowedValues"] == ["jwt", "iam"]
    assert chat_environment["AUTH_MODE"] == {"Ref": "AuthMode"}
    assert template["Conditions"]["UseIamAuth"] == {"Equals": [{"Ref": "AuthMode"}, "iam"]}
    auth_type = chat_function["Properties"]["FunctionUrlConfig"]["AuthType"]
    assert auth_type == {"If": ["UseIamAuth", "AWS_IAM", "NONE"]}


def test_open_url_has_its_public_permissions(template: dict[str, Any]) -> None:
    """SAM adds none for an intrinsic AuthType, so the template must declare both."""
    permissions = [
        resource
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Permission"
        and resource["Properties"]["FunctionName"] == {"Ref": "ChatFunction"}
    ]
    actions = {permission["Properties"]["Action"] for permission in permissions}
    assert actions == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    for permission in permissions:
        assert permission["Condition"] == "UsePublicUrl"
        assert permission["Properties"]["Principal"] == "*"
    assert template["Conditions"]["UsePublicUrl"] == {"Not": [{"Condition": "UseIamAuth"}]}


def test_every_setting_the_app_reads_is_deployed(chat_environment: dict[str, Any]) -> None:
    deployed = {name.lower() for name in chat_environment}
    expected = set(Settings.model_fields) - NOT_DEPLOYED_SETTINGS
    missing = expected - deployed
    assert missing == set(), "set them in template.yaml, or list them in NOT_DEPLOYED_SETTINGS"


def test_every_deployed_variable_is_read(chat_environment: dict[str, Any]) -> None:
    unknown = {
        name
        for name in chat_environment
        if name not in PLATFORM_VARIABLES and name.lower() not in Settings.model_fields
    }
    assert unknown == set()


def test_configuration_comes_from_parameters(
    template: dict[str, Any], chat_environment: dict[str, Any]
) -> None:
    parameters = template["Parameters"]
    for variable, parameter in {
        "MODEL_CHAIN": "ModelChain",
        "SUMMARY_MODEL": "SummaryModel",
        "MAX_OUTPUT_TOKENS": "MaxOutputTokens",
        "MAX_INPUT_TOKENS": "MaxInputTokens",
        "DAILY_TOKEN_LIMIT": "DailyTokenLimit",
        "DAILY_COST_LIMIT_USD": "DailyCostLimitUsd",
        "CONVERSATION_TOKEN_LIMIT": "ConversationTokenLimit",
        "HISTORY_TOKEN_TARGET": "HistoryTokenTarget",
        "STREAM_TIMEOUT_S": "StreamTimeoutS",
        "SUMMARY_TIMEOUT_S": "SummaryTimeoutS",
        "OPENAI_TIMEOUT_S": "OpenAITimeoutS",
        "UPSTREAM_FIRST_BYTE_TIMEOUT_S": "UpstreamFirstByteTimeoutS",
        "UPSTREAM_CAP_PARAMETER": "UpstreamCapParameter",
        "REASONING_EFFORT": "ReasoningEffort",
        "RATE_LIMIT_PER_MINUTE": "RateLimitPerMinute",
        "CONVERSATION_TTL_DAYS": "ConversationTtlDays",
        "CANCEL_POLL_S": "CancelPollS",
        "CORS_ALLOW_ORIGINS": "CorsAllowOrigins",
        "AUTH_MODE": "AuthMode",
        "JWT_SECRET_ARN": "JwtSecretArn",
        "JWT_ISSUER": "JwtIssuer",
        "JWT_AUDIENCE": "JwtAudience",
        "JWKS_URL": "JwksUrl",
        "OPENAI_BASE_URL": "OpenAIBaseUrl",
    }.items():
        assert _parameter_of(chat_environment[variable]) == parameter, variable
        assert parameter in parameters


def test_defaults_match_the_settings_defaults(
    template: dict[str, Any], chat_environment: dict[str, Any]
) -> None:
    parameters = template["Parameters"]
    compared = set()
    for variable, value in chat_environment.items():
        parameter = _parameter_of(value)
        field = Settings.model_fields.get(variable.lower())
        if parameter not in parameters or field is None or field.default is None:
            continue
        default = parameters[parameter]["Default"]
        if isinstance(field.default, tuple):
            assert tuple(part for part in str(default).split(",") if part) == field.default
        else:
            assert type(field.default)(default) == field.default, variable
        compared.add(variable)
    assert {"MODEL_CHAIN", "DAILY_TOKEN_LIMIT", "STREAM_TIMEOUT_S", "AUTH_MODE"} <= compared


def test_optional_settings_are_left_unset_when_empty(chat_environment: dict[str, Any]) -> None:
    """An empty string is not "unset" to pydantic: e.g. DAILY_COST_LIMIT_USD="" fails to parse."""
    for variable in ("DAILY_COST_LIMIT_USD", "JWT_SECRET_ARN", "JWT_ISSUER", "JWKS_URL"):
        assert "If" in chat_environment[variable], variable


def test_the_longest_request_fits_in_the_function_timeout(
    template: dict[str, Any], chat_function: dict[str, Any]
) -> None:
    # Given the largest values the parameters allow
    parameters = template["Parameters"]
    stream, summary = parameters["StreamTimeoutS"], parameters["SummaryTimeoutS"]
    # Then the stream, a summary call and settling/storing fit in the function's timeout
    longest = stream["MaxValue"] + summary["MaxValue"] + SETTLE_AND_STORE_MARGIN_S
    assert longest <= chat_function["Properties"]["Timeout"]
    # And an upstream attempt cannot be configured longer than the stream
    assert parameters["OpenAITimeoutS"]["MaxValue"] <= stream["MaxValue"]
    for parameter in (stream, summary, parameters["OpenAITimeoutS"]):
        assert parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]


def test_cancel_polling_has_a_floor(template: dict[str, Any]) -> None:
    cancel_poll = template["Parameters"]["CancelPollS"]
    assert cancel_poll["MinValue"] >= 0.5
    assert cancel_poll["MinValue"] <= cancel_poll["Default"] <= cancel_poll["MaxValue"]


@pytest.mark.parametrize(
    "resource", ["UsageTable", "ConversationsTable", "RollupsTable", "ChatFunctionLogGroup"]
)
def test_data_outlives_the_stack(template: dict[str, Any], resource: str) -> None:
    definition = template["Resources"][resource]
    assert definition["DeletionPolicy"] == "Retain"
    assert definition["UpdateReplacePolicy"] == "Retain"


def test_metrics_namespace_is_one_value_everywhere(template: dict[str, Any]) -> None:
    from tollgate.aggregation.handler import AGGREGATOR_SERVICE
    from tollgate.observability import METRICS_NAMESPACE, SERVICE

    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    assert variables["POWERTOOLS_SERVICE_NAME"] == SERVICE
    aggregator = template["Resources"]["AggregatorFunction"]["Properties"]
    assert aggregator["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == AGGREGATOR_SERVICE
    namespaces: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("Namespace", "cloudwatch:namespace") and isinstance(value, str):
                    namespaces.append(value)
                collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(template["Resources"])
    assert namespaces
    assert set(namespaces) - {"AWS/Lambda"} == {METRICS_NAMESPACE}


def test_reserved_concurrency_is_optional(
    template: dict[str, Any], chat_function: dict[str, Any]
) -> None:
    reserved = chat_function["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == {
        "If": ["HasReservedConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Parameters"]["ReservedConcurrency"]["Default"] == ""


def test_secrets_are_least_privilege(chat_function: dict[str, Any]) -> None:
    (policy,) = chat_function["Properties"]["Policies"]
    statements = {
        statement["Sid"]: statement for statement in policy["Statement"] if "Sid" in statement
    }
    secrets = statements["Secrets"]
    assert secrets["Action"] == "secretsmanager:GetSecretValue"
    key_secret, jwt_secret = secrets["Resource"]
    assert key_secret == {
        "If": [
            "CreateOpenAIApiKeySecret",
            {"Ref": "OpenAIApiKeySecret"},
            {"Ref": "OpenAIApiKeySecretArn"},
        ]
    }
    assert _parameter_of(jwt_secret) == "JwtSecretArn"


def test_kms_decrypt_only_for_a_customer_managed_key(
    template: dict[str, Any], chat_function: dict[str, Any]
) -> None:
    (policy,) = chat_function["Properties"]["Policies"]
    (conditional,) = [statement for statement in policy["Statement"] if "If" in statement]
    condition, statement, otherwise = conditional["If"]
    assert condition == "HasSecretsKmsKey"
    assert template["Conditions"]["HasSecretsKmsKey"] == {
        "Not": [{"Equals": [{"Ref": "SecretsKmsKeyArn"}, ""]}]
    }
    assert template["Parameters"]["SecretsKmsKeyArn"]["Default"] == ""
    assert statement["Action"] == "kms:Decrypt"
    assert statement["Resource"] == {"Ref": "SecretsKmsKeyArn"}
    via = statement["Condition"]["StringEquals"]["kms:ViaService"]
    assert via == {"Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
    assert otherwise == {"Ref": "AWS::NoValue"}


def test_key_secret_is_created_only_when_no_arn_is_given(
    template: dict[str, Any], chat_environment: dict[str, Any]
) -> None:
    secret = template["Resources"]["OpenAIApiKeySecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Condition"] == "CreateOpenAIApiKeySecret"
    assert template["Conditions"]["CreateOpenAIApiKeySecret"] == {
        "Equals": [{"Ref": "OpenAIApiKeySecretArn"}, ""]
    }
    assert "If" in chat_environment["OPENAI_API_KEY_SECRET_ARN"]


def test_chat_function_logs_to_its_declared_group(
    template: dict[str, Any], chat_function: dict[str, Any], chat_environment: dict[str, Any]
) -> None:
    log_group = template["Resources"]["ChatFunctionLogGroup"]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert log_group["Properties"]["LogGroupName"]["Sub"].startswith("/aws/lambda/")
    assert chat_function["Properties"]["LoggingConfig"] == {
        "LogGroup": {"Ref": "ChatFunctionLogGroup"}
    }
    assert chat_environment["COST_LOG_GROUP"] == {"Ref": "ChatFunctionLogGroup"}


@pytest.mark.parametrize("table", ["UsageTable", "ConversationsTable"])
def test_tables_have_pitr_and_ttl(template: dict[str, Any], table: str) -> None:
    properties = template["Resources"][table]["Properties"]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }
    assert properties["BillingMode"] == "PAY_PER_REQUEST"


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["ChatFunctionUrl"]["Value"] == {"GetAtt": "ChatFunctionUrl.FunctionUrl"}
    assert outputs["UsageTableName"]["Value"] == {"Ref": "UsageTable"}
    assert outputs["ConversationsTableName"]["Value"] == {"Ref": "ConversationsTable"}
    assert outputs["ChatFunctionLogGroupName"]["Value"] == {"Ref": "ChatFunctionLogGroup"}
