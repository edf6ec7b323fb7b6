// The web chat: an OpenAI-style client of this server (streamed /v1/chat/completions with the whole history),
// which shows under each answer the adapter version that wrote it and whether your reaction to it was learned.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: "", user: "", messages: [], conversation: null, annotations: {}, busy: false };

function headers() {
  return { "Authorization": "Bearer " + state.key, "Content-Type": "application/json" };
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function sampleText(sample) {
  if (!sample) return "";
  if (sample.state === "trained") return "your reply was learned in version " + sample.learned_in_version;
  if (sample.state === "rejected") return "your reply was not learned (a safeguard stopped that update)";
  return "your reply is waiting to be learned";
}

function render() {
  const box = $("messages");
  box.replaceChildren();
  state.messages.forEach((message, index) => {
    const div = document.createElement("div");
    div.className = "msg " + message.role;
    div.textContent = message.content;
    const note = state.annotations[index];
    if (message.role === "assistant" && note) {
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.dataset.adapterVersion = note.adapter_version;
      meta.textContent = "written by adapter " + note.adapter + " v" + note.adapter_version;
      if (note.sample) {
        const learned = document.createElement("span");
        learned.className = note.sample.state === "trained" ? "learned" : note.sample.state;
        learned.dataset.sampleState = note.sample.state;
        learned.textContent = " · " + sampleText(note.sample);
        meta.appendChild(learned);
      }
      div.appendChild(meta);
    }
    box.appendChild(div);
  });
}

async function refresh() {
  if (!state.key || !state.user) return;
  const user = encodeURIComponent(state.user);
  const me = await fetch("/v1/me?user=" + user, { headers: headers() });
  if (me.ok) {
    const body = await me.json();
    const s = body.samples;
    const total = s.pending + s.claimed + s.trained + s.rejected;
    $("stats").dataset.total = total;
    $("stats").dataset.trained = s.trained;
    $("stats").textContent = "samples from you: " + total + " (waiting " + (s.pending + s.claimed) +
      ", learned " + s.trained + ", not learned " + s.rejected + ") · you are served by adapter " +
      body.adapter + " v" + body.adapter_version;
  }
  if (!state.conversation) return;
  const reply = await fetch("/v1/conversations/" + state.conversation + "?user=" + user, { headers: headers() });
  if (!reply.ok) return;
  const conversation = await reply.json();
  state.annotations = {};
  conversation.messages.forEach((message, index) => {
    if (message.generation_id && index < state.messages.length) state.annotations[index] = message;
  });
  render();
}

// Reads OpenAI's server-sent events; calls onChunk with each parsed chunk.
async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

async function send(text) {
  state.messages.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "" };
  state.messages.push(answer);
  render();
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: state.model, user: state.user, stream: true,
                           messages: state.messages.slice(0, -1) }),
  });
  if (!response.ok) {
    state.messages.splice(-2, 2);
    render();
    const body = await response.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || response.statusText);
  }
  await readEvents(response, (chunk) => {
    const choice = chunk.choices[0];
    if (choice && choice.delta && choice.delta.content) {
      answer.content += choice.delta.content;
      render();
    }
    if (chunk.sdpo) state.conversation = chunk.sdpo.conversation_id;
  });
  await refresh();
}

async function useSettings() {
  state.key = $("key").value.trim();
  state.user = $("user").value.trim();
  localStorage.setItem("sdpo-live-user", state.user);
  sessionStorage.setItem("sdpo-live-key", state.key);
  const models = await fetch("/v1/models", { headers: headers() });
  if (!models.ok) throw new Error("the key was refused (" + models.status + ")");
  state.model = (await models.json()).data[0].id;
  showError("");
  await refresh();
}

function guard(action) {
  return async (event) => {
    if (event) event.preventDefault();
    if (state.busy) return;
    state.busy = true;
    $("send").disabled = true;
    try { await action(); } catch (err) { showError(String(err.message || err)); }
    state.busy = false;
    $("send").disabled = false;
  };
}

$("save").addEventListener("click", guard(useSettings));
$("new").addEventListener("click", () => {
  state.messages = []; state.conversation = null; state.annotations = {}; render();
});
$("composer").addEventListener("submit", guard(async () => {
  const text = $("message").value.trim();
  if (!text) return;
  if (!state.model) await useSettings();
  $("message").value = "";
  await send(text);
}));
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("user").value = localStorage.getItem("sdpo-live-user") || "";
$("key").value = sessionStorage.getItem("sdpo-live-key") || "";
setInterval(() => { if (!state.busy) refresh().catch(() => {}); }, 2000);
