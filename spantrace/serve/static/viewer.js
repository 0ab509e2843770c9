// spantrace viewer: run a prompt, select a span of the generation, see what it rests on.
// Every piece of model or user text reaches the page through textContent, never as HTML.
"use strict";

const state = {
  info: null, // GET /api/info
  run: null, // {run_id, tokens, prompt_length, ...} from POST /api/runs
  trace: null, // the last trace payload
  view: "combined", // "combined" or the hop number
  // The run that the token positions in the Span box were made on (by a drag or a trace): positions
  // mean nothing on another run, so a new run never traces them (see spanForNewRun).
  spanRunId: null,
  images: [], // [{name, uri}]: pictures picked for the next run, read here as data URIs (sent with the prompt)
};

const DEFAULT_SPAN = "answer"; // a new run's span, unless you typed a spec of your own
const GIVEN_TURN_SPAN = "message:-1"; // a conversation whose last assistant turn is traced as given

const $ = (id) => document.getElementById(id);

// --- talking to the server ------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: options.body ? { "Content-Type": "application/json" } : {},
  });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

// Run `work` with the buttons disabled and a progress line polled from GET /api/status.
async function busy(what, work) {
  const started = performance.now();
  const buttons = document.querySelectorAll("#run-button, #trace-button");
  buttons.forEach((b) => (b.disabled = true));
  showError(null);
  const status = $("status");
  status.classList.add("busy");
  status.textContent = `${what}…`;
  const poll = setInterval(async () => {
    let line = `${what}…`;
    try {
      const now = await api("/api/status");
      if (now.job) line = `${now.job.stage}…`;
      if (now.waiting > 0) line += ` (${now.waiting} request${now.waiting > 1 ? "s" : ""} waiting)`;
    } catch (error) {
      // the progress line is a nicety; the request itself reports real errors
    }
    status.textContent = `${line} ${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 300);
  try {
    return await work();
  } catch (error) {
    showError(error.message);
    return null;
  } finally {
    clearInterval(poll);
    status.classList.remove("busy");
    status.textContent = "";
    buttons.forEach((b) => (b.disabled = false));
  }
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

// --- set-up -----------------------------------------------------------------------------------------

async function start() {
  try {
    const [info, methods] = await Promise.all([api("/api/info"), api("/api/methods")]);
    state.info = info;
    $("model-line").textContent = `model: ${info.model} (${info.architecture}) · spantrace ${info.version}`;
    fillSelect($("method"), methods.methods.map((m) => [m.name, `${m.name}`, m.description]), methods.default);
    fillSelect($("recursive"), info.recursive.map((r) => [r, r, ""]), info.recursive[0]);
    $("max-new-tokens").max = info.limits.max_new_tokens;
    $("hops").max = info.limits.max_hops;
    $("legend-bar").style.background = `linear-gradient(to right, ${info.colours.stops
      .map(([x, rgb]) => `rgb(${rgb.join(",")}) ${(x * 100).toFixed(0)}%`)
      .join(", ")})`;
    if (info.images && info.images.accepted) showImagePicker(info);
  } catch (error) {
    showError(`could not reach the server: ${error.message}`);
  }
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createRun();
  });
  $("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const span = parseSpan($("span").value);
    if (Array.isArray(span) && state.run) state.spanRunId = state.run.run_id; // typed positions: this run's
    traceSpan(span);
  });
  for (const id of ["prompt", "output"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        createRun();
      }
    });
  }
  $("generation-tokens").addEventListener("mouseup", traceSelection);
  $("open-result").addEventListener("change", openResult);
  $("open-conversation").addEventListener("change", openConversation);
  $("images").addEventListener("change", pickImages);
  $("by").addEventListener("change", regroup);
  $("views").addEventListener("keydown", moveBetweenTabs);
}

function fillSelect(select, options, chosen) {
  select.replaceChildren();
  for (const [value, label, title] of options) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    option.title = title;
    option.selected = value === chosen;
    select.append(option);
  }
}

// --- runs and traces --------------------------------------------------------------------------------

async function createRun() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) {
    showError("type a prompt first");
    $("prompt").focus();
    return;
  }
  const body = { chat: $("chat").checked, max_new_tokens: Number($("max-new-tokens").value) || 1 };
  let givenTurn = false;
  if ($("conversation").checked) {
    const conversation = parseConversation(prompt);
    if (!conversation) return;
    Object.assign(body, conversation);
    const last = body.messages[body.messages.length - 1];
    givenTurn = Boolean(last && last.role === "assistant");
  } else {
    body.prompt = prompt;
    if (state.images.length > 0) body.images = state.images.map((image) => image.uri);
  }
  if (state.images.length > 0 && $("conversation").checked) {
    showError('picked images go with a plain prompt: untick "conversation", or put image parts (data URIs) in the messages');
    return;
  }
  if ($("output").value.trim() && !givenTurn) body.output = $("output").value;
  const what = body.output === undefined && !givenTurn ? "generating" : "running";
  const run = await busy(what, () => api("/api/runs", { method: "POST", body: JSON.stringify(body) }));
  if (!run) return;
  if (state.run && state.run.run_id) {
    api(`/api/runs/${state.run.run_id}`, { method: "DELETE" }).catch(() => {}); // free the server's copy
  }
  // Everything shown so far belongs to the previous run: clear it before this run is traced, so a failed
  // trace never leaves the old sources and top tokens beside the new text. The Output box keeps only
  // what you typed (a generated answer is shown in the heatmap, never fed back into the next run).
  clearTrace();
  state.run = run;
  $("span").value = spanForNewRun($("span").value, givenTurn);
  showTokens(run.tokens, run.prompt_length);
  $("trace-section").hidden = false;
  setTraceEnabled(true);
  await traceSpan(parseSpan($("span").value));
}

// The span a new run traces: a spec you typed (sentence:-1, regex:…) applies to any run and is kept;
// token positions belong to the run they were made on and the defaults follow the new run's kind.
function spanForNewRun(text, givenTurn) {
  const typed = text.trim();
  const isDefault = typed === "" || typed === DEFAULT_SPAN || typed === GIVEN_TURN_SPAN;
  const spec = isDefault || Array.isArray(parseSpan(typed)) ? (givenTurn ? GIVEN_TURN_SPAN : DEFAULT_SPAN) : typed;
  state.spanRunId = null; // a spec, not positions: it is resolved on whichever run it is traced on
  return spec;
}

// Empty the panels (views, heatmap colours, sources, top tokens, exports, timings) and forget the trace.
function clearTrace() {
  state.trace = null;
  for (const id of ["views", "top", "sources"]) $(id).replaceChildren();
  for (const id of ["sources-note", "timings", "view-note", "legend-max", "span-resolved"]) $(id).textContent = "";
  for (const id of ["export-json", "export-html"]) $(id).removeAttribute("href");
  $("by").replaceChildren();
  $("view-note").textContent = "No trace of this run yet: type or select a span and press Trace.";
  $("prompt-tokens").replaceChildren();
  $("generation-tokens").replaceChildren();
  $("pictures").replaceChildren(); // the previous run's images and their cells
  $("pictures").hidden = true;
}

// The prompt box as a conversation: a JSON list of messages, or {messages, tools?, documents?}.
function parseConversation(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    showError(`the conversation is not valid JSON (${error.message}); untick "conversation" for a plain prompt`);
    return null;
  }
  if (Array.isArray(data)) return { messages: data };
  if (data && typeof data === "object" && Array.isArray(data.messages)) {
    const conversation = { messages: data.messages };
    if (data.tools) conversation.tools = data.tools;
    if (data.documents) conversation.documents = data.documents;
    return conversation;
  }
  showError('a conversation is a JSON list of {"role", "content"} messages, or {"messages": [...], "tools": [...]}');
  return null;
}

async function openConversation(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  $("prompt").value = await file.text();
  $("conversation").checked = true;
  state.images = []; // the conversation is the whole input: its own image parts, if any
  drawThumbs();
  $("output").value = ""; // the conversation's own last turn, or a fresh generation, is traced
  await createRun();
}

// "40-52" → [40, 52] (token positions); anything else is a span spec for the server.
function parseSpan(text) {
  const range = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(text);
  return range ? [Number(range[1]), Number(range[2])] : text.trim();
}

async function traceSpan(span) {
  if (!state.run || !state.run.run_id) return;
  if (Array.isArray(span) && state.spanRunId !== null && state.spanRunId !== state.run.run_id) {
    // positions made on another run (cannot happen through the page, which resets them: a guard)
    showError("these token positions were selected on an earlier run; select the span again or type a span spec");
    return;
  }
  const body = {
    span,
    method: $("method").value,
    hops: Number($("hops").value),
    recursive: $("recursive").value,
  };
  if (state.trace && state.trace.sources && $("by").value) body.by = $("by").value;
  const runId = state.run.run_id;
  const trace = await busy("tracing", () =>
    api(`/api/runs/${runId}/trace`, { method: "POST", body: JSON.stringify(body) }),
  );
  if (trace) showTrace(trace);
}

// The mouse selection inside the generation → the token range it touches → a trace.
function traceSelection() {
  const selection = window.getSelection();
  if (!selection || selection.isCollapsed || selection.rangeCount === 0 || !state.run) return;
  const range = selection.getRangeAt(0);
  const touched = [...$("generation-tokens").querySelectorAll(".t")].filter((token) => {
    if (!range.intersectsNode(token)) return false;
    const text = token.firstChild;
    if (text === range.endContainer && range.endOffset === 0) return false; // ends just before it
    if (text === range.startContainer && range.startOffset === text.length) return false; // starts just after
    return true;
  });
  if (touched.length === 0) return;
  const start = Number(touched[0].dataset.index);
  const end = Number(touched[touched.length - 1].dataset.index) + 1;
  $("span").value = `${start}-${end}`;
  state.spanRunId = state.run.run_id; // these positions are this run's
  selection.removeAllRanges();
  traceSpan([start, end]);
}

async function openResult(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  const text = await file.text();
  const trace = await busy("opening the trace", () => api("/api/results", { method: "POST", body: text }));
  if (!trace) return;
  if (state.run && state.run.run_id) {
    api(`/api/runs/${state.run.run_id}`, { method: "DELETE" }).catch(() => {}); // the old run is no longer shown
  }
  clearTrace();
  $("output").value = ""; // the next Run generates afresh for the prompt box, not the saved trace's answer
  state.run = { run_id: null, tokens: trace.tokens, prompt_length: trace.prompt_length };
  $("span").value = `${trace.span[0]}-${trace.span[1]}`; // a saved trace has positions only (a new Run resets them)
  state.spanRunId = null;
  showTokens(trace.tokens, trace.prompt_length);
  $("trace-section").hidden = false;
  setTraceEnabled(false); // a saved trace has no run behind it: its scores can be viewed, not re-traced
  showTrace(trace);
}

// --- images for the next run: picked files read in the page as data URIs (the server never opens a path) --

function showImagePicker(info) {
  const { max_images: most, max_image_bytes: bytes } = info.limits;
  const kinds = info.images.types.map((type) => type.replace("image/", "")).join(", ");
  $("images-hint").textContent = `shown to the model before the prompt · up to ${most}, each at most ${formatBytes(bytes)} (${kinds})`;
  $("image-picker").hidden = false;
}

async function pickImages(event) {
  const files = [...event.target.files];
  event.target.value = "";
  const { max_images: most, max_image_bytes: bytes } = state.info.limits;
  const problems = [];
  for (const file of files) {
    if (state.images.length >= most) {
      problems.push(`this server takes at most ${most} images per run: ${file.name} was left out`);
      continue;
    }
    if (!state.info.images.types.includes(file.type)) {
      problems.push(`${file.name} is not a PNG, JPEG, WebP or GIF image`);
    } else if (file.size > bytes) {
      problems.push(`${file.name} has ${formatBytes(file.size)}; this server takes at most ${formatBytes(bytes)} per image`);
    } else {
      state.images.push({ name: file.name, uri: await readAsDataUri(file) });
    }
  }
  drawThumbs();
  showError(problems.length > 0 ? problems.join("; ") : null);
}

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// One thumbnail per picked image, each with a remove button; after a removal the focus goes to the next one.
function drawThumbs(focusAt = null) {
  const list = $("thumbs");
  list.replaceChildren(
    ...state.images.map((image, index) => {
      const item = document.createElement("li");
      const thumb = document.createElement("img");
      thumb.src = image.uri;
      thumb.alt = image.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.title = `Remove ${image.name}`;
      remove.setAttribute("aria-label", `Remove ${image.name}`);
      remove.addEventListener("click", () => {
        state.images.splice(index, 1);
        drawThumbs(index);
      });
      const name = document.createElement("span");
      name.className = "thumb-name";
      name.textContent = image.name;
      item.append(thumb, remove, name);
      return item;
    }),
  );
  if (focusAt !== null) {
    const buttons = list.querySelectorAll(".remove");
    (buttons[Math.min(focusAt, buttons.length - 1)] || $("images")).focus();
  }
}

function formatBytes(bytes) {
  return bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} kB`;
}

function setTraceEnabled(enabled) {
  for (const element of $("trace-form").elements) element.disabled = !enabled;
  $("span-hint").hidden = !enabled;
}

// --- drawing ----------------------------------------------------------------------------------------

function showTokens(tokens, promptLength) {
  const special = new RegExp(`^(?:${state.info.special_token_pattern})$`);
  const make = (token, index) => {
    const element = document.createElement("span");
    element.className = special.test(token) ? "t special" : "t";
    element.dataset.index = index;
    element.textContent = token.replace(/\n/g, "↵\n");
    return element;
  };
  $("prompt-tokens").replaceChildren(...tokens.slice(0, promptLength).map((t, i) => make(t, i)));
  $("generation-tokens").replaceChildren(...tokens.slice(promptLength).map((t, i) => make(t, i + promptLength)));
}

function showTrace(trace) {
  state.trace = trace;
  if (state.view !== "combined" && state.view >= trace.hop_scores.length) state.view = "combined";
  // The box keeps what was asked (a spec stays a spec, for the next run too); the positions it
  // resolved to on this run are shown beside it
  $("span-resolved").textContent = `→ tokens ${trace.span[0]}-${trace.span[1]}`;
  drawTabs();
  drawView();
  drawTop();
  drawSources();
  drawImages();
  $("export-json").href = `/api/traces/${trace.trace_id}.json`;
  $("export-html").href = `/api/traces/${trace.trace_id}.html`;
  const seconds = Object.entries(trace.timings).map(([name, s]) => `${name.replace(/_s$/, "")} ${s.toFixed(3)} s`);
  $("timings").textContent = `${trace.method}, ${trace.hops} hop(s) · ${seconds.join(" · ")}`;
}

function drawTabs() {
  const trace = state.trace;
  const tabs = [["combined", "Combined", null]];
  trace.hop_scores.forEach((_, hop) => tabs.push([hop, `Hop ${hop}`, trace.rho[hop]]));
  $("views").replaceChildren(
    ...tabs.map(([view, label, rho]) => {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.setAttribute("role", "tab");
      tab.dataset.view = String(view);
      const selected = view === state.view;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      tab.append(label);
      if (rho !== null) {
        const bar = document.createElement("span");
        bar.className = "rho-bar";
        bar.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "rho-fill";
        fill.style.width = `${Math.max(0, Math.min(1, rho)) * 100}%`;
        bar.append(fill);
        const value = document.createElement("span");
        value.className = "rho";
        value.textContent = `ρ${subscript(view)} ${rho.toFixed(2)}`;
        tab.append(bar, value);
        tab.title = `ρ${subscript(view)} = ${rho.toFixed(4)}: the share of the score mass that flowed through the reasoning up to hop ${view}`;
      }
      tab.addEventListener("click", () => {
        state.view = view;
        drawTabs();
        drawView();
        $("views").querySelector('[aria-selected="true"]').focus();
      });
      return tab;
    }),
  );
}

function moveBetweenTabs(event) {
  const tabs = [...$("views").querySelectorAll('[role="tab"]')];
  const at = tabs.indexOf(document.activeElement);
  if (at < 0) return;
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  tabs[(at + step + tabs.length) % tabs.length].click();
}

function drawView() {
  const trace = state.trace;
  const combined = state.view === "combined";
  const scores = combined ? trace.scores : trace.hop_scores[state.view];
  // Colour = score / the largest score shown: the prompt's for the combined view, every position's per hop.
  // Template and special tokens (role headers, <|im_start|>, …) are greyed and left out of the scale.
  const template = trace.template || [];
  const shown = scores.map((score, index) => (template[index] ? 0 : score));
  const scaled = combined ? shown.slice(0, trace.prompt_length) : shown;
  const top = Math.max(0, ...scaled);
  const [spanStart, spanEnd] = trace.span;
  const [sinkStart, sinkEnd] = trace.recursive_span;
  const { dark_from: darkFrom, visible_from: visibleFrom } = state.info.colours;
  for (const element of document.querySelectorAll(".tokens .t")) {
    const index = Number(element.dataset.index);
    const score = scores[index];
    const intensity = top > 0 ? Math.min(1, Math.max(0, shown[index]) / top) : 0;
    element.classList.toggle("template", Boolean(template[index]));
    const coloured = intensity >= visibleFrom;
    element.style.backgroundColor = coloured ? colour(intensity) : "";
    element.classList.toggle("coloured", coloured);
    element.classList.toggle("dark", intensity > darkFrom);
    element.classList.toggle("in-span", index >= spanStart && index < spanEnd);
    element.classList.toggle("sink", !combined && state.view > 0 && index >= sinkStart && index < sinkEnd);
    element.title = `#${index} · score ${formatScore(score)}`;
  }
  $("legend-max").textContent = formatScore(top);
  $("view-note").textContent = combined
    ? "Combined: what the span rests on in the prompt, traced through the reasoning (colour ÷ the prompt's top score)."
    : state.view === 0
      ? "Hop 0: raw scores of every position for the traced span (colour ÷ the top score)."
      : `Hop ${state.view}: raw scores for the reasoning (dotted underline), weighted by hop ${state.view - 1}.`;
}

function drawTop() {
  const list = $("top");
  list.replaceChildren(
    ...state.trace.top.map((entry) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.title = `show token #${entry.position}`;
      const token = document.createElement("span");
      token.textContent = JSON.stringify(entry.token);
      const position = document.createElement("span");
      position.className = "position";
      position.textContent = `#${entry.position}`;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = formatScore(entry.score);
      button.append(token, position, score);
      button.addEventListener("click", () => flash(entry.position));
      item.append(button);
      return item;
    }),
  );
}

// The source panel: the trace's sources (pooled scores); a click marks the source's tokens.
function drawSources() {
  const sources = state.trace.sources;
  if (!sources) {
    $("sources").replaceChildren();
    $("sources-note").textContent = "";
    return;
  }
  fillSelect($("by"), sources.groupings.map((g) => [g, g.replace("_", " "), ""]), sources.grouping);
  $("by").disabled = !state.trace.trace_id;
  // Bar length = |score| ÷ the largest |score| in the list (negative scores drawn in grey)
  const best = Math.max(0, ...sources.rows.map((row) => Math.abs(row.score)));
  $("sources").replaceChildren(
    ...sources.rows.map((row) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.title = `tokens ${row.tokens[0]}…${row.tokens[1] - 1} · score ${formatScore(row.score)}`;
      const name = document.createElement("span");
      name.className = "source-name";
      name.textContent = row.name;
      const share = document.createElement("span");
      share.className = "score";
      share.textContent = `${(100 * row.share).toFixed(1)}%`;
      const track = document.createElement("span");
      track.className = "source-track"; // the full row width; the bar inside it is the score's share
      const bar = document.createElement("span");
      bar.className = row.score < 0 ? "source-bar negative" : "source-bar";
      bar.style.width = `${best > 0 ? (100 * Math.abs(row.score)) / best : 0}%`;
      track.append(bar);
      button.append(name, share, track);
      button.addEventListener("click", () => pickSource(row, button));
      item.append(button);
      return item;
    }),
  );
  const notes = [];
  if (sources.outside > 0.0005) notes.push(`outside every ${sources.grouping.replace("_", " ")}: ${(100 * sources.outside).toFixed(1)}%`);
  notes.push(`template tokens (greyed) hold ${(100 * sources.template_share).toFixed(1)}% of the score`);
  $("sources-note").textContent = notes.join(" · ");
}

function pickSource(row, button) {
  const already = button.classList.contains("picked");
  document.querySelectorAll(".sources .picked").forEach((element) => element.classList.remove("picked"));
  document.querySelectorAll(".tokens .t.in-source").forEach((element) => element.classList.remove("in-source"));
  if (already) return;
  button.classList.add("picked");
  for (const position of row.positions) {
    const element = document.querySelector(`.tokens .t[data-index="${position}"]`);
    if (element) element.classList.add("in-source");
  }
  flash(row.positions[0]);
}

async function regroup() {
  if (!state.trace || !state.trace.trace_id) return;
  const by = $("by").value;
  const sources = await busy("grouping", () =>
    api(`/api/traces/${state.trace.trace_id}/sources?by=${encodeURIComponent(by)}`),
  );
  if (!sources) return;
  state.trace.sources = sources;
  drawSources();
}

function flash(position) {
  const element = document.querySelector(`.tokens .t[data-index="${position}"]`);
  if (!element) return;
  element.scrollIntoView({ block: "nearest" });
  element.classList.add("flash");
  setTimeout(() => element.classList.remove("flash"), 1200);
}

// Each image of the context with its tokens' cells over it, coloured by the combined score; hover a cell for it.
function drawImages() {
  const images = state.trace.images || [];
  $("pictures").hidden = images.length === 0;
  $("pictures").replaceChildren(
    ...images.map((image) => {
      const frame = document.createElement("div");
      frame.className = "pic";
      frame.style.width = `${image.width}px`;
      frame.style.height = `${image.height}px`;
      if (image.preview) {
        const picture = document.createElement("img");
        picture.src = image.preview;
        picture.alt = image.name;
        frame.append(picture);
      }
      const cells = document.createElement("div");
      cells.className = "cells";
      cells.style.gridTemplateColumns = `repeat(${image.cols}, 1fr)`;
      cells.style.gridTemplateRows = `repeat(${image.rows}, 1fr)`;
      cells.append(
        ...image.cells.map((cell) => {
          const element = document.createElement("span");
          element.dataset.pos = cell.position;
          element.title = `${image.name} · row ${cell.row}, col ${cell.col} · #${cell.position} · score ${formatScore(cell.score)}`;
          if (cell.intensity >= state.info.colours.visible_from) {
            element.style.backgroundColor = colour(cell.intensity);
            element.style.opacity = String(0.2 + 0.6 * cell.intensity); // the picture stays visible under it
          }
          return element;
        }),
      );
      frame.append(cells);
      const caption = document.createElement("figcaption");
      caption.textContent = `${image.name} · ${image.rows}×${image.cols} tokens · ${(100 * image.share).toFixed(1)}% of the context`;
      const readout = document.createElement("p");
      readout.className = "cell-readout";
      readout.setAttribute("aria-live", "polite");
      readout.textContent = "hover a cell (or focus the picture and use the arrow keys) for its score";
      readCells(image, cells, readout);
      const figure = document.createElement("figure");
      figure.className = "picture";
      figure.append(frame, caption, readout);
      return figure;
    }),
  );
}

// A cell's row, column, position and score under the picture, for the cell under the mouse or the one the
// arrow keys moved to (the picture's grid takes the focus as one stop).
function readCells(image, cells, readout) {
  cells.tabIndex = 0;
  cells.setAttribute("role", "group");
  cells.setAttribute("aria-label", `${image.name}: ${image.rows}×${image.cols} token cells; arrow keys read them`);
  const pointAt = (index) => {
    for (const element of cells.querySelectorAll(".current")) element.classList.remove("current");
    cells.children[index].classList.add("current");
    cells.dataset.current = String(index);
    const cell = image.cells[index];
    readout.textContent = `row ${cell.row}, col ${cell.col} · #${cell.position} · score ${formatScore(cell.score)}`;
  };
  cells.addEventListener("mouseover", (event) => {
    const index = [...cells.children].indexOf(event.target);
    if (index >= 0) pointAt(index);
  });
  cells.addEventListener("keydown", (event) => {
    const step = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0] }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const at = cells.dataset.current === undefined ? -1 : Number(cells.dataset.current);
    if (at < 0) return pointAt(0); // the first arrow press reads the top-left cell
    const row = Math.min(image.rows - 1, Math.max(0, Math.floor(at / image.cols) + step[0]));
    const col = Math.min(image.cols - 1, Math.max(0, (at % image.cols) + step[1]));
    pointAt(row * image.cols + col);
  });
}

function colour(intensity) {
  const stops = state.info.colours.stops;
  for (let i = 1; i < stops.length; i++) {
    const [right, high] = stops[i];
    if (intensity <= right) {
      const [left, low] = stops[i - 1];
      const t = (intensity - left) / (right - left);
      return `rgb(${low.map((a, k) => Math.round(a + t * (high[k] - a))).join(",")})`;
    }
  }
  return `rgb(${stops[stops.length - 1][1].join(",")})`;
}

function formatScore(score) {
  return Math.abs(score) >= 0.01 || score === 0 ? score.toFixed(3) : score.toExponential(2);
}

function subscript(number) {
  return String(number).replace(/\d/g, (d) => "₀₁₂₃₄₅₆₇₈₉"[d]);
}

document.addEventListener("DOMContentLoaded", start);
