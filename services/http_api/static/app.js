// The Multipass web page: log in with an API key (kept in sessionStorage only), list and submit jobs,
// and watch a job live. Events come from GET /v1/jobs/{id}/events read with fetch() so that the key
// travels in the Authorization header (EventSource cannot send headers, and a key in a URL would land
// in logs); the stream is resumed with Last-Event-ID when it drops. Images are fetched with the same
// header and shown from blob: URLs. Plain JavaScript, no build step, no request outside this origin.
"use strict";

const KEY_NAME = "multipass.apiKey";
const MASK_COLOURS = [[230, 60, 60], [40, 140, 230], [40, 180, 90], [220, 160, 20], [160, 80, 200], [20, 180, 180], [230, 110, 180], [120, 120, 120]];
const RECONNECT_MS = 2000;

const $ = (id) => document.getElementById(id);
let currentWatch = null; // AbortController of the job page's event stream

function apiKey() { return sessionStorage.getItem(KEY_NAME); }
function authHeaders(extra) { return Object.assign({ Authorization: "Bearer " + apiKey() }, extra || {}); }
function say(text) { $("status").textContent = text; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: authHeaders((options || {}).headers) }));
  if (response.status === 401) { logout("Your API key was refused; log in again."); throw new Error("unauthenticated"); }
  return response;
}

function errorText(body, reason) {
  if (!body) return "request failed";
  const summary = body.error || "request failed";
  const lines = [summary];
  // Each field's messages, unless the summary already says them (one problem is summarised in full).
  for (const [field, messages] of Object.entries(body.errors || {})) {
    const untold = messages.filter((message) => !summary.includes(message));
    if (untold.length) lines.push(field + ": " + untold.join("; "));
  }
  if (reason === "UNKNOWN_TUNE") {
    lines.push("A <lora:ID:weight> tag names one of your tunes by its id: list them with `multipass tunes list` (or GET /tunes), or run `multipass demo` to register tiny demo tunes.");
  }
  return lines.join("\n");
}

// A refused key logs out (api() says so); nothing else of that failure needs showing.
function quietly(error) { if (error && error.message !== "unauthenticated" && error.name !== "AbortError") say(String(error.message || error)); }

// ---------------------------------------------------------------------------------------- views

function show(view) {
  for (const id of ["login-view", "home-view", "job-view"]) $(id).hidden = id !== view;
  $("logout").hidden = view === "login-view";
}

function route() {
  if (currentWatch) { currentWatch.abort(); currentWatch = null; }
  if (!apiKey()) { show("login-view"); $("api-key").focus(); return; }
  const match = location.hash.match(/^#\/jobs\/([A-Za-z0-9_.-]+)$/);
  if (match) { openJob(match[1]).catch(quietly); return; }
  show("home-view");
  loadJobs().catch(quietly);
}

function logout(message) {
  sessionStorage.removeItem(KEY_NAME);
  say(message || "Logged out.");
  location.hash = "#/";
  route();
}

// ---------------------------------------------------------------------------------------- login

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("login-error").textContent = "";
  const response = await fetch("/v1/jobs?page_size=1", { headers: { Authorization: "Bearer " + key } });
  if (!response.ok) {
    $("login-error").textContent = response.status === 401 ? "That API key was refused." : errorText(await response.json().catch(() => null));
    return;
  }
  sessionStorage.setItem(KEY_NAME, key);
  $("api-key").value = "";
  say("Logged in.");
  route();
});
$("logout").addEventListener("click", () => logout());

// ---------------------------------------------------------------------------------------- jobs list

const JOBS_PAGE = 50;
const LIST_REFRESH_MS = 3000;
let nextJobsPage = ""; // page token of the jobs after those listed ("" when all are)
let listRefresh = null;

// The first page of jobs (``more``: the next page, appended). While a listed job is queued or running and
// only the first page is shown, the list refreshes itself.
async function loadJobs(more) {
  clearTimeout(listRefresh);
  const token = more ? "&page_token=" + encodeURIComponent(nextJobsPage) : "";
  const response = await api("/v1/jobs?page_size=" + JOBS_PAGE + token);
  const body = await response.json();
  const rows = $("jobs-table").querySelector("tbody");
  if (!more) rows.replaceChildren();
  for (const job of body.jobs || []) {
    rows.append(el("tr", { "data-state": stateName(job.state) },
      el("td", {}, el("a", { href: "#/jobs/" + job.job_id, text: job.job_id })),
      el("td", { text: stateName(job.state) }),
      el("td", { text: job.created_at ? new Date(job.created_at).toLocaleString() : "" }),
      el("td", { text: (job.prompt || "").slice(0, 120) })));
  }
  if (!rows.children.length) rows.append(el("tr", {}, el("td", { colspan: 4, text: "No jobs yet." })));
  nextJobsPage = body.next_page_token || "";
  $("more-jobs").hidden = !nextJobsPage;
  const active = rows.querySelector('[data-state="queued"], [data-state="running"]');
  if (active && !more && rows.children.length <= JOBS_PAGE) {
    listRefresh = setTimeout(() => { if (!$("home-view").hidden) loadJobs().catch(quietly); }, LIST_REFRESH_MS);
  }
}
$("refresh-jobs").addEventListener("click", () => loadJobs().catch(quietly));
$("more-jobs").addEventListener("click", () => loadJobs(true).catch(quietly));

function stateName(state) { return (state || "").replace("JOB_STATE_", "").toLowerCase(); }

// ---------------------------------------------------------------------------------------- submit

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("submit-error").textContent = "";
  const params = {};
  for (const name of ["steps", "w", "h", "cfg_scale"]) if ($(name).value !== "") params[name] = $(name).value;
  for (const line of $("extra-params").value.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) params[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  const body = { prompt: $("prompt").value, params };
  if ($("num_images").value !== "") body.num_images = Number($("num_images").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const file = $("input-image").files[0];
  if (file) {
    // Uploaded first; the job keeps its own copy, so the upload is deleted once the job is submitted.
    const uploaded = await api("/v1/uploads", { method: "POST", headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": file.name.replace(/[^\x20-\x7e]/g, "_") }, body: file });
    const upload = await uploaded.json().catch(() => null);
    if (uploaded.status !== 201) { $("submit-error").textContent = "Input image: " + errorText(upload); $("submit-error").focus(); return; }
    body.input_image_id = upload.image_id;
  }
  const response = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (body.input_image_id) api("/v1/uploads/" + body.input_image_id, { method: "DELETE" }).catch(() => {});
  const answer = await response.json().catch(() => null);
  if (response.status !== 201) {
    $("submit-error").textContent = errorText(answer, response.headers.get("X-Multipass-Error-Reason"));
    $("submit-error").focus();
    return;
  }
  say("Job " + answer.job_id + " submitted.");
  location.hash = "#/jobs/" + answer.job_id;
});

// ---------------------------------------------------------------------------------------- job page

async function blobUrl(url) {
  const response = await api(url);
  if (!response.ok) throw new Error("could not load " + url + ": HTTP " + response.status);
  return URL.createObjectURL(await response.blob());
}

function imageBlock(index) {
  let block = $("image-" + index);
  if (block) return block;
  block = el("section", { id: "image-" + index, class: "image-block", "aria-label": "Image " + index },
    el("h3", { text: "Image " + index }),
    el("h4", { text: "Masks over the base image" }),
    el("div", { class: "overlay-stack", id: "overlay-" + index }),
    el("div", { class: "mask-toggles", id: "toggles-" + index, role: "group", "aria-label": "Show or hide each person's mask" }),
    el("h4", { text: "Passes" }),
    el("div", { class: "passes-grid", id: "passes-" + index }),
    el("div", { class: "final", id: "final-" + index }));
  const blocks = $("job-images");
  const later = [...blocks.children].find((child) => Number(child.id.slice(6)) > index);
  blocks.insertBefore(block, later || null);
  return block;
}

async function showPassImage(index, name, url) {
  imageBlock(index);
  const grid = $("passes-" + index);
  if (grid.querySelector(`[data-pass="${CSS.escape(name)}"]`)) return;
  const figure = el("figure", { "data-pass": name });
  grid.append(figure);
  const src = await blobUrl(url);
  figure.append(el("img", { src, alt: `Output of pass ${name}, image ${index}`, class: "pass-image" }), el("figcaption", { text: name }));
  if (name === "base") setOverlayBase(index, src);
}

function setOverlayBase(index, src) {
  const stack = $("overlay-" + index);
  let base = stack.querySelector("img.overlay-base");
  if (!base) { base = el("img", { class: "overlay-base", alt: `Base image ${index} under the person masks` }); stack.prepend(base); }
  base.src = src;
}

async function colouredMask(url, colour) {
  const response = await api(url);
  const bitmap = await createImageBitmap(await response.blob());
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width; canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const level = (data[i] + data[i + 1] + data[i + 2]) / 3;
    data[i] = colour[0]; data[i + 1] = colour[1]; data[i + 2] = colour[2];
    data[i + 3] = Math.round(level * 0.55);
  }
  context.putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return URL.createObjectURL(blob);
}

async function showMask(index, mask, url) {
  imageBlock(index);
  const stack = $("overlay-" + index);
  if (stack.querySelector(`[data-mask="${CSS.escape(mask)}"]`)) return;
  const person = Number((mask.match(/(\d+)$/) || [0, stack.querySelectorAll(".mask-overlay").length])[1]);
  const colour = MASK_COLOURS[person % MASK_COLOURS.length];
  const overlay = el("img", { class: "mask-overlay", "data-mask": mask, alt: `Mask of ${mask}, image ${index}` });
  stack.append(overlay);
  overlay.src = await colouredMask(url, colour);
  const id = `toggle-${index}-${mask}`;
  const box = el("input", { type: "checkbox", id, checked: true });
  box.addEventListener("change", () => { overlay.hidden = !box.checked; });
  const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = `rgb(${colour.join(",")})`; // CSSOM, which the page's CSP allows
  const toggles = $("toggles-" + index);
  toggles.append(el("label", { for: id, "data-mask": mask }, box, swatch, `Show mask ${mask}`));
  // In person order, whichever mask loaded first.
  const sorted = [...toggles.children].sort((a, b) => (a.dataset.mask || "").localeCompare(b.dataset.mask || "", undefined, { numeric: true }));
  toggles.replaceChildren(...sorted);
}

async function showFinal(index, url) {
  imageBlock(index);
  const holder = $("final-" + index);
  if (holder.querySelector("img")) return;
  const src = await blobUrl(url);
  holder.replaceChildren(el("h4", { text: "Final image" }), el("img", { src, alt: `Final image ${index}`, class: "final-image", id: "final-image-" + index }));
}

const ENDED = ["succeeded", "failed", "partial", "cancelled"];

function renderJob(job) {
  const state = stateName(job.state);
  const ended = ENDED.includes(state);
  $("job-state").textContent = state;
  // The zip holds the images stored so far: offered once the job has ended. Cancel while it runs.
  $("download-zip").disabled = !ended;
  $("cancel-job").hidden = ended;
  $("job-progress").value = job.progress || 0;
  $("job-warnings").replaceChildren(...(job.warnings || []).map((text) => el("li", { text })));
  $("job-error").textContent = job.error ? (job.error.message || JSON.stringify(job.error)) : "";
  const rows = $("passes-table").querySelector("tbody");
  rows.replaceChildren();
  for (const image of job.images || []) {
    for (const pass of image.passes || []) {
      const seconds = pass.started_at && pass.finished_at ? ((Date.parse(pass.finished_at) - Date.parse(pass.started_at)) / 1000).toFixed(2) : "";
      rows.append(el("tr", { "data-pass-row": `${image.index || 0}/${pass.name}` },
        el("td", { text: String(image.index || 0) }), el("td", { text: pass.name }),
        el("td", { text: (pass.status || "").replace("PASS_STATUS_", "").toLowerCase() + (pass.cache_hit ? " (cached)" : "") }),
        el("td", { text: seconds })));
    }
  }
  for (const file of job.files || []) {
    if (file.kind === "pass") showPassImage(file.image, file.name, file.url).catch(reportError);
    else if (file.kind === "mask") showMask(file.image, file.name.replace(/^mask-/, ""), file.url).catch(reportError);
    else if (file.kind === "final") showFinal(file.image, file.url).catch(reportError);
  }
}

function reportError(error) { if (error.name !== "AbortError") $("job-error").textContent = String(error.message || error); }

let refreshTimer = null;
function refreshJobSoon(jobId) {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const response = await api("/v1/jobs/" + jobId);
    if (response.ok) renderJob(await response.json());
  }, 250);
}

function handleEvent(jobId, kind, data) {
  if (typeof data.progress === "number") $("job-progress").value = data.progress;
  if (kind === "pass_completed") {
    const done = data.pass_completed;
    const index = done.image_index || 0;
    for (const file of data.files || []) {
      if (file.kind === "mask") showMask(index, file.mask, file.url).catch(reportError);
      else showPassImage(index, file.name, file.url).catch(reportError);
    }
    refreshJobSoon(jobId);
  } else if (kind === "pass_started" || kind === "pass_failed" || kind === "accepted") {
    refreshJobSoon(jobId);
  } else if (kind === "finished") {
    say("Job " + jobId + " " + stateName(data.finished.state) + ".");
    refreshJobSoon(jobId);
  } else if (kind === "error") {
    $("job-error").textContent = errorText(data);
  }
}

function parseEventBlock(block) {
  const event = { id: null, kind: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.kind = value;
    else if (field === "data") event.data.push(value);
  }
  return event.data.length ? event : null;
}

async function watchJob(jobId, controller) {
  let lastId = null;
  while (!controller.signal.aborted) {
    const headers = lastId ? { "Last-Event-ID": lastId } : {};
    let response;
    try {
      response = await api(`/v1/jobs/${jobId}/events`, { headers, signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
      continue;
    }
    if (!response.ok) { $("job-error").textContent = errorText(await response.json().catch(() => null)); return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEventBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.id !== null && event.kind !== "error") lastId = event.id;
          handleEvent(jobId, event.kind, JSON.parse(event.data.join("\n")));
          if (event.kind === "finished" || event.kind === "error") return;
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

async function openJob(jobId) {
  show("job-view");
  say("");
  resetDelete();
  $("job-title").textContent = "Job " + jobId;
  $("job-title").focus();
  // Nothing of the job shown before stays on the page while this one loads.
  $("job-state").textContent = "…";
  $("job-progress").value = 0;
  $("job-warnings").replaceChildren();
  $("job-images").replaceChildren();
  $("passes-table").querySelector("tbody").replaceChildren();
  $("job-error").textContent = "";
  const response = await api("/v1/jobs/" + jobId);
  if (!response.ok) { $("job-error").textContent = errorText(await response.json().catch(() => null)); return; }
  renderJob(await response.json());
  currentWatch = new AbortController();
  watchJob(jobId, currentWatch).catch(reportError);
}

$("download-zip").addEventListener("click", async () => {
  const jobId = location.hash.split("/").pop();
  const response = await api(`/v1/jobs/${jobId}/archive.zip`);
  if (!response.ok) { $("job-error").textContent = errorText(await response.json().catch(() => null)); return; }
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: jobId + ".zip" });
  document.body.append(link);
  link.click();
  link.remove();
  say("Downloaded " + jobId + ".zip.");
});

$("cancel-job").addEventListener("click", async () => {
  const jobId = location.hash.split("/").pop();
  const response = await api("/v1/jobs/" + jobId, { method: "DELETE" }).catch(quietly);
  if (!response) return;
  const body = await response.json().catch(() => null);
  if (!response.ok) { $("job-error").textContent = errorText(body); return; }
  say(body.cancelled ? "Job " + jobId + " cancelled." : "Job " + jobId + " had already ended.");
  refreshJobSoon(jobId);
});

// Deleting asks twice (no dialog): the first click arms the button, the second deletes.
function resetDelete() { const button = $("delete-job"); button.dataset.armed = ""; button.textContent = "Delete job"; }
$("delete-job").addEventListener("click", async () => {
  const button = $("delete-job");
  if (!button.dataset.armed) { button.dataset.armed = "1"; button.textContent = "Click again to delete the job and every image"; return; }
  const jobId = location.hash.split("/").pop();
  const response = await api("/v1/jobs/" + jobId + "?purge=true", { method: "DELETE" }).catch(quietly);
  resetDelete();
  if (!response) return;
  if (!response.ok) { $("job-error").textContent = errorText(await response.json().catch(() => null)); return; }
  say("Job " + jobId + " deleted.");
  location.hash = "#/";
});

window.addEventListener("hashchange", route);
route();
