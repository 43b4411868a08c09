"""The chat page (`llmrecipe serve --run`), in a real browser: Debian's Chromium driven by Playwright,
against a real server on 127.0.0.1 holding a tiny run's four stages.

Skipped with the reason only where no browser can be found (scripts/setup.sh installs one as root)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from conftest import ROOT

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

CHROMIUM = (os.environ.get("LLMRECIPE_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no Chromium: apt-get install chromium "
                                "(scripts/setup.sh does it as root), or set LLMRECIPE_CHROMIUM")
KEY = "s3cret-key"


def _serve(args: list[str], tmp: Path) -> tuple[subprocess.Popen, str]:
    """`llmrecipe serve ARGS --port 0`; returns the process and the page's address it printed."""
    log = open(tmp / f"serve{len(list(tmp.glob('serve*')))}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llmrecipe", "serve", *args, "--port", "0"], stdout=log,
                            stderr=subprocess.STDOUT)
    for _ in range(600):
        log.seek(0)
        found = re.search(r"chat page: (http://127\.0\.0\.1:\d+)/", log.read())
        if found:
            return proc, found.group(1)
        assert proc.poll() is None, (log.seek(0), log.read())[1]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    out, _ = tiny_run
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "key").write_text(KEY + "\n")
    proc, url = _serve(["--run", str(out), "--api-key-file", str(tmp / "key")], tmp)
    yield out, url
    proc.terminate()
    proc.wait(timeout=20)


def _page(browser, url: str, elsewhere: list[str]):
    """A fresh tab at `url` in which every request to another host is recorded and refused."""
    page = browser.new_context(viewport={"width": 1360, "height": 860}).new_page()
    host = urlparse(url).netloc

    def gate(route):
        target = urlparse(route.request.url)
        if target.scheme == "blob" or target.netloc == host:
            return route.continue_()
        elsewhere.append(route.request.url)
        route.abort()
    page.route("**/*", gate)
    page.goto(url + "/")
    return page


def _unlock(page, key: str) -> None:
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")


def _unlocked(browser, url: str, elsewhere: list[str]):
    """A fresh tab with the right key typed and the run's four models listed."""
    page = _page(browser, url, elsewhere)
    _unlock(page, KEY)
    expect(page.locator("#model option")).to_have_count(4)
    return page


def _held_out_item(run: Path) -> tuple[str, str]:
    """A held-out GSM8K-analog question RL answered right, with its gold answer: one DPO got wrong if there is
    one (the stage's difference, in the screenshot), else the first."""
    def records(stage: str) -> list[dict]:
        return [json.loads(line) for line in (run / "eval" / f"{stage}.gsm8k.jsonl").read_text().splitlines()]
    dpo = {r["id"]: r["correct"] for r in records("dpo")}
    right = [r for r in records("rl") if r["correct"]]
    item = next((r for r in right if not dpo[r["id"]]), right[0])
    return item["question"], item["gold"]


def test_compare_mode_streams_each_stage_and_the_run_tab_shows_the_results(served, browser):
    run, url = served
    elsewhere: list[str] = []
    page = _page(browser, url, elsewhere)
    expect(page.locator("#status")).to_contain_text("401: missing or wrong API key")  # no key typed yet
    _unlock(page, "wrong")
    expect(page.locator("#status")).to_contain_text("401: missing or wrong API key")
    _unlock(page, KEY)
    expect(page.locator("#model option")).to_have_count(4)
    assert page.locator("#model option").all_text_contents() == ["base", "sft", "dpo", "rl"]

    page.click("#tab-compare")
    for name in ("sft", "dpo"):  # all four side by side (base and rl are checked by default)
        page.check(f"#pick-list input[value={name}]")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "96")
    question, gold = _held_out_item(run)
    page.fill("#input", f"Q: {question}\nA:")
    page.press("#input", "Enter")
    answers = page.locator(".msg.assistant[data-finish]")
    expect(answers).to_have_count(4, timeout=120_000)
    text = {col.get_attribute("data-model"): col.locator(".msg.assistant .text").text_content()
            for col in page.locator(".column").all()}
    assert f"The answer is {gold}." in text["rl"], text
    assert text["base"] != text["rl"], text
    stats = page.locator(".column[data-model=rl] .stats").text_content()
    assert re.search(r"^\d+ tokens · [\d.]+ tokens/s · end of text", stats), stats
    shot = ROOT / "docs" / "img" / "compare.png" if os.environ.get("LLMRECIPE_UPDATE_DOCS") else None
    page.screenshot(path=str(shot or Path(run) / "compare.png"))

    page.click("#tab-run")
    table = json.loads((run / "results.json").read_text())["table"]["markdown"]
    want = [[c.strip() for c in row.strip("|").split("|")] for row in table.splitlines()
            if row.startswith("|") and not row.startswith("|---")]
    rows = page.locator("#run-table tr")
    expect(rows).to_have_count(len(want))
    got = [r.locator("th, td").all_text_contents() for r in rows.all()]
    assert got == want
    expect(page.locator("#run-plots img")).to_have_count(5)  # eval.png and the four loss plots
    assert not elsewhere, f"the page asked other hosts for {elsewhere}"


def test_model_output_is_shown_as_text_and_runs_nothing(served, browser):
    _, url = served
    elsewhere: list[str] = []
    page = _unlocked(browser, url, elsewhere)
    hostile = '<img src=x onerror="document.title=\'pwned\'"> <script>document.title="pwned"</script> &amp;'
    chunks = [{"choices": [{"index": 0, "delta": {"content": hostile}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    # the server's reply replaced in the browser: what a model could say, whatever it was trained on
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse))
    title = page.title()
    page.fill("#input", "<b>my own markup</b>")
    page.press("#input", "Enter")
    answer = page.locator(".msg.assistant[data-finish] .text")
    expect(answer).to_have_text(hostile)
    expect(page.locator(".msg.user")).to_have_text("<b>my own markup</b>")
    assert page.locator(".log img, .log script, .log b").count() == 0
    page.wait_for_timeout(300)  # an onerror would have fired by now
    assert page.title() == title
    assert not elsewhere


def test_the_key_field_changing_again_keeps_the_conversation(served, browser):
    """The browser fires the key field's `change` again when focus leaves it (the user typed the key, then
    clicked the message box): the models are asked for again, and an unchanged list must not rebuild the
    columns, which would wipe the conversation under way."""
    _, url = served
    page = _unlocked(browser, url, [])
    page.fill("#input", "What is 2 + 3?")
    page.press("#input", "Enter")
    expect(page.locator(".msg.assistant[data-finish]")).to_have_count(1, timeout=60_000)
    with page.expect_response("**/v1/models"):
        page.dispatch_event("#api-key", "change")
    page.wait_for_timeout(200)  # the reply's handling (and any rebuild) has run
    expect(page.locator(".msg.user")).to_have_text("What is 2 + 3?")
    expect(page.locator(".msg.assistant[data-finish]")).to_have_count(1)


def test_shift_enter_is_a_new_line_not_a_send(served, browser):
    _, url = served
    page = _unlocked(browser, url, [])
    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#input") == "first line\nsecond line"
    assert page.locator(".msg").count() == 0


def _slow_model(folder: Path, tok_from: Path) -> tuple[Path, Path]:
    """A GPT-2-small-shaped model with random weights on the tiny tokenizer, and an untrained adapter on it:
    ~30 ms a token on a laptop CPU (decoding reads all 85M weights), so Stop lands mid-answer."""
    from llmrecipe.checkpoint import save_model
    from llmrecipe.lora import LoRAConfig, inject, save_adapter
    from llmrecipe.model import GPT, GPTConfig
    from llmrecipe.tokenizer import load_from_dir

    tok = load_from_dir(tok_from)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=tok.vocab_size, block_size=256))
    save_model(folder / "big", model, tok, {"stage": "pretrain"})
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0)
    inject(model, lora)
    save_adapter(folder / "twin", model, lora, str((folder / "big").resolve()))
    tok.save(folder / "twin")
    return folder / "big", folder / "twin"


def test_stop_ends_every_stream_and_frees_the_server(tiny_run, browser, tmp_path):
    run, _ = tiny_run
    big, twin = _slow_model(tmp_path, run / "base")
    proc, url = _serve(["--model", str(big), "--adapter", f"twin={twin}"], tmp_path)
    try:
        page = _page(browser, url, [])
        expect(page.locator("#model option")).to_have_count(2)
        page.click("#tab-compare")
        page.fill("#max-tokens", "200")
        page.fill("#input", "Tell me a long story.")
        page.press("#input", "Enter")
        # the server takes the two requests one at a time, in either order: stop once either streams
        streaming = page.locator(".msg.assistant .text").filter(has_text=re.compile(r"\S"))
        expect(streaming).not_to_have_count(0, timeout=60_000)
        page.click("#stop")
        finished = page.locator(".msg.assistant[data-finish]")
        expect(finished).to_have_count(2, timeout=10_000)
        ends = [(a.get_attribute("data-finish"), a.locator(".stats").text_content()) for a in finished.all()]
        assert [f for f, _ in ends] == ["stopped", "stopped"], ends
        # the server noticed both clients leave: the next request is answered at once, not after ~400 tokens
        t0 = time.time()
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST", headers={
            "Content-Type": "application/json"}, data=json.dumps({
                "model": "big", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] == 1
        assert time.time() - t0 < 4.0, f"the next request waited {time.time() - t0:.1f} s"
        expect(page.locator("#send")).to_be_enabled()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
