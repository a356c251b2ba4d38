// hwsched dashboard: swaps in the sections the server sends (server-sent events), and the
// three buttons per socket once logged in. No library; nothing secret lives here (the session
// cookie is HttpOnly; the CSRF token comes from /api/session, readable by this origin only).
"use strict";

(() => {
  const session = { loginEnabled: false, loggedIn: false, csrf: null };
  const byId = (id) => document.getElementById(id);
  const ACTIONS = { on_1h: "on for 1 h", off: "off", auto: "back to plan" };

  function say(text, bad) {
    const line = byId("message");
    line.textContent = text;
    line.className = "message" + (text ? (bad ? " bad" : " ok") : "");
  }

  function applyControls() {
    const why = session.loginEnabled ? "log in to use the buttons" : "read-only: no password is set";
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.disabled = !session.loggedIn;
      button.title = session.loggedIn ? "" : why;
    }
  }

  function showSession() {
    byId("login-form").hidden = !session.loginEnabled || session.loggedIn;
    byId("logout").hidden = !session.loggedIn;
    byId("login-state").textContent = session.loggedIn
      ? "logged in"
      : session.loginEnabled ? "" : "read-only";
    document.body.classList.toggle("logged-in", session.loggedIn);
    applyControls();
  }

  async function refreshSession() {
    try {
      const response = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
      const data = await response.json();
      session.loginEnabled = Boolean(data.login_enabled);
      session.loggedIn = Boolean(data.logged_in);
      session.csrf = data.csrf || null;
    } catch (err) {
      session.loggedIn = false;
    }
    showSession();
  }

  async function post(url, body) {
    const headers = { "Content-Type": "application/json" };
    if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers,
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (err) {
      data = {};
    }
    return [response, data];
  }

  let scrolled = false;

  function showNow() {
    // On a narrow screen the timeline scrolls sideways: bring "now" into view, once.
    const wrap = byId("sec-timeline");
    const svg = wrap.querySelector("svg");
    if (scrolled || !svg || wrap.scrollWidth <= wrap.clientWidth) return;
    const box = svg.viewBox.baseVal;
    const x = (Number(svg.dataset.nowX) / box.width) * svg.clientWidth;
    wrap.scrollLeft = Math.max(0, x - wrap.clientWidth / 2);
    scrolled = true;
  }

  function swap(sections) {
    for (const [name, html] of Object.entries(sections)) {
      const element = byId("sec-" + name);
      if (element) element.innerHTML = html;
    }
    if (sections.timeline) showNow();
    applyControls();
  }

  function connect() {
    const stream = new EventSource("/api/events");
    stream.addEventListener("sections", (event) => {
      swap(JSON.parse(event.data).sections);
      document.body.classList.remove("stale");
    });
    stream.addEventListener("error", () => {
      // EventSource reconnects by itself; meanwhile the page says it is not live.
      document.body.classList.add("stale");
    });
  }

  byId("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = byId("password");
    const [response, data] = await post("/api/login", { password: field.value });
    field.value = "";
    if (response.ok) {
      session.loggedIn = true;
      session.csrf = data.csrf;
      say("Logged in: the buttons work now.", false);
    } else {
      say(data.error || "login failed (" + response.status + ")", true);
    }
    showSession();
  });

  byId("logout").addEventListener("click", async () => {
    await post("/api/logout", {});
    session.loggedIn = false;
    session.csrf = null;
    say("Logged out.", false);
    showSession();
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const socket = button.dataset.socket;
    const action = button.dataset.action;
    button.disabled = true;
    const [response, data] = await post(
      "/api/sockets/" + encodeURIComponent(socket) + "/override",
      { action },
    );
    if (response.ok) {
      say("Sent: " + ACTIONS[action] + " for " + socket.replace(/_/g, " ") + ".", false);
    } else {
      if (response.status === 401) session.loggedIn = false;
      say(data.error || "refused (" + response.status + ")", true);
    }
    showSession();
  });

  refreshSession();
  connect();
})();
