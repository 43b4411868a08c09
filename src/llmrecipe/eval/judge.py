"""A judge reached over the OpenAI chat-completions protocol (OpenAI, vLLM, llama.cpp, Ollama, our server).

Bounded concurrency, timeouts, retries with exponential backoff on 429/5xx and network errors, and an
on-disk cache of every verdict keyed by (prompt, judge model, template), so a rerun never pays twice.
The API key is read from the environment and sent only in the Authorization header: never logged or stored.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..files import append_jsonl, read_jsonl

OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_CACHE = Path(os.environ.get("LLMRECIPE_CACHE", Path.home() / ".cache" / "llmrecipe")) / "judge.jsonl"


class JudgeError(RuntimeError):
    pass


@dataclass
class Judge:
    model: str
    url: str = OPENAI_URL
    api_key: str | None = None  # --judge-api-key; else the environment (see api_key_for)
    timeout: float = 120.0
    retries: int = 5
    backoff: float = 1.0
    concurrency: int = 8
    max_tokens: int = 2048
    cache_path: Path = DEFAULT_CACHE
    calls: int = 0  # requests actually sent (cache hits excluded)
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.cache_path = Path(self.cache_path)
        for i, rec in enumerate(read_jsonl(self.cache_path), 1):  # only successful replies are written
            if not isinstance(rec.get("key"), str) or not isinstance(rec.get("output"), str):
                raise ValueError(f"{self.cache_path}: record {i} lacks a string 'key' and 'output' "
                                 "(damaged): remove that line, or pass another --judge-cache")
            self._cache[rec["key"]] = rec["output"]

    @property
    def configured(self) -> bool:
        return self.url != OPENAI_URL or bool(self.api_key_for())

    def api_key_for(self) -> str | None:
        """The key sent to this judge. $OPENAI_API_KEY goes to OpenAI's own endpoint and nowhere else: a
        --judge-url server (anyone's) gets --judge-api-key or $LLMRECIPE_JUDGE_API_KEY, or no key."""
        if self.api_key:
            return self.api_key
        env = "OPENAI_API_KEY" if self.url == OPENAI_URL else "LLMRECIPE_JUDGE_API_KEY"
        return os.environ.get(env) or None

    def key(self, template: str, system: str, prompt: str) -> str:
        blob = json.dumps([self.model, template, system, prompt])
        return hashlib.sha256(blob.encode()).hexdigest()

    def ask(self, template: str, system: str, prompt: str) -> str:
        """The judge's reply to one prompt (from the cache when it was asked before)."""
        k = self.key(template, system, prompt)
        with self._lock:
            if k in self._cache:
                return self._cache[k]
        output = self._post(system, prompt)
        with self._lock:
            self._cache[k] = output
            append_jsonl(self.cache_path, [{"key": k, "judge": self.model, "template": template,
                                            "output": output}])
        return output

    def ask_many(self, requests: list[tuple[str, str, str]]) -> list[str | JudgeError]:
        """Several prompts concurrently; a failed one comes back as its JudgeError instead of raising."""
        def one(req):
            try:
                return self.ask(*req)
            except JudgeError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(one, requests))

    def _post(self, system: str, prompt: str) -> str:
        messages = (([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": prompt}])
        data = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if key := self.api_key_for():
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(f"{self.url}/chat/completions", data=data, headers=headers,
                                         method="POST")
            with self._lock:
                self.calls += 1
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = json.loads(resp.read())
                return body["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"judge {self.url} refused the request: HTTP {e.code} "
                                     f"{e.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError):
                last = "a reply that is not a chat completion"
        raise JudgeError(f"judge {self.url} failed after {self.retries} attempts (last: {last}; "
                         f"timeout {self.timeout:g}s)")
