// The chat page: sends prompts over the WebSocket and shows the answer as it streams.
//
// Streamed tokens are added as text nodes, never as HTML. When the answer ends, the
// server sends it rendered as sanitised Markdown, which replaces the streamed text.
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root) return;

  const chatId = root.dataset.chatId;
  const maxPrompt = Number(root.dataset.maxPrompt);
  const messages = document.getElementById("messages");
  const form = document.getElementById("prompt-form");
  const prompt = document.getElementById("prompt");
  const model = document.getElementById("model");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerateButton = document.getElementById("regenerate");
  const status = document.getElementById("chat-status");
  const title = document.getElementById("chat-title");

  let socket = null;
  let pending = [];
  let current = null; // the answer being streamed: {article, content, tokens}
  let generating = false;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws/chats/${encodeURIComponent(chatId)}`);
    socket.addEventListener("open", () => {
      for (const payload of pending) socket.send(payload);
      pending = [];
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      socket = null;
      if (generating) finishWithError("the connection closed during the answer; reload the page");
      if (event.code >= 4400 && event.code < 4500) {
        setBusy(false);
        sendButton.disabled = true;
      }
    });
  }

  function send(payload) {
    const text = JSON.stringify(payload);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(text);
      return;
    }
    pending.push(text);
    if (!socket) connect();
  }

  function handle(message) {
    switch (message.type) {
      case "queued":
        status.textContent = `Waiting for a free model server: number ${message.position} in the queue.`;
        break;
      case "started":
        status.textContent = "Answering…";
        break;
      case "token":
        appendToken(message.text);
        break;
      case "done":
        finish(message);
        break;
      case "title":
        title.textContent = message.title;
        document.title = `${message.title} · llmcloud`;
        break;
      case "error":
        if (generating) finishWithError(message.message, message);
        else showStatusError(message.message);
        break;
    }
  }

  function addMessage(role, text) {
    const article = document.createElement("article");
    article.className = `message ${role}`;
    article.dataset.role = role;
    const heading = document.createElement("h2");
    heading.className = "visually-hidden";
    heading.textContent = role === "user" ? "You" : "Answer";
    const content = document.createElement("div");
    content.className = role === "user" ? "content plain" : "content streaming";
    content.textContent = text;
    article.append(heading, content);
    messages.append(article);
    return { article, content, tokens: 0 };
  }

  function startAnswer() {
    current = addMessage("assistant", "");
    current.article.setAttribute("aria-busy", "true");
    setBusy(true);
    status.textContent = "Sending…";
  }

  function appendToken(text) {
    if (!current) startAnswer();
    current.content.append(document.createTextNode(text));
    current.tokens += 1;
    current.article.dataset.tokens = String(current.tokens);
    status.textContent = "Answering…";
  }

  function finish(message) {
    if (!current) startAnswer();
    // The html was sanitised by the server (nh3); it contains no script or event handler.
    current.content.innerHTML = message.html;
    current.content.className = "content markdown";
    current.article.dataset.messageId = message.message_id ?? "";
    if (message.status !== "complete") {
      current.article.classList.add("interrupted");
      addNote(current.article, "Interrupted: stopped by the user");
    }
    endAnswer();
    status.textContent = "";
  }

  function finishWithError(text, message) {
    if (!current) startAnswer();
    if (message && message.html) current.content.innerHTML = message.html;
    current.content.className = "content markdown";
    const partial = message ? message.partial : current.tokens > 0;
    current.article.classList.add(partial ? "interrupted" : "error");
    if (!partial && !current.content.textContent) current.content.remove();
    addNote(current.article, `${partial ? "Interrupted" : "Failed"}: ${text}`);
    endAnswer();
    showStatusError(text);
  }

  function addNote(article, text) {
    const note = document.createElement("p");
    note.className = "message-error";
    note.setAttribute("role", "note");
    note.textContent = text;
    article.append(note);
  }

  function endAnswer() {
    if (current) current.article.removeAttribute("aria-busy");
    current = null;
    setBusy(false);
  }

  function showStatusError(text) {
    status.textContent = text;
    status.classList.add("error");
    setTimeout(() => status.classList.remove("error"), 10000);
  }

  function setBusy(busy) {
    generating = busy;
    sendButton.disabled = busy || !model.value;
    regenerateButton.disabled = busy || messages.children.length === 0;
    stopButton.disabled = !busy;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = prompt.value;
    if (generating) return;
    if (!content.trim()) {
      showStatusError("prompt is empty; type a message before sending");
      return;
    }
    if (content.length > maxPrompt) {
      showStatusError(`prompt has ${content.length} characters; expected at most ${maxPrompt}`);
      return;
    }
    addMessage("user", content);
    prompt.value = "";
    startAnswer();
    send({ type: "send", content, model: model.value });
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => send({ type: "stop" }));

  regenerateButton.addEventListener("click", () => {
    if (generating) return;
    const last = messages.lastElementChild;
    if (last && last.dataset.role === "assistant") last.remove();
    startAnswer();
    send({ type: "regenerate", model: model.value });
  });

  connect();
  messages.lastElementChild?.scrollIntoView({ block: "end" });
})();
