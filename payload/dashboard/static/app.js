// The dashboard's only script: live fragments, VM console logs and wizard steps. Pages work without it (every
// step of a wizard is then shown at once, and a job's page shows its state when loaded).
"use strict";

// An element with data-live="<url>" is replaced by that URL's fragment, again and again, until
// the fragment carries data-final. The job fragment answers when its job ends, so the loop
// follows a job without a reload and without a fixed delay.
function follow(el) {
  const url = el.dataset.live;
  const every = parseInt(el.dataset.every || "1000", 10);
  async function once() {
    let res;
    try {
      res = await fetch(url, { credentials: "same-origin", redirect: "manual" });
    } catch (e) {
      setTimeout(once, every * 3);
      return;
    }
    if (res.type === "opaqueredirect" || res.status === 401) {
      window.location.reload();
      return;
    }
    if (res.ok) {
      el.innerHTML = await res.text();
      if (el.querySelector("[data-final]")) {
        el.dataset.done = "1";
        return;
      }
    }
    setTimeout(once, every);
  }
  once();
}

// An element with data-console-log="<url>" holds a VM's console log in its <pre>: the log is
// asked again from data-offset every 1.5 s (at once while there is more), and what is new is
// appended as text, never as markup. A log that was truncated or rotated starts again.
const CONSOLE_KEPT = 1 << 20;
function followConsole(el) {
  const url = el.dataset.consoleLog;
  const pre = el.querySelector("pre");
  const status = el.querySelector("[aria-live]");
  const every = 1500;
  async function once() {
    const offset = parseInt(el.dataset.offset || "0", 10);
    let res, body;
    try {
      res = await fetch(url + "?offset=" + offset, { credentials: "same-origin", redirect: "manual" });
      if (res.type === "opaqueredirect" || res.status === 401) {
        window.location.reload();
        return;
      }
      body = await res.json();
    } catch (e) {
      status.textContent = "The console log cannot be read now; trying again.";
      setTimeout(once, every * 3);
      return;
    }
    if (!res.ok) {
      const err = body.error || {};
      status.textContent = (err.message || "the console log cannot be read") + " (" + (err.code || res.status) + ")";
      setTimeout(once, every * 3);
      return;
    }
    status.textContent = "";
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (body.restarted) pre.textContent = "";
    if (body.text) {
      pre.appendChild(document.createTextNode(body.text));
      if (pre.textContent.length > CONSOLE_KEPT) pre.textContent = pre.textContent.slice(-CONSOLE_KEPT);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    el.dataset.offset = String(body.nextOffset);
    setTimeout(once, body.nextOffset < body.size ? 0 : every);
  }
  setTimeout(once, every);
}

// A form.wizard shows one fieldset.step at a time; Next checks the step's fields first.
function wizard(form) {
  const steps = Array.from(form.querySelectorAll("fieldset.step"));
  const prev = form.querySelector("[data-step=prev]");
  const next = form.querySelector("[data-step=next]");
  const submit = form.querySelector("button[type=submit]");
  const marks = Array.from(form.querySelectorAll("ol.steps li"));
  let at = 0;
  // A refused submission comes back on the step holding the refused field.
  const invalid = form.querySelector(".invalid");
  if (invalid) {
    const i = steps.findIndex((s) => s.contains(invalid));
    if (i >= 0) at = i;
  }
  function show() {
    steps.forEach((s, i) => { s.hidden = i !== at; });
    marks.forEach((m, i) => { if (i === at) m.setAttribute("aria-current", "step"); else m.removeAttribute("aria-current"); });
    prev.hidden = at === 0;
    next.hidden = at === steps.length - 1;
    submit.hidden = at !== steps.length - 1;
    const first = steps[at].querySelector("input:not([type=hidden]), select, textarea");
    if (first && document.activeElement !== document.body) first.focus();
  }
  next.addEventListener("click", () => {
    const fields = Array.from(steps[at].querySelectorAll("input, select, textarea"));
    for (const f of fields) {
      if (!f.closest("[hidden]") && !f.checkValidity()) { f.reportValidity(); return; }
    }
    if (at < steps.length - 1) { at += 1; show(); }
  });
  prev.addEventListener("click", () => { if (at > 0) { at -= 1; show(); } });
  show();
}

// The L3 wizard's IP range step: a range or a CIDR.
function ipMode(form) {
  const radios = Array.from(form.querySelectorAll("input[name=ipMode]"));
  if (radios.length === 0) return;
  function show() {
    const mode = (radios.find((r) => r.checked) || radios[0]).value;
    form.querySelectorAll("[data-mode]").forEach((d) => { d.hidden = d.dataset.mode !== mode; });
  }
  radios.forEach((r) => r.addEventListener("change", show));
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
  document.querySelectorAll("[data-console-log]").forEach(followConsole);
  document.querySelectorAll("form.wizard").forEach((f) => { ipMode(f); wizard(f); });
});
