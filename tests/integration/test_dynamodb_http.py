"""The gateway's DynamoDB client against a scripted HTTP server on 127.0.0.1.

Each test scripts what the "DynamoDB" answers, request by request, and checks what the
client sent, how often, on which connections, and what it returned or raised: botocore's
standard retry mode, its error shapes, its kept idempotency token, over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from tests.servers import free_port
from tollgate.adapters.dynamodb_http import AsyncDynamoDB, Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"


@dataclass
class Received:
    connection: int
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ScriptedDynamoDB:
    """Answers each request with the next scripted step; records every request."""

    steps: list[tuple[Any, ...]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    closed_by_client: list[int] = field(default_factory=list)
    url: str = ""
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def answer(self, status: int, body: dict[str, Any], **headers: str) -> None:
        self.steps.append(("answer", status, json.dumps(body).encode(), headers))

    def error(self, status: int, code: str, **fields: Any) -> None:
        self.answer(status, {"__type": TYPE_PREFIX + code, "message": f"{code}!", **fields})

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:-2]
                headers = {
                    name.lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines)
                }
                body = await reader.readexactly(int(headers["content-length"]))
                self.received.append(Received(number, headers, json.loads(body)))
                step = self.steps.pop(0) if self.steps else ("answer", 200, b"{}", {})
                if step[0] == "close":
                    writer.close()
                    return
                if step[0] == "hang":
                    await asyncio.sleep(step[1])
                    continue
                _, status, payload, extra = step
                checksum = extra.pop("crc", str(zlib.crc32(payload)))
                response = (
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.0\r\n"
                    f"x-amz-crc32: {checksum}\r\nx-amzn-requestid: r{len(self.received)}\r\n"
                    f"content-length: {len(payload)}\r\n"
                    + "".join(f"{name}: {value}\r\n" for name, value in extra.items())
                    + "\r\n"
                ).encode() + payload
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.append(number)

    def close_idle_connections(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedDynamoDB]:
    dynamodb = ScriptedDynamoDB()
    server = await asyncio.start_server(dynamodb.serve, "127.0.0.1", 0)
    dynamodb.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield dynamodb
        dynamodb.close_idle_connections()


def client_of(url: str, *, timeout_s: float = 2.0, max_attempts: int = 3) -> AsyncDynamoDB:
    return AsyncDynamoDB(
        Endpoint(url, "us-east-1"),
        Credentials("AKID", "secret", "token"),
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        max_attempts=max_attempts,
    )


GET = {"TableName": "t", "Key": {"pk": {"S": "a"}, "sk": {"S": "b"}}}


async def test_a_call_sends_the_signed_operation_and_returns_botocores_shape(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a server that has the item
    scripted.answer(200, {"Item": {"pk": {"S": "a"}, "n": {"N": "7"}}})
    client = client_of(scripted.url)

    # When it is read
    response = await client.call("GetItem", GET)

    # Then the answer is botocore's dict, and the request was DynamoDB's wire format, signed
    assert response["Item"] == {"pk": {"S": "a"}, "n": {"N": "7"}}
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    sent = scripted.received[0]
    assert sent.body == GET
    assert sent.headers["x-amz-target"] == "DynamoDB_20120810.GetItem"
    assert sent.headers["content-type"] == "application/x-amz-json-1.0"
    assert sent.headers["x-amz-security-token"] == "token"
    assert sent.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")


async def test_calls_share_one_kept_alive_connection(scripted: ScriptedDynamoDB) -> None:
    client = client_of(scripted.url)
    for _ in range(5):
        await client.call("GetItem", GET)
    assert [received.connection for received in scripted.received] == [1] * 5


async def test_a_condition_failure_is_a_client_error_with_the_old_item_on_top(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a conditional write that fails, the old item returned
    old = {"pk": {"S": "a"}, "tokens": {"N": "5"}}
    scripted.error(400, "ConditionalCheckFailedException", Item=old)

    # When it is sent, Then it fails once, not retried, shaped as botocore shapes it
    with pytest.raises(ClientError) as raised:
        await client_of(scripted.url).call("UpdateItem", GET)
    response = raised.value.response
    assert response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert response["Error"]["Message"] == "ConditionalCheckFailedException!"
    assert response["Item"] == old  # type: ignore[typeddict-item]
    assert raised.value.operation_name == "UpdateItem"
    assert len(scripted.received) == 1


async def test_a_cancelled_transaction_carries_its_reasons_and_keeps_its_token(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a transaction whose first try meets a 500 and whose second is cancelled
    scripted.error(500, "InternalServerError")
    reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"}]
    scripted.error(400, "TransactionCanceledException", CancellationReasons=reasons)

    # When it is sent
    with pytest.raises(ClientError) as raised:
        await client_of(scripted.url).call("TransactWriteItems", {"TransactItems": []})

    # Then both tries carried the same idempotency token, and the reasons came back on top
    tokens = [received.body["ClientRequestToken"] for received in scripted.received]
    assert len(tokens) == 2
    assert tokens[0] == tokens[1]
    assert raised.value.response["CancellationReasons"] == reasons  # type: ignore[typeddict-item]
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "ProvisionedThroughputExceededException"),
        (400, "ThrottlingException"),
        (400, "RequestLimitExceeded"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (429, "SomethingNew"),
    ],
)
async def test_throttling_and_server_errors_are_retried(
    scripted: ScriptedDynamoDB, status: int, code: str
) -> None:
    scripted.error(status, code)
    scripted.answer(200, {"Item": {"pk": {"S": "a"}}})
    response = await client_of(scripted.url).call("GetItem", GET)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(scripted.received) == 2


async def test_a_client_error_is_not_retried(scripted: ScriptedDynamoDB) -> None:
    scripted.error(400, "ValidationException")
    with pytest.raises(ClientError) as raised:
        await client_of(scripted.url).call("GetItem", GET)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert len(scripted.received) == 1


async def test_retries_stop_at_max_attempts(scripted: ScriptedDynamoDB) -> None:
    for _ in range(5):
        scripted.error(500, "InternalServerError")
    with pytest.raises(ClientError) as raised:
        await client_of(scripted.url, max_attempts=3).call("GetItem", GET)
    assert len(scripted.received) == 3
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2


async def test_a_body_that_fails_its_crc32_is_fetched_again(scripted: ScriptedDynamoDB) -> None:
    scripted.answer(200, {"Item": {"pk": {"S": "damaged"}}}, crc="12345")
    scripted.answer(200, {"Item": {"pk": {"S": "a"}}})
    response = await client_of(scripted.url).call("GetItem", GET)
    assert response["Item"] == {"pk": {"S": "a"}}
    assert len(scripted.received) == 2


async def test_a_damaged_body_every_time_is_a_checksum_error(scripted: ScriptedDynamoDB) -> None:
    for _ in range(2):
        scripted.answer(200, {}, crc="1")
    with pytest.raises(ChecksumError):
        await client_of(scripted.url, max_attempts=2).call("GetItem", GET)


async def test_an_answer_lost_with_its_connection_is_sent_again(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a server that reads the first request, then closes without answering
    scripted.steps.append(("close",))
    scripted.answer(200, {"Attributes": {}})

    # When the write is sent, Then it is sent again on a new connection and succeeds
    response = await client_of(scripted.url).call("UpdateItem", GET)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert [received.connection for received in scripted.received] == [1, 2]


async def test_answers_lost_every_time_end_as_a_connection_error(
    scripted: ScriptedDynamoDB,
) -> None:
    scripted.steps.extend([("close",)] * 2)
    with pytest.raises(ConnectionClosedError):
        await client_of(scripted.url, max_attempts=2).call("UpdateItem", GET)
    assert len(scripted.received) == 2


async def test_a_kept_alive_connection_closed_while_idle_costs_no_attempt(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a client with one attempt and a connection the server has since closed
    client = client_of(scripted.url, max_attempts=1)
    await client.call("GetItem", GET)
    scripted.close_idle_connections()
    await asyncio.sleep(0.05)

    # When the next call is made, Then it succeeds on a fresh connection
    response = await client.call("GetItem", GET)
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert [received.connection for received in scripted.received] == [1, 2]


async def test_a_kept_alive_connection_that_drops_the_next_request_is_left_for_a_new_one(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a client with one attempt whose kept-alive connection the server closes on the
    # next request, unanswered (its idle timeout raced the request)
    client = client_of(scripted.url, max_attempts=1)
    await client.call("GetItem", GET)
    scripted.steps.append(("close",))
    scripted.answer(200, {"Item": {"pk": {"S": "a"}}})

    # When the next call is made, Then it is sent again on a new connection, spending no attempt
    response = await client.call("GetItem", GET)
    assert response["Item"] == {"pk": {"S": "a"}}
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert [received.connection for received in scripted.received] == [1, 1, 2]


async def test_a_slow_answer_is_a_read_timeout(scripted: ScriptedDynamoDB) -> None:
    scripted.steps.extend([("hang", 5.0)] * 2)
    with pytest.raises(ReadTimeoutError):
        await client_of(scripted.url, timeout_s=0.2, max_attempts=2).call("GetItem", GET)
    assert len(scripted.received) == 2


async def test_nobody_listening_is_an_endpoint_connection_error() -> None:
    client = client_of(f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(EndpointConnectionError):
        await client.call("GetItem", GET)


async def test_a_cancelled_call_does_not_leave_its_connection_in_the_pool(
    scripted: ScriptedDynamoDB,
) -> None:
    # Given a call cancelled while its answer is outstanding
    scripted.steps.append(("hang", 0.3))
    client = client_of(scripted.url)
    call = asyncio.create_task(client.call("GetItem", GET))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    # Then its connection is closed, not left open or pooled
    for _ in range(50):
        if 1 in scripted.closed_by_client:
            break
        await asyncio.sleep(0.02)
    assert scripted.closed_by_client == [1]

    # And the next call gets its own answer on a new connection
    scripted.answer(200, {"Item": {"pk": {"S": "mine"}}})
    response = await client.call("GetItem", GET)
    assert response["Item"] == {"pk": {"S": "mine"}}
    assert scripted.received[-1].connection == 2
