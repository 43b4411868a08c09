// The chat page: one model, or 2-4 side by side, through the server's OpenAI-compatible API only
// (/v1/models, /v1/chat/completions with stream: true), so it is a small client for any such server.
// Everything from the server or a model is put into the page as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "llmrecipe.apiKey";  // session storage: gone with the tab, never in the page or a URL
const state = { tab: "chat", models: [], columns: [], controllers: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function say(text) { $("status").textContent = text || ""; }

async function errorText(resp) {
  // the server's own message (OpenAI's error shape), else the status line
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) { say(await errorText(resp)); return false; }
  const models = (await resp.json()).data.map((m) => m.id);
  // the key field fires `change` again when focus leaves it: the same models must not rebuild the columns
  // (and wipe the conversation under way)
  if (state.columns.length && models.join("\n") === state.models.join("\n")) { say(""); return true; }
  state.models = models;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => { const o = el("option", "", m); o.value = m; return o; }));
  select.value = state.models[state.models.length - 1];
  const list = $("pick-list");
  list.replaceChildren(...state.models.map((m, i) => {
    const label = el("label"), box = el("input");
    box.type = "checkbox"; box.value = m; box.name = "pick";
    box.checked = i === 0 || i === state.models.length - 1;  // the first stage and the last
    box.addEventListener("change", () => { limitPicks(box); buildColumns(); });
    label.append(box, document.createTextNode(m));
    return label;
  }));
  say("");
  setTab(state.tab);  // in the same task as the options: nothing typed in between is wiped
  return true;
}

function limitPicks(changed) {
  const on = [...document.querySelectorAll("input[name=pick]:checked")];
  if (on.length > 4) { changed.checked = false; say("compare at most 4 models"); }
}

function picked() {
  if (state.tab === "chat") return [$("model").value];
  return [...document.querySelectorAll("input[name=pick]:checked")].map((b) => b.value);
}

function buildColumns() {
  stop();
  state.columns = picked().filter(Boolean).map((model) => {
    const col = el("div", "column"), log = el("div", "log");
    col.dataset.model = model;
    col.append(el("h3", "", model), log);
    return { model, messages: [], log, el: col };
  });
  $("columns").replaceChildren(...state.columns.map((c) => c.el));
}

function setTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  $("chat-area").hidden = tab === "run";
  $("controls").hidden = tab === "run";
  $("run").hidden = tab !== "run";
  $("single").hidden = tab !== "chat";
  $("pick").hidden = tab !== "compare";
  if (tab !== "run") buildColumns();
}

function sampling() {
  const body = { max_tokens: parseInt($("max-tokens").value, 10) || 256,
                 temperature: parseFloat($("temperature").value) };
  if (Number.isNaN(body.temperature)) body.temperature = 1.0;
  const topP = parseFloat($("top-p").value);
  if (!Number.isNaN(topP)) body.top_p = topP;
  return body;
}

function seeds(n) {
  // the same seed in every column: differences then come from the weights, not from the sampling
  const typed = parseInt($("seed").value, 10);
  const draw = () => Math.floor(Math.random() * 2 ** 31);
  if (!Number.isNaN(typed)) return Array(n).fill(typed);
  if ($("same-seed").checked) { const s = draw(); return Array(n).fill(s); }
  return Array.from({ length: n }, draw);
}

async function streamInto(column, body, controller) {
  const answer = el("div", "msg assistant"), text = el("span", "text"), stats = el("span", "stats", "waiting…");
  answer.append(text, stats);
  column.log.append(answer);
  const t0 = performance.now();
  let first = null, pieces = 0, tokens = null, finish = null, content = "";
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
                                                        body: JSON.stringify(body), signal: controller.signal });
    if (!resp.ok) {
      answer.classList.add("error");
      stats.textContent = await errorText(resp);
      return null;
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        const piece = (choice.delta || {}).content;
        if (piece) {
          if (first === null) first = performance.now();
          pieces += 1; content += piece;
          text.textContent = content;
          column.log.scrollTop = column.log.scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else { answer.classList.add("error"); stats.textContent = String(e.message || e); return null; }
  }
  const n = tokens === null ? pieces : tokens;
  const secs = first === null ? 0 : (performance.now() - first) / 1000;
  const why = { stop: "end of text", length: "length (max new tokens)", stopped: "stopped" }[finish] || finish;
  stats.textContent = `${n} tokens` + (secs > 0 ? ` · ${(n / secs).toFixed(1)} tokens/s` : "") +
    ` · ${why || "no finish"} · ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  answer.dataset.finish = finish || "";
  return content;
}

async function send(event) {
  if (event) event.preventDefault();
  const prompt = $("input").value;
  if (!prompt.trim() || state.controllers.length) return;
  if (state.tab === "compare" && state.columns.length < 2) { say("pick 2 to 4 models to compare"); return; }
  say("");
  $("input").value = "";
  const seedList = seeds(state.columns.length);
  const base = sampling();
  $("send").disabled = true; $("stop").disabled = false;
  const runs = state.columns.map((column, i) => {
    column.messages.push({ role: "user", content: prompt });
    column.log.append(el("div", "msg user", prompt));
    const controller = new AbortController();
    state.controllers.push(controller);
    const body = { ...base, model: column.model, messages: column.messages.slice(), stream: true,
                   stream_options: { include_usage: true }, seed: seedList[i] };
    return streamInto(column, body, controller).then((reply) => {
      if (reply !== null) column.messages.push({ role: "assistant", content: reply });
      else column.messages.pop();  // a failed turn is not part of the conversation
    });
  });
  await Promise.all(runs);
  state.controllers = [];
  $("send").disabled = false; $("stop").disabled = true;
}

function stop() {
  for (const c of state.controllers) c.abort();
}

const HEADLINE = { mmlu_pro: "accuracy", mmlu_pro_category: "accuracy", gsm8k: "strict", ifeval: "prompt_strict" };

function cell(suite, summary) {
  // as the run's table writes it: "61.7% ± 2.8"
  const value = summary[HEADLINE[suite] || "score"];
  if (typeof value !== "number") return summary.display || String(value);
  const pct = suite in HEADLINE;
  const main = pct ? (100 * value).toFixed(1) + "%" : value.toFixed(2);
  if (typeof summary.stderr !== "number") return main;
  return main + " ± " + (pct ? (100 * summary.stderr).toFixed(1) : summary.stderr.toFixed(2));
}

function table(head, rows) {
  const t = el("table"), tr = el("tr");
  tr.append(...head.map((h) => el("th", "", h)));
  t.append(tr);
  for (const row of rows) {
    const r = el("tr");
    r.append(...row.map((c) => el("td", "", c)));
    t.append(r);
  }
  return t;
}

async function runFile(name) {
  const resp = await fetch("/run/" + encodeURIComponent(name), { headers: headers() });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp;
}

async function loadRun() {
  const resp = await fetch("/run/", { headers: headers() });
  if (!resp.ok) return;  // not served with --run (or the key is still missing)
  const files = (await resp.json()).files;
  $("tab-run").hidden = false;
  if (files.includes("results.json")) {
    const results = await (await runFile("results.json")).json();
    const suites = results.table.suites, scores = results.table.scores;
    $("run-table").replaceChildren(table(["model", ...suites],
      Object.entries(scores).map(([m, s]) => [m, ...suites.map((x) => (x in s ? cell(x, s[x]) : "n/a"))])));
    const rows = [];
    for (const [pair, c] of Object.entries(results.table.comparisons || {})) {
      for (const [suite, d] of Object.entries(c.paired)) {
        const f = (v) => (v >= 0 ? "+" : "−") + Math.abs(100 * v).toFixed(1);
        rows.push([pair, suite, `${f(d.delta)} [${f(d.low)}, ${f(d.high)}]`]);
      }
    }
    $("run-paired").replaceChildren(el("h3", "", "Paired differences, 95% bootstrap interval (points)"),
                                    table(["models", "suite", "difference"], rows));
  }
  const plots = files.filter((f) => f.endsWith(".png"));
  const imgs = await Promise.all(plots.map(async (f) => {
    const img = el("img");
    img.alt = f;
    img.src = URL.createObjectURL(await (await runFile(f)).blob());
    return img;
  }));
  $("run-plots").replaceChildren(...imgs);
}

async function start() {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("api-key").addEventListener("change", async () => {
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    if (await loadModels()) loadRun();
  });
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => setTab(b.dataset.tab));
  $("model").addEventListener("change", buildColumns);
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("clear").addEventListener("click", buildColumns);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
  if (!(await loadModels())) setTab("chat");
  loadRun();
}

start();
