"""Drive rbee's gateway with the official `openai` package (PyPI), as applications do.

Usage: openai_client.py BASE_URL API_KEY MODEL

Every check asserts what the OpenAI API promises; the first failure raises (exit status 1).
On success the last line on stdout is one JSON object with what the Rust test checks further.
"""
import json
import sys

import openai

base_url, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
report = {"openai_version": openai.__version__}
messages = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]

# models.list / retrieve
ids = [m.id for m in client.models.list().data]
assert model in ids, f"{model} not in {ids}"
assert client.models.retrieve(model).id == model
report["models"] = ids

# chat, not streamed (the first request also loads the model on demand)
r = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                   temperature=0, seed=7)
assert r.object == "chat.completion", r
choice = r.choices[0]
assert choice.message.role == "assistant"
assert choice.message.content, r
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert r.usage.completion_tokens >= 1
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
report["chat"] = choice.message.content

# the same chat streamed, with usage: same greedy text, one finish, a usage chunk last
chunks = list(client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, seed=7, stream=True,
    stream_options={"include_usage": True}))
assert all(c.object == "chat.completion.chunk" for c in chunks)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert len(finishes) == 1, finishes
assert chunks[0].choices[0].delta.role == "assistant"
assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
assert text == choice.message.content, (text, choice.message.content)
report["chat_stream_chunks"] = len(chunks)

# max_tokens reached: finish_reason length, exactly that many tokens
r = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=5,
                                   temperature=0, extra_body={"ignore_eos": True})
assert r.choices[0].finish_reason == "length", r.choices[0]
assert r.usage.completion_tokens == 5, r.usage

# completions, not streamed and streamed
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                              temperature=0)
assert c.object == "text_completion" and c.choices[0].text, c
assert c.choices[0].finish_reason in ("stop", "length")
pieces = list(client.completions.create(model=model, prompt="The capital of France is",
                                        max_tokens=8, temperature=0, stream=True))
streamed = "".join(p.choices[0].text for p in pieces if p.choices)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
report["completion"] = c.choices[0].text

# errors, as the client library types them
def expect(exc_type, status, fn):
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, (e.status_code, e)
        return e.body
    raise AssertionError(f"expected {exc_type.__name__}")

bad = openai.OpenAI(base_url=base_url, api_key="sk-not-a-key-of-this-gateway", max_retries=0)
body = expect(openai.AuthenticationError, 401, lambda: bad.models.list())
report["e401"] = body
body = expect(openai.NotFoundError, 404, lambda: client.chat.completions.create(
    model="no-such-model", messages=messages))
assert body["code"] == "model_not_found", body
report["e404"] = body
body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
    model=model, messages=messages, n=2))
assert body["param"] == "n", body
body = expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
    model=model, messages=messages, presence_penalty=1.5))
assert body["param"] == "presence_penalty", body
report["e400"] = body

print(json.dumps(report))
