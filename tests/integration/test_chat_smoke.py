import json

import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration


def test_chat_streams_meta_deltas_usage_done(gateway) -> None:
    response = gateway.chat("Hello there")

    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "meta"
    assert names[-2:] == ["usage", None]
    assert events[-1][1] == "[DONE]"
    print(response.text[:2000])
    print(gateway.cost_records())
    print(json.dumps(gateway.usage()))
