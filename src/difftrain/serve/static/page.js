// difftrain web page: plain JS, no build step. Every string from the user or the server is
// inserted with textContent (never innerHTML); images are base64 PNGs checked before use.
"use strict";

const $ = (id) => document.getElementById(id);
const B64 = /^[A-Za-z0-9+/]+={0,2}$/;
let model = null;
const touched = new Set();

function token() {
  return sessionStorage.getItem("difftrain-token") || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = String(value);
  o.textContent = String(text);
  select.appendChild(o);
}

async function loadModel() {
  let res;
  try {
    res = await fetch("v1/models", { headers: headers() });
  } catch (err) {
    status("cannot reach the server: " + err, true);
    return;
  }
  if (res.status === 401) {
    $("token-row").hidden = false;
    $("model").textContent = "token needed";
    status("This server needs an access token: paste it above, then press Generate.", true);
    return;
  }
  if (!res.ok) {
    status("model list failed: HTTP " + res.status, true);
    return;
  }
  model = (await res.json()).models[0];
  $("model").textContent = "model: " + model.id + " · " + model.resolution + "×" + model.resolution;
  const sampler = $("sampler");
  const chosen = sampler.value;
  sampler.replaceChildren();
  for (const name of model.samplers) option(sampler, name, name);
  // The model's defaults fill only the fields the user has not changed yet.
  sampler.value = touched.has("sampler") && chosen ? chosen : model.defaults.sampler;
  if (!touched.has("steps")) $("steps").value = model.defaults.steps;
  if (!touched.has("guidance")) $("guidance").value = model.defaults.guidance;
  $("steps").max = model.limits.max_steps;
  $("num").max = model.limits.max_num;
  if (model.num_classes) {
    const select = $("class");
    select.replaceChildren();
    option(select, "", "any (one block per class)");
    const names = model.class_names || [];
    for (let i = 0; i < model.num_classes; i++) {
      option(select, i, names[i] !== undefined ? i + ": " + names[i] : String(i));
    }
    $("class-row").hidden = false;
  }
  $("prompt-row").hidden = !model.text_conditioned;
}

function figure(b64, caption) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  if (typeof b64 === "string" && B64.test(b64)) img.src = "data:image/png;base64," + b64;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function body() {
  const b = {
    sampler: $("sampler").value || undefined,
    steps: Number($("steps").value),
    guidance: Number($("guidance").value),
    seed: Number($("seed").value),
    num: Number($("num").value),
  };
  if (!$("class-row").hidden && $("class").value !== "") b.class_label = Number($("class").value);
  if (!$("prompt-row").hidden && $("prompt").value) b.prompt = $("prompt").value;
  if (!$("prompt-row").hidden && $("negative").value) b.negative_prompt = $("negative").value;
  return b;
}

async function generate(event) {
  event.preventDefault();
  if (!$("token-row").hidden) sessionStorage.setItem("difftrain-token", $("token").value);
  if (!model) await loadModel();
  if (!model) return;
  const req = body();
  $("generate").disabled = true;
  status("generating…");
  const t0 = performance.now();
  try {
    const res = await fetch("v1/generate", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(req),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const wait = res.headers.get("Retry-After");
      let msg = "HTTP " + res.status + ": " + (data.error || "request failed");
      if (data.errors) msg += " — " + data.errors.map((e) => e.field + ": " + e.message).join("; ");
      if (wait) msg += " (retry in " + wait + " s)";
      status(msg, true);
      return;
    }
    const wall = ((performance.now() - t0) / 1000).toFixed(2);
    const result = $("result");
    const newest = document.createDocumentFragment();
    result.replaceChildren();
    data.images.forEach((b64, k) => {
      const label = data.labels ? " · class " + data.labels[k] : "";
      const caption = "seed " + data.seeds[k] + " #" + data.indices[k] + label;
      result.appendChild(figure(b64, caption));
      newest.appendChild(figure(b64, caption + " · " + data.seconds + " s"));
    });
    $("gallery").prepend(newest); // newest request first, its images in order
    status(data.images.length + " image(s) in " + data.seconds + " s on the server (" + wall +
      " s here) · " + data.model);
  } catch (err) {
    status("request failed: " + err, true);
  } finally {
    $("generate").disabled = false;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", generate);
  for (const id of ["sampler", "steps", "guidance"]) {
    $(id).addEventListener("input", () => touched.add(id));
  }
  $("random-seed").addEventListener("click", () => {
    $("seed").value = Math.floor(Math.random() * 2147483647);
  });
  loadModel();
});
