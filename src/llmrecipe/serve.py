"""`llmrecipe serve`: an OpenAI-compatible HTTP server for a base model and any number of named adapters.

GET /v1/models, POST /v1/chat/completions and /v1/completions (with `stream: true` as server-sent events).
One model is held in memory; a request's `model` field picks "base" or an adapter, whose low-rank deltas
are written into the weights (W = W₀ + Σ scale·B·A over the adapter's chain) when it is switched in.
Requests are served one at a time under a lock — no continuous batching, but concurrent clients never see
each other's adapter or tokens. Bad requests get a 4xx in OpenAI's error shape, never a 500.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from safetensors.torch import load_file

from .chat import ROLES, chat_loop, encode_chat
from .checkpoint import adapter_chain, load_model
from .engine import Engine
from .lora import PEFT_PREFIX, read_adapter_config
from .runtime import setup


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def adapter_deltas(adapters: list[Path]) -> dict[str, torch.Tensor]:
    """Σ scale·B·A per weight name over a chain of adapters (each trained on the merge of those before it)."""
    deltas: dict[str, torch.Tensor] = {}
    for folder in adapters:
        cfg, _ = read_adapter_config(folder)
        sd = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(folder / "adapter_model.safetensors").items()}
        for key, a in sd.items():
            if ".lora_A." in key:
                layer = key.split(".lora_A.")[0]
                d = sd[f"{layer}.lora_B.weight"].float() @ a.float() * (cfg.alpha / cfg.r)
                deltas[f"{layer}.weight"] = deltas.get(f"{layer}.weight", 0) + d
    return deltas


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: list[str]
    seed: int | None


class ModelServer:
    def __init__(self, model_path: str, adapters: dict[str, str], device: str = "auto", name: str = "base"):
        self.rt = setup(device)
        self.model, self.tok = load_model(model_path, self.rt.device)
        self.model.eval()
        self.engine = Engine(self.model, self.tok, self.rt, batch_size=1)
        self.base_name = name
        root, served = adapter_chain(model_path)  # --model may itself be an adapter folder (merged above)
        self.deltas: dict[str, dict[str, torch.Tensor]] = {}
        for alias, path in adapters.items():
            base, chain = adapter_chain(path)
            if base != root or chain[: len(served)] != served:
                raise ValueError(f"adapter {alias}={path} was not trained on --model {model_path} (its chain starts "
                                 f"at {base})")
            self.deltas[alias] = adapter_deltas(chain[len(served):])
        params = dict(self.model.named_parameters())
        touched = {k for d in self.deltas.values() for k in d}
        self.pristine = {k: params[k].detach().clone() for k in touched}
        self.params, self.active = params, name
        self.lock = threading.Lock()
        self.requests = 0

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.deltas]

    def _use(self, name: str) -> None:
        if name == self.active:
            return
        with torch.no_grad():
            for k, w0 in self.pristine.items():
                self.params[k].copy_(w0)
            for k, d in self.deltas.get(name, {}).items():
                self.params[k].add_(d.to(self.params[k].device, self.params[k].dtype))
        self.active = name

    def prompt_ids(self, body: dict, chat: bool) -> list[int]:
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise RequestError(400, "'messages' must be a non-empty list", "messages")
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise RequestError(400, f"messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}",
                                       "messages")
            return encode_chat(msgs, self.tok, add_generation_prompt=True).ids
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string", "prompt")
        return self.tok.encode(prompt) or [self.tok.eot_id]

    def sampling(self, body: dict, prompt_len: int) -> Sampling:
        block = self.model.config.block_size
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 256))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= block:
            raise RequestError(400, f"'max_tokens' must be an integer in [1, {block}]", "max_tokens")
        if prompt_len >= block:
            raise RequestError(400, f"the prompt is {prompt_len} tokens; this model's context is {block}",
                               "messages", "context_length_exceeded")
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise RequestError(400, "'temperature' must be a number in [0, 2]", "temperature")
        top_p = body.get("top_p")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise RequestError(400, "'top_p' must be a number in (0, 1]", "top_p")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(400, "'seed' must be an integer", "seed")
        return Sampling(min(max_tokens, block - prompt_len), float(temperature), top_p, stop, seed)

    def complete(self, name: str, ids: list[int], s: Sampling) -> tuple[str, int, str]:
        """(text, completion tokens, finish_reason) for one request."""
        with self.lock:
            self._use(name)
            out = self.engine.generate([ids], s.max_tokens, s.temperature, None, s.top_p, s.stop, s.seed)[0]
        finish = "length" if len(out) >= s.max_tokens else "stop"
        return self.tok.decode(out), len(out), finish

    def stream(self, name: str, ids: list[int], s: Sampling):
        with self.lock:
            self._use(name)
            yield from self.engine.stream(ids, s.max_tokens, s.temperature, None, s.top_p, s.stop, s.seed)


def make_handler(server: ModelServer, api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; never logs headers (the API key)
            pass

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _auth(self) -> None:
            if api_key and self.headers.get("Authorization", "") != f"Bearer {api_key}":
                raise RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")

        def do_GET(self):
            try:
                self._auth()
                if self.path.rstrip("/") == "/v1/models":
                    now = int(time.time())
                    self._send(200, {"object": "list", "data": [
                        {"id": n, "object": "model", "created": now, "owned_by": "llmrecipe"} for n in server.names]})
                elif self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok", "requests": server.requests})
                else:
                    raise RequestError(404, f"no route {self.path}")
            except RequestError as e:
                self._send(e.status, e.body())

        def do_POST(self):
            try:
                self._auth()
                route = self.path.rstrip("/")
                if route not in ("/v1/chat/completions", "/v1/completions"):
                    raise RequestError(404, f"no route {self.path}")
                body = self._body()
                server.requests += 1
                self._answer(body, chat=route.endswith("chat/completions"))
            except RequestError as e:
                self._send(e.status, e.body())
            except Exception as e:  # a bug must not kill the server; report it in the same shape
                self._send(500, {"error": {"message": f"internal error: {type(e).__name__}: {e}",
                                           "type": "server_error", "param": None, "code": None}})

        def _body(self) -> dict:
            try:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"null")
            except (ValueError, UnicodeDecodeError):
                raise RequestError(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            return body

        def _answer(self, body: dict, chat: bool) -> None:
            name = body.get("model")
            if name not in server.names:
                raise RequestError(404, f"model {name!r} not found (available: {', '.join(server.names)})", "model",
                                   "model_not_found")
            ids = server.prompt_ids(body, chat)
            s = server.sampling(body, len(ids))
            rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
            if body.get("stream"):
                return self._stream(server.stream(name, ids, s), rid, created, name, chat)
            text, n_out, finish = server.complete(name, ids, s)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                      if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
            self._send(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": created, "model": name, "choices": [choice],
                             "usage": {"prompt_tokens": len(ids), "completion_tokens": n_out,
                                       "total_tokens": len(ids) + n_out}})

        def _stream(self, pieces, rid: str, created: int, name: str, chat: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            obj = "chat.completion.chunk" if chat else "text_completion"

            def event(payload, finish=None):
                choice = ({"index": 0, "delta": payload, "finish_reason": finish} if chat
                          else {"index": 0, "text": payload.get("content", ""), "finish_reason": finish})
                chunk = {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            if chat:
                event({"role": "assistant", "content": ""})
            for piece in pieces:
                if piece:
                    event({"content": piece})
            event({}, finish="stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def serve(model: str, adapters: dict[str, str], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, device: str = "auto") -> None:
    server = ModelServer(model, adapters, device)
    httpd = ThreadingHTTPServer((host, port), make_handler(server, api_key))
    print(f"serving {', '.join(server.names)} on http://{host}:{httpd.server_address[1]}/v1", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def chat_remote(url: str, model: str, system: str | None, sampling: dict, api_key: str | None = None) -> None:
    """`llmrecipe chat --url`: the same terminal chat against any OpenAI-compatible server."""
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}

    def reply(history: list[dict]) -> str:
        body = {"model": model, "messages": history, "max_tokens": sampling["max_new_tokens"],
                "temperature": sampling["temperature"], **({"top_p": sampling["top_p"]} if sampling["top_p"] else {})}
        req = urllib.request.Request(f"{url.rstrip('/')}/chat/completions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]

    chat_loop(reply, system, f"chat with {model} at {url}")
