"""The OpenAI-compatible HTTP API (--http-listen, server/http_api.h) driven by the official
`openai` Python SDK (pinned in tests/oracle/requirements.txt) and by raw HTTP where the SDK
cannot send the input (invalid JSON, a wrong Content-Type, an oversize body):

- GET /health, /v1/models, /metrics on the API listener;
- chat and completion, streaming and not: greedy text equal across the two and equal to the
  gRPC Generate of the same prompt (one pipeline, two adapters); usage, also in the last stream
  chunk with stream_options.include_usage; the `semshare` extra field;
- a repeated request is an exact hit and a paraphrase hits (semshare.cache says so); another
  tenant's key does not see the first tenant's references;
- bad input -> the OpenAI error JSON with 400 / 401 / 404 / 413 and a message naming the fix;
- queue full -> 429 (--workers 1 --max-queue 1 --max-num-seqs 1);
- a client that disconnects mid-stream cancels its request: requests_total counts it CANCELLED
  and semshare_kv_cache_bytes returns to 0.
"""

import http.client
import json
import socket
import threading
import time

import openai
import pytest

import service_common as sc


@pytest.fixture(scope="module")
def server(make_server):
    # A small body limit so the oversize-body case is cheap; prompts here are far below it.
    return make_server(["--max-message-bytes", "65536"])


@pytest.fixture(scope="module")
def model_id(server):
    models = server.openai().models.list()
    ids = [m.id for m in models.data]
    assert len(ids) == 1, ids
    return ids[0]


def raw(server, method, path, body=None, headers=None, api_key=sc.KEY_A):
    """(status, parsed JSON or text) of one HTTP request on the API listener."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    h = {} if headers is None else dict(headers)
    if api_key is not None:
        h.setdefault("Authorization", f"Bearer {api_key}")
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def wait_metric(server, pred, what, timeout_s=60.0):
    """Scrapes /metrics until pred(Metrics) holds; fails after timeout_s saying `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        if pred(m):
            return m
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s:\n{m.text}")
        time.sleep(0.05)


def test_health_models_metrics(server, model_id):
    assert raw(server, "GET", "/health", api_key=None) == (200, {"status": "ok"})
    status, body = raw(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert body["data"][0]["id"] == model_id and body["data"][0]["object"] == "model"
    status, text = raw(server, "GET", "/metrics", api_key=None)
    assert status == 200 and "semshare_requests_total" in text
    # The --metrics-listen listener serves /metrics (and /health) only.
    m = server.metrics()
    assert m.get("semshare_requests_total", method="GET /v1/models", code="OK") >= 2
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=30)
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    assert r.status == 404 and json.loads(r.read())["error"]["code"] == "not_found"


def test_chat_and_completion(server, model_id):
    oa = server.openai()
    msgs = [{"role": "user", "content": "Name three colours."}]
    chat = oa.chat.completions.create(model=model_id, messages=msgs, max_tokens=12,
                                      temperature=0)
    assert chat.object == "chat.completion" and chat.model == model_id
    text = chat.choices[0].message.content
    assert text and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    extra = chat.model_extra["semshare"]
    assert extra["cache"]["result"] in ("miss", "bypass", "hit") and "ttft_ms" in extra["timings"]
    # The same prompt over gRPC gives the same greedy text (one pipeline).
    with server.client(sc.KEY_A) as c:
        g = c.generate(messages=msgs, max_tokens=12)
    assert g.text == text

    # Streaming: the pieces add up to the same text; usage in the last chunk when asked.
    chunks = list(oa.chat.completions.create(model=model_id, messages=msgs, max_tokens=12,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == chat.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        chat.usage.completion_tokens

    comp = oa.completions.create(model=model_id, prompt=sc.SHORT_PROMPT, max_tokens=6,
                                 temperature=0, stop=["\n\n"])
    assert comp.object == "text_completion" and comp.choices[0].text
    with server.client(sc.KEY_A) as c:
        assert c.generate(sc.SHORT_PROMPT, max_tokens=6, stop=["\n\n"]).text == \
            comp.choices[0].text
    pieces = [ch.choices[0].text for ch in oa.completions.create(
        model=model_id, prompt=sc.SHORT_PROMPT, max_tokens=6, temperature=0, stop="\n\n",
        stream=True) if ch.choices]
    assert "".join(pieces) == comp.choices[0].text
    # A seed with temperature > 0 reproduces its text.
    a, b = (oa.completions.create(model=model_id, prompt=sc.SHORT_PROMPT, max_tokens=8,
                                  temperature=0.9, top_p=0.95, seed=7).choices[0].text
            for _ in range(2))
    assert a == b


def test_repeat_and_paraphrase_hit(server, model_id, pairs):
    oa = server.openai()
    prompt = sc.passage(pairs, 40)
    first = oa.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
    assert first.model_extra["semshare"]["cache"]["result"] == "miss"
    with server.client(sc.KEY_A) as c:
        sc.wait_lookup_hit(c, prompt)  # publication is asynchronous
    again = oa.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
    cache = again.model_extra["semshare"]["cache"]
    assert cache["hit"] and cache["result"] == "hit" and cache["kind"] == "exact", cache
    assert cache["exact_tokens"] > 0 and again.usage.prompt_tokens_details.cached_tokens > 0
    para = sc.passage(pairs, 40, swap=(2, 5))
    r = oa.completions.create(model=model_id, prompt=para, max_tokens=4, temperature=0)
    cache = r.model_extra["semshare"]["cache"]
    assert cache["hit"] and cache["kind"] in ("exact", "semantic"), cache
    # Tenant B does not see tenant A's references.
    other = server.openai(sc.KEY_B).completions.create(model=model_id, prompt=prompt,
                                                        max_tokens=4, temperature=0)
    assert other.model_extra["semshare"]["cache"]["hit"] is False


def test_bad_input_gets_openai_errors(server, model_id):
    chat = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "Hi"}]
    cases = [
        # (status, param or None, a phrase of the message, request kwargs of raw())
        (400, "messages", "empty", dict(body={"model": model_id, "messages": []})),
        (400, "max_tokens", "at least 1",
         dict(body={"model": model_id, "messages": msgs, "max_tokens": 0})),
        (404, "model", "does not exist", dict(body={"model": "gpt-4o", "messages": msgs})),
        (400, None, "not valid JSON",
         dict(body="{not json", headers={"Content-Type": "application/json"})),
        (400, None, "Content-Type must be application/json",
         dict(body=json.dumps({"model": model_id, "messages": msgs}),
              headers={"Content-Type": "text/plain"})),
        (413, None, "larger than", dict(body={"model": model_id, "messages": [
            {"role": "user", "content": "x" * 70000}]})),
        (401, None, "missing", dict(body={"model": model_id, "messages": msgs}, api_key=None)),
        (401, None, "unknown", dict(body={"model": model_id, "messages": msgs},
                                    api_key="wrong-key-0000000000000000")),
        (400, "n", "n must be 1", dict(body={"model": model_id, "messages": msgs, "n": 2})),
        (400, "temperature", "temperature",
         dict(body={"model": model_id, "messages": msgs, "temperature": -1})),
        (400, "stop", "stop", dict(body={"model": model_id, "messages": msgs, "stop": 5})),
    ]
    for status, param, phrase, kw in cases:
        got, body = raw(server, "POST", chat, **kw)
        assert got == status, (kw, got, body)
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, body
        assert phrase.lower() in err["message"].lower(), (phrase, body)
        if param is not None:
            assert err["param"] == param, body
    # The SDK maps them to its exception types.
    oa = server.openai()
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=model_id, messages=[], max_tokens=4)
    assert e.value.status_code == 400 and "empty" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="nope", messages=msgs, max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        server.openai("not-a-key-00000000000000").chat.completions.create(
            model=model_id, messages=msgs, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        oa.completions.create(model=model_id, prompt="Hi", max_tokens=0)
    # The server still serves, and counted the failures under the HTTP route.
    assert oa.chat.completions.create(model=model_id, messages=msgs, max_tokens=1).choices
    m = server.metrics()
    assert m.get("semshare_requests_total", method="POST /v1/chat/completions",
                 code="INVALID_ARGUMENT") >= 7
    assert m.get("semshare_requests_total", method="POST /v1/chat/completions",
                 code="UNAUTHENTICATED") >= 3


def test_disconnect_mid_stream_frees_kv(server, model_id):
    before = server.metrics().get("semshare_requests_total", method="POST /v1/chat/completions",
                                  code="CANCELLED")
    body = json.dumps({"model": model_id, "stream": True, "max_tokens": 1000,
                       "semshare": {"ignore_eos": True, "cache_policy": "bypass"},
                       "messages": [{"role": "user", "content": "Tell me a very long story."}]})
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=120)
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {sc.KEY_A}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    got = b""
    while got.count(b"data: ") < 3:  # a few tokens: the request is decoding
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert b" 200 " in got.split(b"\r\n", 1)[0]
    wait_metric(server, lambda m: m.get("semshare_kv_cache_bytes") > 0, "KV held while decoding")
    sock.close()
    m = wait_metric(server, lambda m: m.get("semshare_kv_cache_bytes") == 0 and m.get(
        "semshare_requests_total", method="POST /v1/chat/completions",
        code="CANCELLED") == before + 1, "the KV freed after the disconnect")
    assert m.get("semshare_requests_running") == 0


def test_queue_full_is_429(make_server, model_id):
    s = make_server(["--workers", "1", "--max-queue", "1", "--max-num-seqs", "1"], name="full")
    body = {"model": model_id, "prompt": sc.SHORT_PROMPT, "max_tokens": 32,
            "semshare": {"ignore_eos": True}}
    results = [None] * 5
    barrier = threading.Barrier(5)

    def send(i):
        barrier.wait()
        results[i] = raw(s, "POST", "/v1/completions", body=body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    ok = [b for st, b in results if st == 200]
    full = [b for st, b in results if st == 429]
    assert len(ok) + len(full) == 5 and len(full) >= 1 and len(ok) >= 1, results
    assert all(b["usage"]["completion_tokens"] == 32 for b in ok), ok
    for b in full:
        assert b["error"]["type"] == "rate_limit_error" and "retry" in b["error"]["message"], b
    wait_metric(s, lambda m: m.get("semshare_requests_total", method="POST /v1/completions",
                                   code="RESOURCE_EXHAUSTED") == len(full), "429s counted")
