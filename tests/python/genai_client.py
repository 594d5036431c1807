"""Drive aistudioproxy's Gemini edge with the official `google-genai` SDK.

Usage: genai_client.py <base_url> <api_key> <model> [text-only]
Prints one JSON line with what the SDK saw; exits non-zero on any failure.
Run by `dialect::official_genai_sdk_works` (test child, tool calls on) and
`upstream_child::dialects_through_the_real_child` (text only).
"""
import json
import sys

from google import genai
from google.genai import errors, types


def main() -> int:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    text_only = len(sys.argv) > 4 and sys.argv[4] == "text-only"
    opts = types.HttpOptions(base_url=base_url, timeout=120_000)
    client = genai.Client(api_key=api_key, http_options=opts)
    out = {"sdk_version": genai.__version__}

    r = client.models.generate_content(
        model=model, contents="plain",
        config=types.GenerateContentConfig(system_instruction="Answer briefly.",
                                           max_output_tokens=256, temperature=0.5),
    )
    out["plain"] = r.text
    out["plain_finish"] = r.candidates[0].finish_reason.name
    out["plain_usage"] = [r.usage_metadata.prompt_token_count, r.usage_metadata.candidates_token_count]

    pieces = []
    chunks = 0
    for chunk in client.models.generate_content_stream(model=model, contents="streamed"):
        chunks += 1
        if chunk.text:
            pieces.append(chunk.text)
    out["streamed"] = "".join(pieces)
    out["stream_chunks"] = chunks

    if not text_only:
        weather = types.FunctionDeclaration(
            name="get_weather",
            description="Get the current weather in a given location",
            parameters=types.Schema(type="OBJECT", properties={"location": types.Schema(type="STRING")},
                                    required=["location"]),
        )
        config = types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[weather])],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
        first = client.models.generate_content(model=model, contents=[question], config=config)
        call = first.function_calls[0]
        out["function_call"] = {"name": call.name, "args": call.args}
        answer = types.Part.from_function_response(name=call.name, response={"result": "sunny, 21 C"})
        second = client.models.generate_content(
            model=model, config=config,
            contents=[question, first.candidates[0].content, types.Content(role="user", parts=[answer])],
        )
        out["function_answer"] = second.text
        streamed_calls = []
        for chunk in client.models.generate_content_stream(model=model, contents=[question], config=config):
            for c in chunk.function_calls or []:
                streamed_calls.append({"name": c.name, "args": c.args})
        out["streamed_function_calls"] = streamed_calls
        out["count_tokens"] = client.models.count_tokens(model=model, contents="Hello, world").total_tokens
        out["models"] = [m.name for m in client.models.list()]
        wrong = genai.Client(api_key="wrong", http_options=opts)
        try:
            wrong.models.generate_content(model=model, contents="x")
            out["wrong_key"] = "accepted"
        except errors.ClientError as e:
            out["wrong_key"] = [e.code, e.status]

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
