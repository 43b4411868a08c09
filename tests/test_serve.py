"""The server as users meet it: a real process on 127.0.0.1, the real `openai` client, MT-Bench judged by
it."""
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmrecipe.checkpoint import load_model
from llmrecipe.engine import Engine
from llmrecipe.eval.harness import evaluate, load_eval_model
from llmrecipe.eval.judge import Judge, JudgeError
from llmrecipe.eval.mt_bench import MTBench, pairwise, parse_pair, parse_score
from llmrecipe.lora import LoRAConfig
from llmrecipe.runtime import setup
from llmrecipe.train.loop import TrainConfig
from llmrecipe.train.sft import SFTConfig, run_sft

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def adapters(tiny_base, data_dir, tmp_path_factory):
    out = {}
    for name, lr in (("sft_a", 2e-2), ("sft_b", 5e-2)):
        d = tmp_path_factory.mktemp(name)
        run_sft(SFTConfig(lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
                          train=TrainConfig(batch_size=2, grad_accum=1, max_steps=3, lr=lr, warmup_steps=0,
                                            schedule="constant", log_interval=1, eval_interval=0,
                                            save_interval=100),
                          base=str(tiny_base), data=str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl")),
                d)
        out[name] = d
    return out


def start_server(tiny_base, adapters, *extra):
    args = [sys.executable, "-m", "llmrecipe", "serve", "--model", str(tiny_base), "--port", "0",
            "--device", "cpu", "--name", "base", *[f"--adapter={n}={p}" for n, p in adapters.items()], *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://127.0.0.1:(\d+)/v1", line)
    assert m, line + proc.stderr.read()
    return proc, f"http://127.0.0.1:{m.group(1)}/v1"


@pytest.fixture(scope="module")
def server(tiny_base, adapters):
    proc, url = start_server(tiny_base, adapters)
    yield url
    proc.kill()


def raw(url, path, body: bytes, key=None):
    req = urllib.request.Request(url + path, body, {"Content-Type": "application/json",
                                                    **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_client_list_chat_completion_stream_and_adapters(server, tiny_base, adapters):
    client = openai.OpenAI(base_url=server, api_key="unused")
    assert sorted(m.id for m in client.models.list().data) == ["base", "sft_a", "sft_b"]
    msgs = [{"role": "user", "content": "Tell me about the history of science."}]
    outs = {}
    for name in ("base", "sft_a", "sft_b", "base"):
        r = client.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0)
        assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 12
        u = r.usage
        assert u.prompt_tokens > 5 and u.total_tokens == u.prompt_tokens + u.completion_tokens
        outs.setdefault(name, r.choices[0].message.content)
        assert outs[name] == r.choices[0].message.content  # switching back and forth changes nothing
    # each adapter answers exactly as the same adapter loaded locally
    from llmrecipe.chat import encode_chat
    for name in ("sft_a", "sft_b"):
        model, tok = load_model(tiny_base, adapter=adapters[name])
        ids = encode_chat(msgs, tok, add_generation_prompt=True).ids
        assert tok.decode(Engine(model, tok, setup("cpu")).generate([ids], 12)[0]) == outs[name]
    assert len(set(outs.values())) > 1
    c = client.completions.create(model="base", prompt="The history of", max_tokens=8, temperature=0)
    assert c.choices[0].text and c.usage.completion_tokens <= 8
    pieces = [ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="sft_a", messages=msgs, max_tokens=12, temperature=0, stream=True)]
    assert "".join(pieces) == outs["sft_a"]
    s1 = client.chat.completions.create(model="base", messages=msgs, max_tokens=10, temperature=1.0, seed=7)
    s2 = client.chat.completions.create(model="base", messages=msgs, max_tokens=10, temperature=1.0, seed=7)
    assert s1.choices[0].message.content == s2.choices[0].message.content


def test_bad_requests_get_4xx_in_openai_shape_and_the_server_survives(server):
    msgs = [{"role": "user", "content": "hi"}]
    cases = [(b"{not json", 400), (json.dumps({"model": "nope", "messages": msgs}).encode(), 404),
             (json.dumps({"model": "base", "messages": msgs, "max_tokens": -1}).encode(), 400),
             (json.dumps({"model": "base", "messages": msgs, "max_tokens": 10 ** 9}).encode(), 400),
             (json.dumps({"model": "base", "messages": "hi"}).encode(), 400),
             (json.dumps({"model": "base", "messages": msgs, "temperature": "hot"}).encode(), 400),
             (json.dumps({"model": "base", "messages": [{"role": "user", "content": "word " * 400}]})
              .encode(), 400)]
    for body, status in cases:
        code, resp = raw(server, "/chat/completions", body)
        assert code == status, (body[:40], resp)
        assert set(resp["error"]) >= {"message", "type", "param", "code"}, (body[:40], resp)
    ok = json.dumps({"model": "base", "messages": msgs, "max_tokens": 2}).encode()
    code, resp = raw(server, "/chat/completions", ok)
    assert code == 200
    client = openai.OpenAI(base_url=server, api_key="x")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=msgs)


def test_concurrent_requests_do_not_corrupt_each_other(server):
    client = openai.OpenAI(base_url=server, api_key="x")
    msgs = [{"role": "user", "content": "Describe the river."}]
    want = {n: client.chat.completions.create(model=n, messages=msgs, max_tokens=10, temperature=0)
            .choices[0].message.content for n in ("base", "sft_a", "sft_b")}
    got, errors = [], []

    def hit(name):
        try:
            r = client.chat.completions.create(model=name, messages=msgs, max_tokens=10, temperature=0)
            got.append((name, r.choices[0].message.content))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hit, args=(n,)) for n in ["base", "sft_a", "sft_b"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 12 and all(text == want[n] for n, text in got)


def test_api_key_is_required_when_set(tiny_base, adapters):
    proc, url = start_server(tiny_base, {}, "--api-key", "s3cret")
    try:
        code, resp = raw(url, "/chat/completions", json.dumps({"model": "base", "messages": [
            {"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
        assert code == 401 and resp["error"]["type"] == "authentication_error"
        client = openai.OpenAI(base_url=url, api_key="s3cret")
        assert client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2).choices[0].message.content is not None
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def judge_server(tiny_base, tmp_path_factory):
    """A weak judge with a context long enough for MT-Bench's judge prompts, served by our own server."""
    import torch

    from llmrecipe.checkpoint import save_model
    from llmrecipe.model import GPT, GPTConfig
    from llmrecipe.tokenizer import load_from_dir
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("judge")
    save_model(d, GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=512, block_size=8192)),
               load_from_dir(tiny_base))
    proc, url = start_server(d, {})
    yield url
    proc.kill()


def requests_seen(url) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        return json.loads(r.read())["requests"]


def test_mt_bench_end_to_end_with_our_server_as_judge(judge_server, tiny_base, adapters, data_dir, tmp_path):
    server = judge_server
    judge = Judge("base", server, cache_path=tmp_path / "cache.jsonl", concurrency=4, max_tokens=12)
    suite = MTBench(data_dir=str(data_dir / "eval"), judge=judge, max_new_tokens=8)
    model = load_eval_model(str(tiny_base), adapters["sft_a"], name="sft_a")
    before = requests_seen(server)
    res = evaluate(model, [suite], tmp_path / "eval.json", limit=3)["suites"]["mt_bench"]
    assert requests_seen(server) - before == 6 == judge.calls  # 3 questions x 2 turns
    # a random judge: no [[N]]
    assert res["items"] == 3 and res["unparseable"] == 6 and res["judge"] == "base"
    assert res["display"] == "n/a (6 unparseable)"
    recs = [json.loads(x) for x in (tmp_path / "eval.mt_bench.jsonl").read_text().splitlines()]
    assert all(len(r["answers"]) == 2 and len(r["judgments"]) == 2 for r in recs)
    # a rerun (fresh records, same answers) is served from the verdict cache: no new requests
    (tmp_path / "eval.mt_bench.jsonl").unlink()
    judge2 = Judge("base", server, cache_path=tmp_path / "cache.jsonl", max_tokens=12)
    evaluate(model, [MTBench(data_dir=str(data_dir / "eval"), judge=judge2, max_new_tokens=8)],
             tmp_path / "eval.json", limit=3)
    assert judge2.calls == 0 and requests_seen(server) - before == 6
    # pairwise: every (question, turn) judged in both orders
    b = load_eval_model(str(tiny_base), adapters["sft_b"], name="sft_b")
    judge3 = Judge("base", server, cache_path=tmp_path / "pw.jsonl", max_tokens=12)
    pw = pairwise(model, b, judge3, str(data_dir / "eval"), limit=2, max_new_tokens=8)
    assert pw["comparisons"] == 4 and pw["win"] + pw["tie"] + pw["loss"] == 4
    assert requests_seen(server) - before == 6 + 8


def test_no_judge_reads_na_and_parsers():
    suite = MTBench(data_dir=None, judge=None)
    assert suite.items(None) == [] and suite.summarize([])["display"] == "n/a (no judge)"
    assert parse_score("Rating: [[7]]") == 7 and parse_score("[8.5]") == 8.5 and parse_score("great") is None
    assert parse_pair("[[B]]") == "B" and parse_pair("[[C]]") == "tie" and parse_pair("dunno") is None


class _Flaky(BaseHTTPRequestHandler):
    hits = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).hits == 1:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        reply = {"role": "assistant", "content": "Rating: [[6]]"}
        body = json.dumps({"choices": [{"message": reply}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Silent(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        time.sleep(5)


def test_judge_retries_5xx_and_times_out_clearly(tmp_path):
    for handler in (_Flaky, _Silent):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        judge = Judge("m", url, cache_path=tmp_path / f"{handler.__name__}.jsonl", timeout=0.5, retries=2,
                      backoff=0.05)
        try:
            if handler is _Flaky:
                assert judge.ask("t", "", "q") == "Rating: [[6]]" and _Flaky.hits == 2
            else:
                t0 = time.time()
                with pytest.raises(JudgeError, match=r"failed after 2 attempts .*timeout 0.5s"):
                    judge.ask("t", "", "q")
                assert time.time() - t0 < 4
        finally:
            httpd.shutdown()


def raw_http(url: str, request: bytes, rcvbuf: int | None = None, read: bool = True) -> bytes:
    """One raw HTTP exchange over a socket (for requests no client library will send)."""
    import socket

    host, port = re.search(r"http://([\d.]+):(\d+)", url).groups()
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect((host, int(port)))
    s.sendall(request)
    if not read:
        return s  # type: ignore[return-value]
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def test_hostile_requests_get_4xx_not_5xx(server):
    msgs = [{"role": "user", "content": "hi"}]
    cases = [(json.dumps({"model": "base", "messages": msgs, "seed": 2 ** 80}).encode(), 400, "seed"),
             (b'{"model": "base", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "surrogate"),
             (b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
             (json.dumps({"model": "base", "messages": msgs, "n": 2}).encode(), 400, "n=1"),
             (json.dumps({"model": ["base"], "messages": msgs}).encode(), 404, "not found")]
    for body, status, words in cases:
        code, resp = raw(server, "/chat/completions", body)
        assert code == status and words in resp["error"]["message"], (body[:40], resp)
    path = "/v1/chat/completions"
    for length, status in (("99999999999", b"413"), ("-5", b"400"), ("lots", b"400")):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        reply = raw_http(server, head.encode())
        assert reply.startswith(b"HTTP/1.1 " + status) and b'"error"' in reply, reply[:200]
    reply = raw_http(server, b"PUT /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405") and b"Allow: GET, POST" in reply and b'"error"' in reply
    assert raw(server, "/chat/completions", json.dumps({"model": "base", "messages": msgs, "max_tokens": 2}
                                                       ).encode())[0] == 200  # still serving


def test_unseeded_sampling_is_random_and_finish_reason_is_length(server):
    client = openai.OpenAI(base_url=server, api_key="x")
    msgs = [{"role": "user", "content": "Tell me a story."}]
    texts = {client.chat.completions.create(model="base", messages=msgs, max_tokens=12, temperature=1.0
                                            ).choices[0].message.content for _ in range(5)}
    assert len(texts) > 1, texts  # a default seed of 0 gave five identical answers
    seeded = {client.chat.completions.create(model="base", messages=msgs, max_tokens=12, temperature=1.0,
                                             seed=7).choices[0].message.content for _ in range(2)}
    assert len(seeded) == 1
    r = client.chat.completions.create(model="base", messages=msgs, max_tokens=1, temperature=0)
    chunks = list(client.chat.completions.create(model="base", messages=msgs, max_tokens=1, temperature=0,
                                                 stream=True))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if r.choices[0].message.content:  # the first token was not EOT: the budget of 1 ran out
        assert r.choices[0].finish_reason == "length" and finish == ["length"]


def test_a_stalled_stream_reader_does_not_block_other_clients(tiny_base):
    """A client that starts a stream and never reads must delay only itself.

    On loopback the kernel sizes a socket's send buffer from the 64 KB MSS (~1 MB), more than a whole stream,
    so a stalled reader would never block the writer and the test could not fail. Here the real server
    runs in-process with SO_SNDBUF pinned to 4 KB on its accepted sockets (as on a real network link), the
    client's receive buffer is 1 KB, and the test checks that the stream outgrew both — its writer really
    was stuck — while another client was answered."""
    import socket

    from llmrecipe.serve import ModelServer, Server, make_handler

    class SmallBuffers(Server):
        def get_request(self):
            conn, addr = super().get_request()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return conn, addr

    httpd = SmallBuffers(("127.0.0.1", 0), make_handler(ModelServer(str(tiny_base), {}, "cpu"), None))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    body = json.dumps({"model": "base", "messages": [{"role": "user", "content": "go"}], "max_tokens": 240,
                       "temperature": 1.0, "seed": 1, "stream": True, "stop": []}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    stalled = raw_http(url, head.encode() + body, rcvbuf=1024, read=False)
    try:
        time.sleep(1.0)  # the stream's writer fills both buffers and blocks; the model lock must be free
        t0 = time.time()
        code, _ = raw(url, "/chat/completions", json.dumps({"model": "base", "messages": [
            {"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
        assert code == 200 and time.time() - t0 < 20
        streamed = b""
        while chunk := stalled.recv(65536):
            streamed += chunk
        buffers = 2 * 4096 + 2 * 1024 * 2 + 4096  # doubled SO_SNDBUF + doubled SO_RCVBUF with slack
        assert len(streamed) > buffers and streamed.rstrip().endswith(b"data: [DONE]"), len(streamed)
    finally:
        stalled.close()
        httpd.shutdown()
        httpd.server_close()


def test_sockets_beyond_the_open_bound_get_503_and_the_slots_come_back(tiny_base):
    """Open sockets are bounded (MAX_OPEN; 8 here): the 9th is told 503 on accept, before it sends anything
    (an unbounded server would start a thread per socket); once they leave, service resumes. Idle sockets
    do not hold the requests' slots (test_safety: /health answers beside 64 of them)."""
    import socket

    from llmrecipe.serve import ModelServer, Server, make_handler

    httpd = Server(("127.0.0.1", 0), make_handler(ModelServer(str(tiny_base), {}, "cpu"), None), max_open=8)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    idle = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(httpd.server_address, timeout=10))
        time.sleep(0.5)  # the server accepts them all and parks a handler on each
        with socket.create_connection(httpd.server_address, timeout=10) as extra:
            reply = b""
            while chunk := extra.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 503") and b"too many open connections" in reply, reply[:300]
        for c in idle:
            c.close()
        deadline = time.time() + 20
        while True:  # the slots are released as the idle handlers see their clients gone
            try:
                code, _ = raw(url, "/chat/completions", json.dumps({"model": "base", "messages": [
                    {"role": "user", "content": "hi"}], "max_tokens": 1}).encode())
            except urllib.error.URLError:  # still full: told 503 and closed before the request was sent
                code = None
            if code == 200 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert code == 200
    finally:
        for c in idle:
            c.close()
        httpd.shutdown()
        httpd.server_close()


def test_key_from_file_bearer_any_case_and_disconnects_are_one_line(tiny_base, tmp_path):
    key = tmp_path / "key.txt"
    key.write_text("s3cret\n")
    proc, url = start_server(tiny_base, {}, "--api-key-file", str(key))
    try:
        msgs = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for auth, status in (("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer s3cre", 401),
                             ("", 401)):
            headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
            req = urllib.request.Request(url + "/chat/completions", json.dumps(msgs).encode(), headers)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            assert code == status, auth
        body = json.dumps({**msgs, "max_tokens": 200, "stream": True, "stop": []}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        sock = raw_http(url, head.encode() + body, read=False)
        sock.recv(10)
        sock.close()  # gone mid-stream
        time.sleep(2)
        assert raw(url, "/chat/completions", json.dumps(msgs).encode(), key="s3cret")[0] == 200
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "s3cret" not in err, err


class _Outage(BaseHTTPRequestHandler):
    """A judge that answers 503 while `down`, then "Rating: [[6]]"."""
    down, hits = True, 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        reply = {"choices": [{"message": {"role": "assistant", "content": "Rating: [[6]]"}}]}
        body = json.dumps(reply).encode()
        self.send_response(503 if type(self).down else 200)
        self.send_header("Content-Length", "0" if type(self).down else str(len(body)))
        self.end_headers()
        if not type(self).down:
            self.wfile.write(body)


def test_a_judge_outage_is_never_a_result(tiny_base, data_dir, tmp_path):
    """Issue 16 item 3: judge failures are not verdicts — not scores, not ties, not cached records; a rerun
    after the judge recovers judges exactly those items; a pairwise run judged by nobody is an error."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Outage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    def judge():
        return Judge("m", url, cache_path=tmp_path / "cache.jsonl", timeout=5, retries=2, backoff=0.01)
    try:
        model = load_eval_model(str(tiny_base), None, name="b")

        def suite():
            return MTBench(data_dir=str(data_dir / "eval"), judge=judge(), max_new_tokens=4)
        res = evaluate(model, [suite()], tmp_path / "eval.json", limit=2)["suites"]["mt_bench"]
        assert res["score"] is None and res["judge_failed"] == 4 and res["unparseable"] == 0
        assert "judge failed on 4 of 4" in res["display"]
        with pytest.raises(ValueError, match="every MT-Bench judgment failed"):
            pairwise(model, model, judge(), str(data_dir / "eval"), limit=1, max_new_tokens=4)
        _Outage.down, _Outage.hits = False, 0
        res = evaluate(model, [suite()], tmp_path / "eval.json", limit=2)["suites"]["mt_bench"]
        assert _Outage.hits == 4 and res["score"] == 6 and res["judge_failed"] == 0  # the 4 failed, redone
        hits = _Outage.hits
        res = evaluate(model, [suite()], tmp_path / "eval.json", limit=2)["suites"]["mt_bench"]
        assert _Outage.hits == hits and res["score"] == 6  # complete records are reused
    finally:
        _Outage.down = True
        httpd.shutdown()


def test_the_page_and_a_runs_files_are_served_and_nothing_else(tiny_base, tmp_path):
    """GET / is the page (no key needed, a strict CSP); GET /run/NAME only the run folder's own top-level
    results and plots, looked up by name: no request path reaches the file system."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "base").symlink_to(tiny_base, target_is_directory=True)
    (run / "results.json").write_text('{"table": {}}')
    (run / "eval.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "run.json").write_text("{}")
    (tmp_path / "key").write_text("k3y\n")
    args = [sys.executable, "-m", "llmrecipe", "serve", "--run", str(run), "--port", "0", "--device", "cpu",
            "--api-key-file", str(tmp_path / "key")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        root = re.search(r"(http://127.0.0.1:\d+)/v1", line).group(1)

        def get(path: str, key: str | None = "k3y") -> tuple[int, bytes, dict]:
            auth = {"Authorization": f"Bearer {key}"} if key else {}
            req = urllib.request.Request(root + path, headers=auth)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read(), dict(r.headers)
            except urllib.error.HTTPError as e:
                return e.code, e.read(), dict(e.headers)

        status, body, headers = get("/", key=None)
        assert status == 200 and b'<script src="/app.js"' in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "connect-src 'self'" in headers["Content-Security-Policy"]
        assert get("/app.js", key=None)[0] == 200 and get("/run/", key=None)[0] == 401
        status, body, _ = get("/run/")
        assert status == 200 and json.loads(body) == {"files": ["eval.png", "results.json"]}
        assert get("/run/results.json")[1] == b'{"table": {}}'
        for path in ("/run/run.json", "/run/base/model.json", "/run/../run.json", "/run/%2e%2e/run.json",
                     "/run/..%2fbase%2fmodel.json", "/run//etc/passwd", "/run/eval.png/", "/index.html"):
            assert get(path)[0] == 404, path
        assert json.loads(get("/v1/models")[1])["data"][0]["id"] == "base"
    finally:
        proc.kill()
