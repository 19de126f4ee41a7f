// The dashboard's only script: live fragments and wizard steps. Pages work without it (every
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
  document.querySelectorAll("form.wizard").forEach((f) => { ipMode(f); wizard(f); });
});
