"""Drive aistudioproxy with the official OpenAI Python SDK.

Usage: openai_client.py <base_url> <api_key> [model]
Prints one JSON line with what the SDK saw; exits non-zero on any failure.
Run by the Rust integration tests `proxy::official_openai_sdk_works` (test
child, model gemini-test) and `upstream_child::*` (the real child).
"""
import json
import sys

import openai


def main() -> int:
    base_url, api_key = sys.argv[1], sys.argv[2]
    model = sys.argv[3] if len(sys.argv) > 3 else "gemini-test"
    # The real child takes 11-15 s per completion.
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]

    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "plain"}],
    )
    plain = completion.choices[0].message.content

    pieces = []
    finish = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "streamed"}],
        stream=True,
    )
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason

    wrong_key_status = None
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}]
        )
    except openai.AuthenticationError as e:
        wrong_key_status = e.status_code

    print(json.dumps({
        "models": models,
        "plain": plain,
        "streamed": "".join(pieces),
        "stream_chunks": len(pieces),
        "finish_reason": finish,
        "wrong_key_status": wrong_key_status,
        "sdk_version": openai.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
