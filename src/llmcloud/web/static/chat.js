// The chat page: sends prompts over the WebSocket and shows the answer as it streams.
//
// Streamed tokens are added as text nodes, never as HTML. When the answer ends, the
// server sends it rendered as sanitised Markdown, which replaces the streamed text.
//
// A prompt stays a draft until the server sends `accepted`, once the prompt is saved. A
// prompt rejected before that goes back into the prompt box. The draft is also
// kept per chat in sessionStorage, which lasts through a reload or a log-in round trip in
// the same tab. Regenerate likewise keeps the old answer in view until the server accepts.
//
// A page that loads while another tab's answer to the chat streams follows that answer
// through the live socket, from its start, and shows it as if it were its own.
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
  const titleField = document.getElementById("title");
  const loginNotice = document.getElementById("chat-login");
  const answeringNotice = document.getElementById("chat-answering");
  const draftKey = `llmcloud.draft.${chatId}`;
  // The close code of chat_ws.py for a session that ended: 4000 + HTTP 401.
  const LOGIN_AGAIN = 4401;

  let socket = null;
  let pending = [];
  let current = null; // the answer being streamed: {article, content, tokens}
  let generating = false;
  let closedByServer = false; // set by a 44xx close: session ended, account pending, chat gone
  // The send or regenerate that the server has not confirmed yet:
  // {kind: "send", draft, userArticle} or {kind: "regenerate"}.
  let unconfirmed = null;

  function socketUrl(suffix) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/chats/${encodeURIComponent(chatId)}${suffix}`;
  }

  function connect() {
    socket = new WebSocket(socketUrl(""));
    socket.addEventListener("open", () => {
      for (const payload of pending) socket.send(payload);
      pending = [];
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      socket = null;
      pending = [];
      if (unconfirmed) {
        rejectRequest(
          "the connection closed before the server confirmed it; " +
            "reload the page to see whether it was saved",
          { maybeSaved: true },
        );
      } else if (generating) {
        finishWithError("the connection closed during the answer; reload the page");
      }
      if (event.code >= 4400 && event.code < 4500) {
        closedByServer = true;
        setBusy(false);
      }
      if (event.code === LOGIN_AGAIN) loginNotice.hidden = false;
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
    if (unconfirmed && message.type === "accepted") confirmRequest(message);
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
        showTitle(message.title);
        break;
      case "error":
        if (unconfirmed) rejectRequest(message.message);
        else if (generating) finishWithError(message.message, message);
        else showStatusError(message.message);
        break;
    }
  }

  function confirmRequest(message) {
    const request = unconfirmed;
    unconfirmed = null;
    if (request.kind === "send") {
      request.userArticle.classList.remove("unconfirmed");
      request.userArticle.dataset.messageId = message.message_id ?? "";
      storeDraft("", prompt.value);
    } else {
      // The server names the answer it replaced, which another tab may have written.
      const removed = message.removed_message_id;
      const replaced = removed == null ? null : messages.querySelector(
        `.message[data-message-id="${Number(removed)}"]`,
      );
      const last = messages.lastElementChild;
      if (replaced) replaced.remove();
      else if (last && last.dataset.role === "assistant" && !last.dataset.messageId) {
        // A failed answer that was never saved.
        last.remove();
      }
    }
    startAnswer();
  }

  function rejectRequest(text, { maybeSaved = false } = {}) {
    const request = unconfirmed;
    unconfirmed = null;
    if (request.kind === "send") {
      request.userArticle.remove();
      // Text typed while the prompt was on its way stays after the returned draft. A
      // prompt that may have been saved stays marked as sent, so a reload can drop it.
      const typed = prompt.value;
      prompt.value = joinDrafts(request.draft, typed);
      if (maybeSaved) storeDraft(request.draft, typed);
      else storeDraft("", prompt.value);
    }
    setBusy(false);
    showStatusError(`${request.kind === "send" ? "Not sent" : "Not regenerated"}: ${text}`);
  }

  function showTitle(text) {
    title.textContent = text;
    document.title = `${text} · llmcloud`;
    // An input shows its default value until the user edits it, so an edit in progress stays.
    titleField.defaultValue = text;
  }

  function joinDrafts(...texts) {
    return texts.filter(Boolean).join("\n\n");
  }

  // The stored draft keeps apart a prompt sent but not yet accepted and the text typed
  // since, so that a reload can drop the first if the server saved it after all.
  function storeDraft(sent, typed) {
    try {
      if (sent || typed) sessionStorage.setItem(draftKey, JSON.stringify({ sent, typed }));
      else sessionStorage.removeItem(draftKey);
    } catch {
      // Storage may be disabled or full; the draft then lives only in the prompt box.
    }
  }

  function storedDraft() {
    try {
      const draft = JSON.parse(sessionStorage.getItem(draftKey) || "{}");
      return { sent: String(draft.sent || ""), typed: String(draft.typed || "") };
    } catch {
      return { sent: "", typed: "" };
    }
  }

  function restoreDraft() {
    let { sent, typed } = storedDraft();
    const prompts = messages.querySelectorAll(".message.user .content");
    if (sent && prompts.length && prompts[prompts.length - 1].textContent === sent) sent = "";
    storeDraft("", joinDrafts(sent, typed));
    if (!prompt.value) prompt.value = joinDrafts(sent, typed);
  }

  // The newest saved message on the page. The server checks it against the chat's own, so
  // that a tab which missed another tab's messages reloads before it sends.
  function lastMessageId() {
    const articles = messages.querySelectorAll(".message[data-message-id]");
    for (let index = articles.length - 1; index >= 0; index -= 1) {
      const id = Number(articles[index].dataset.messageId);
      if (id) return id;
    }
    return 0;
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

  // Keeps the end of the conversation in view while it grows, unless the user has
  // scrolled up to read something else.
  function atEnd() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
  }

  function reveal(element) {
    element.scrollIntoView({ block: "end" });
  }

  function startAnswer() {
    current = addMessage("assistant", "");
    current.article.setAttribute("aria-busy", "true");
    reveal(current.article);
  }

  function appendToken(text) {
    if (!current) startAnswer();
    const following = atEnd();
    current.content.append(document.createTextNode(text));
    if (following) reveal(current.article);
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
      addNote(current.article, `Interrupted: ${message.reason || "stopped by the user"}`);
    } else if (message.reason) {
      addNote(current.article, `Cut off: ${message.reason}`);
    }
    endAnswer();
    status.textContent = "";
  }

  function finishWithError(text, message) {
    if (!current) startAnswer();
    if (message && message.html) current.content.innerHTML = message.html;
    if (message && message.message_id != null) current.article.dataset.messageId = message.message_id;
    current.content.className = "content markdown";
    const partial = message ? message.partial : current.tokens > 0;
    current.article.classList.add(partial ? "interrupted" : "error");
    if (!partial && !current.content.textContent) current.content.remove();
    addNote(current.article, `${partial ? "Interrupted" : "Failed"}: ${text}`);
    reveal(current.article);
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
    sendButton.disabled = busy || closedByServer || !model.value;
    regenerateButton.disabled = busy || closedByServer || messages.children.length === 0;
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
    const lastId = lastMessageId();
    const userArticle = addMessage("user", content).article;
    userArticle.classList.add("unconfirmed");
    reveal(userArticle);
    prompt.value = "";
    unconfirmed = { kind: "send", draft: content, userArticle };
    storeDraft(content, "");
    setBusy(true);
    status.textContent = "Sending…";
    send({ type: "send", content, model: model.value, last_message_id: lastId });
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  prompt.addEventListener("input", () => {
    // While a prompt waits for its confirmation, the stored draft keeps it too.
    const sent = unconfirmed && unconfirmed.kind === "send" ? unconfirmed.draft : "";
    storeDraft(sent, prompt.value);
  });

  stopButton.addEventListener("click", () => send({ type: "stop" }));

  regenerateButton.addEventListener("click", () => {
    if (generating) return;
    unconfirmed = { kind: "regenerate" };
    setBusy(true);
    status.textContent = "Sending…";
    send({ type: "regenerate", model: model.value, last_message_id: lastMessageId() });
  });

  // Follows the answer that another tab was writing when this page loaded, then stops:
  // a later answer's prompt is not on this page.
  function follow() {
    const live = new WebSocket(socketUrl("/live"));
    let following = false;
    let ended = false;
    function end(text) {
      ended = true;
      live.close();
      answeringNotice.replaceChildren(text);
      if (!text) answeringNotice.remove();
    }
    live.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (ended) return;
      if (message.type === "watching") {
        if (!message.answering) {
          // The answer ended between the page's render and now, so it may be missing.
          end("The answer that was being written when this page loaded has ended. ");
          showSavedMessages();
          return;
        }
        following = true;
        answeringNotice.textContent =
          "An answer to this chat is being written in another tab; it shows below as it streams.";
        setBusy(true);
        stopButton.disabled = true;
        status.textContent = "Answering in another tab…";
        return;
      }
      if (!following) return;
      if (message.type === "token") {
        appendToken(message.text);
        status.textContent = "Answering in another tab…";
      } else if (message.type === "title") {
        showTitle(message.title);
      } else if (message.type === "done") {
        finish(message);
        end("");
      } else if (message.type === "error") {
        finishWithError(message.message, message);
        end("");
      }
    });
    live.addEventListener("close", (event) => {
      if (ended) return;
      if (following) {
        finishWithError("the connection closed during the answer; reload the page");
      }
      end("Following the other tab's answer stopped. Reload the page to see it.");
      if (event.code === LOGIN_AGAIN) loginNotice.hidden = false;
    });
  }

  // Replaces the conversation with the one saved now, or asks for a reload if that fails
  // or the user has started a new request meanwhile.
  async function showSavedMessages() {
    try {
      const response = await fetch(location.pathname, { headers: { Accept: "text/html" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const saved = page.getElementById("messages");
      if (!saved || generating || unconfirmed) throw new Error("the page has changed");
      messages.replaceChildren(...saved.children);
      answeringNotice.remove();
      setBusy(false);
    } catch {
      const reload = document.createElement("a");
      reload.href = location.pathname;
      reload.textContent = "Reload";
      answeringNotice.append(reload, " to see it.");
    }
  }

  restoreDraft();
  connect();
  if (answeringNotice) follow();
  messages.lastElementChild?.scrollIntoView({ block: "end" });
})();
