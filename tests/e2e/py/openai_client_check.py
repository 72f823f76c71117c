"""The official `openai` client against the modelgate gateway (envoy/gateway.yaml).

Usage: openai_client_check.py http://127.0.0.1:10000
Chats with every listed model, follows an alias, streams, completes, embeds, and checks
that an unknown model raises NotFoundError and malformed requests raise BadRequestError.
Prints one line per check and exits non-zero on the first failure.
"""

import sys

import openai
from openai import OpenAI


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:10000"
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    hi = [{"role": "user", "content": "Say hi"}]

    ids = [m.id for m in client.models.list()]
    check("models.list", {"llama-3-8b", "qwen-2-7b", "chat"} <= set(ids), ids)
    check("models.retrieve", client.models.retrieve("qwen-2-7b").id == "qwen-2-7b")

    for model in ids:
        r = client.chat.completions.create(model=model, messages=hi, max_tokens=4)
        check(f"chat {model}", bool(r.choices[0].message.content), r)
        # The server echoes the model it was sent: a target name of this model.
        if model != "chat":
            check(f"chat {model} served by {r.model}", r.model == model, r.model)

    r = client.chat.completions.create(model="qwen", messages=hi, max_tokens=4)
    check("alias qwen -> qwen-2-7b", r.model == "qwen-2-7b", r.model)

    text = ""
    for chunk in client.chat.completions.create(model="llama3", messages=hi, max_tokens=4, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    check("streaming chat via alias", bool(text))

    r = client.completions.create(model="llama-3-8b", prompt="Once upon", max_tokens=4)
    check("completions", bool(r.choices[0].text), r)

    r = client.embeddings.create(model="qwen-2-7b", input="hello")
    check("embeddings", len(r.data) == 1 and len(r.data[0].embedding) > 0)

    try:
        client.chat.completions.create(model="does-not-exist", messages=hi)
        check("unknown model raises NotFoundError", False)
    except openai.NotFoundError as e:
        check("unknown model raises NotFoundError", "does-not-exist" in str(e), e)

    try:
        client.post(
            "/chat/completions",
            cast_to=object,
            content=b'{"model": "llama-3-8b", "messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )
        check("malformed JSON raises BadRequestError", False)
    except openai.BadRequestError as e:
        check("malformed JSON raises BadRequestError", e.status_code == 400, e)

    try:
        client.chat.completions.create(model="llama-3-8b", messages=hi, extra_body={"model": 7})
        check("non-string model raises BadRequestError", False)
    except openai.BadRequestError as e:
        check("non-string model raises BadRequestError", e.status_code == 400, e)

    print("all openai client checks passed")


if __name__ == "__main__":
    main()
