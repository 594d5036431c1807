"""Drive aistudioproxy's Anthropic Messages edge with the official
`anthropic` Python SDK.

Usage: anthropic_client.py <base_url> <api_key> <model> [text-only]
Prints one JSON line with what the SDK saw; exits non-zero on any failure.
Run by `dialect::official_anthropic_sdk_works` (test child, tool calls on)
and `upstream_child::dialects_through_the_real_child` (text only).
"""
import json
import sys

import anthropic


def main() -> int:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    text_only = len(sys.argv) > 4 and sys.argv[4] == "text-only"
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    out = {"sdk_version": anthropic.__version__}

    msg = client.messages.create(
        model=model,
        max_tokens=256,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "plain"}],
    )
    out["plain"] = "".join(b.text for b in msg.content if b.type == "text")
    out["plain_stop_reason"] = msg.stop_reason
    out["plain_usage"] = [msg.usage.input_tokens, msg.usage.output_tokens]

    events = []
    with client.messages.stream(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "streamed"}]
    ) as stream:
        pieces = []
        for event in stream:
            events.append(event.type)
            if event.type == "text":
                pieces.append(event.text)
        final = stream.get_final_message()
    out["streamed"] = "".join(pieces)
    out["streamed_final"] = "".join(b.text for b in final.content if b.type == "text")
    out["stream_events"] = sorted(set(events))
    out["stream_stop_reason"] = final.stop_reason

    if not text_only:
        tools = [{
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                             "required": ["location"]},
        }]
        question = {"role": "user", "content": "What is the weather in Paris?"}
        first = client.messages.create(model=model, max_tokens=256, tools=tools, messages=[question])
        use = [b for b in first.content if b.type == "tool_use"][0]
        out["tool_stop_reason"] = first.stop_reason
        out["tool_call"] = {"name": use.name, "input": use.input}
        second = client.messages.create(
            model=model, max_tokens=256, tools=tools,
            messages=[
                question,
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
            ],
        )
        out["tool_answer"] = "".join(b.text for b in second.content if b.type == "text")
        # The same call, streamed: tool_use built from input_json_delta events.
        with client.messages.stream(model=model, max_tokens=256, tools=tools,
                                    messages=[question]) as stream:
            streamed_call = stream.get_final_message()
        use = [b for b in streamed_call.content if b.type == "tool_use"][0]
        out["streamed_tool_call"] = {"name": use.name, "input": use.input}

        count = client.messages.count_tokens(model=model, messages=[question], tools=tools)
        out["count_tokens"] = count.input_tokens
        out["models"] = [m.id for m in client.models.list()]

        try:
            client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])
            out["unknown_block"] = "accepted"
        except anthropic.BadRequestError as e:
            out["unknown_block"] = [e.status_code, e.body["error"]["type"], e.body["error"]["message"]]

        try:
            anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0).messages.create(
                model=model, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            out["wrong_key"] = "accepted"
        except anthropic.AuthenticationError as e:
            out["wrong_key"] = [e.status_code, e.body["error"]["type"]]

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
