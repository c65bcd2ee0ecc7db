// repsr app: the page. Plain JavaScript, no framework, no CDN: everything this page needs is served by
// `repsr app` itself. Requests that change something carry `X-Repsr: 1` (the server refuses them otherwise).
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = {
  config: null,
  sources: [],        // {id, name, video, width, height, folder}
  folders: [],        // {id, path, count}
  selected: null,     // source id shown in the compare view
  cx: 0.5, cy: 0.5,   // crop centre, fractions of the picture
  modelFile: null,    // {name, scale, denoise} once a model file is checked
  job: null,          // id of the job this page started last
  previewAbort: null,
  leftUrl: null,      // what the left image of the comparison shows now
  previewTimer: null,
  pollTimer: null,
};

function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind === "error" ? "" : "info";
  box.hidden = false;
}
function clearMessage() { $("#message").hidden = true; }

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"X-Repsr": "1", "Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `${path}: answer ${response.status}`}));
  if (!response.ok) throw new Error(data.error || `${path}: answer ${response.status}`);
  return data;
}

// ------------------------------------------------------------------------------------------ adding

async function uploadFiles(files) {
  for (const file of files) {
    // refused here, as the server would: a large file's refusal from the server arrives as a broken
    // connection (it stops reading the body), so the page would say "Failed to fetch"
    const dot = file.name.lastIndexOf(".");
    const suffix = dot > 0 ? file.name.slice(dot).toLowerCase() : "";
    if (!state.config.suffixes.includes(suffix)) {
      showMessage(`${file.name}: not an image or video file name (one of ${state.config.suffixes.join(", ")})`);
      continue;
    }
    const limit = state.config.max_upload_bytes;
    if (file.size > limit) {
      showMessage(`${file.name}: ${(file.size / 2 ** 20).toFixed(1)} MB is over the upload limit of ` +
        `${(limit / 2 ** 20).toFixed(1)} MB (start repsr app with --max-upload-mb to raise it, or add its folder by path)`);
      continue;
    }
    try {
      const response = await fetch("/api/upload", {
        method: "POST",
        headers: {"X-Repsr": "1", "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream"},
        body: file,
      });
      const data = await response.json().catch(() => ({error: `${file.name}: upload failed (${response.status})`}));
      if (!response.ok) throw new Error(data.error);
      addSources([data]);
      clearMessage();
    } catch (error) {
      showMessage(error.message.startsWith(file.name) ? error.message : `${file.name}: ${error.message}`);
    }
  }
}

async function addFolder(event) {
  event.preventDefault();
  const path = $("#folder-path").value.trim();
  try {
    const data = await api("/api/folder", {path});
    state.folders.push({id: data.folder.id, path: data.folder.path, count: data.sources.length});
    addSources(data.sources);
    $("#folder-path").value = "";
    showMessage(`${data.folder.path}: ${data.sources.length} file(s) added`, "info");
  } catch (error) {
    showMessage(error.message);
  }
}

function addSources(sources) {
  state.sources.push(...sources);
  if (!state.selected && sources.length) select(sources[0].id);
  renderSources();
}

async function removeItem(id) {
  await api("/api/remove", {id}).catch((error) => showMessage(error.message));
  state.folders = state.folders.filter((folder) => folder.id !== id);
  state.sources = state.sources.filter((source) => source.id !== id && source.folder !== id);
  if (!state.sources.some((source) => source.id === state.selected)) {
    state.selected = null;
    if (state.sources.length) select(state.sources[0].id);
  }
  renderSources();
}

function renderSources() {
  const list = $("#sources");
  list.replaceChildren();
  for (const folder of state.folders) {
    const item = document.createElement("li");
    item.className = "folder";
    item.dataset.id = folder.id;
    item.innerHTML = `<div class="name"></div><div class="note">${folder.count} file(s), upscaled as one folder</div>`;
    item.querySelector(".name").textContent = "folder " + folder.path;
    item.append(removeButton(folder.id));
    list.append(item);
  }
  for (const source of state.sources) {
    const item = document.createElement("li");
    item.dataset.id = source.id;
    item.className = source.id === state.selected ? "selected" : "";
    const image = document.createElement("img");
    image.loading = "lazy";
    image.src = `/api/thumb/${source.id}`;
    image.alt = source.name;
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = source.name;
    name.title = source.name;
    const info = document.createElement("div");
    info.className = "note";
    info.textContent = source.width ? `${source.width}x${source.height}${source.video ? `, ${source.frames} frames` : ""}` : (source.video ? "video" : "image");
    item.append(image, name, info);
    if (!source.folder) item.append(removeButton(source.id));
    item.addEventListener("click", () => select(source.id));
    list.append(item);
  }
}

function removeButton(id) {
  const button = document.createElement("button");
  button.className = "remove";
  button.type = "button";
  button.textContent = "x";
  button.title = "remove";
  button.addEventListener("click", (event) => { event.stopPropagation(); removeItem(id); });
  return button;
}

function select(id) {
  state.selected = id;
  state.cx = state.cy = 0.5;
  $("#picker-img").src = `/api/thumb/${id}`;
  renderSources();
  schedulePreview(0);
}

// ------------------------------------------------------------------------------------------- model

function kind() { return document.querySelector("input[name=kind]:checked").value; }

function currentModel() {
  const value = $("#model").value;
  if (value === "__file__") return state.modelFile;
  return state.config.models.find((model) => model.name === value) || null;
}

function denoiseValue() {
  const model = currentModel();
  if (!model || !model.denoise || $("#denoise-auto").checked) return "auto";
  return $("#denoise").value;
}

function pickModel() {
  $("#model").value = state.config.picks[kind()][$("#scale").value];
  modelChanged();
}

function modelChanged() {
  const file = $("#model").value === "__file__";
  $("#model-file").hidden = $("#use-model-file").hidden = !file;
  const model = currentModel();
  const slider = $("#denoise");
  const can = Boolean(model && model.denoise);
  $("#denoise-auto").disabled = !can;
  slider.disabled = !can || $("#denoise-auto").checked;
  if (can && model.denoise_default !== null && $("#denoise-auto").checked) slider.value = model.denoise_default;
  $("#denoise-note").textContent = model ? (can ? "" : "no denoise partner: the model runs as it is") : "";
  const value = denoiseValue();
  $("#denoise-value").textContent = value === "auto" ? (can ? `auto (${model.denoise_default})` : "auto") : Number(value).toFixed(2);
  $("#model-name").textContent = model ? model.name + (can ? `, denoise ${value}` : "") : "(choose a model file)";
  $("#after-label").textContent = model ? model.name : "model";
  if (model && model.scale) $("#scale").value = String(model.scale);
  schedulePreview();
}

async function useModelFile() {
  try {
    state.modelFile = await api("/api/model-file", {path: $("#model-file").value.trim()});
    clearMessage();
    modelChanged();
  } catch (error) {
    state.modelFile = null;
    showMessage(error.message);
  }
}

// ----------------------------------------------------------------------------------------- preview

function schedulePreview(delay = 120) {
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(updatePreview, delay);
}

async function fetchImage(url, signal) {
  const response = await fetch(url, {signal});
  if (!response.ok) {
    const data = await response.json().catch(() => ({error: `preview failed (${response.status})`}));
    throw new Error(data.error);
  }
  return {blob: await response.blob(), headers: response.headers};
}

async function updatePreview() {
  const model = currentModel();
  if (!state.selected || !model) return;
  if (state.previewAbort) state.previewAbort.abort();
  const abort = new AbortController();
  state.previewAbort = abort;
  const denoise = denoiseValue();
  const common = `source=${state.selected}&cx=${state.cx.toFixed(4)}&cy=${state.cy.toFixed(4)}&size=${state.config.crop}`;
  const mode = $("#compare-mode").value;
  const left = mode === "bicubic" ? `model=bicubic&scale=${model.scale}` : `model=${encodeURIComponent(mode)}&denoise=auto`;
  const started = performance.now();
  $("#preview-status").textContent = "updating preview...";
  const leftUrl = `/api/preview?${common}&${left}`;
  try {
    // the left side (bicubic or model B) does not move with the denoise slider: fetched only when it changes
    const [after, before] = await Promise.all([
      fetchImage(`/api/preview?${common}&model=${encodeURIComponent(model.name)}&denoise=${denoise}`, abort.signal),
      state.leftUrl === leftUrl ? null : fetchImage(leftUrl, abort.signal),
    ]);
    await Promise.all([setImage($("#after"), after.blob), before && setImage($("#before"), before.blob)]);
    state.leftUrl = leftUrl;
    const millis = Math.round(performance.now() - started);
    const img = $("#after");
    img.dataset.denoise = denoise;
    img.dataset.model = model.name;
    img.dataset.millis = String(millis);
    $("#before-label").textContent = mode === "bicubic" ? "bicubic" : mode;
    const auto = after.headers.get("X-Repsr-Denoise");
    $("#preview-status").textContent = `preview ${millis} ms (model ${after.headers.get("X-Repsr-Millis")} ms ` +
      `on the server, ${after.headers.get("X-Repsr-Precision")})` + (auto ? `; ${auto}` : "");
    drawCropBox(after.headers.get("X-Repsr-Box"), after.headers.get("X-Repsr-Size"));
    applyZoom();
  } catch (error) {
    if (error.name !== "AbortError") {
      $("#preview-status").textContent = "";
      showMessage(error.message);
    }
  }
}

function setImage(img, blob) {
  return new Promise((resolve) => {
    const old = img.src;
    img.onload = () => { if (old.startsWith("blob:")) URL.revokeObjectURL(old); resolve(); };
    img.onerror = () => resolve();
    img.src = URL.createObjectURL(blob);
  });
}

function drawCropBox(box, size) {
  if (!box || !size) return;
  const [x0, y0, x1, y1] = box.split(",").map(Number);
  const [width, height] = size.split(",").map(Number);
  const image = $("#picker-img");
  const fx = image.clientWidth / width, fy = image.clientHeight / height;
  Object.assign($("#crop-box").style, {
    left: `${x0 * fx}px`, top: `${y0 * fy}px`, width: `${(x1 - x0) * fx}px`, height: `${(y1 - y0) * fy}px`,
  });
}

function applyZoom() {
  // "fit": the whole crop in the viewer; 1x, 2x, ...: output pixels shown as squares of that size
  const choice = $("#zoom").value, viewer = $("#viewer");
  for (const img of [$("#after"), $("#before")]) {
    if (!img.naturalWidth) continue;
    const fit = Math.min(viewer.clientWidth / img.naturalWidth, viewer.clientHeight / img.naturalHeight);
    const zoom = choice === "fit" ? fit : Number(choice) / window.devicePixelRatio;
    img.style.width = `${Math.round(img.naturalWidth * zoom)}px`;
  }
  applySplit();
}

function applySplit() {
  const split = Number($("#split").value);
  $("#before").style.clipPath = `inset(0 ${100 - split}% 0 0)`;
  $("#split-line").style.left = `${split}%`;
}

// --------------------------------------------------------------------------------------------- run

async function run() {
  const model = currentModel();
  if (!model) { showMessage("choose a model first"); return; }
  try {
    const job = await api("/api/jobs", {
      sources: state.sources.filter((source) => !source.folder).map((source) => source.id),
      folders: state.folders.map((folder) => folder.id),
      output: $("#output").value.trim(),
      model: model.name,
      denoise: denoiseValue(),
      format: $("#format").value,
      overwrite: $("#overwrite").checked,
    });
    state.job = job.id;
    clearMessage();
    renderJob(job);
    poll();
  } catch (error) {
    showMessage(error.message);
  }
}

async function cancel() {
  if (state.job) await api(`/api/jobs/${state.job}/cancel`, {}).catch((error) => showMessage(error.message));
}

async function poll() {
  clearTimeout(state.pollTimer);
  try {
    const jobs = await api("/api/jobs");
    const mine = jobs.find((job) => job.id === state.job);
    if (mine) renderJob(mine);
    renderQueue(jobs);
    if (jobs.some((job) => job.status === "queued" || job.status === "running")) {
      state.pollTimer = setTimeout(poll, 400);
    }
  } catch (error) {
    showMessage(`lost the server: ${error.message}`);
  }
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return `${Math.ceil(value)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function renderJob(job) {
  $("#progress-box").hidden = false;
  const active = job.status === "queued" || job.status === "running";
  $("#cancel").disabled = !active;
  $("#progress-total").value = job.fraction;
  const running = job.files.find((file) => file.status === "running");
  let text = `${job.status}: ${job.done}/${job.total} file(s), ${Math.round(job.fraction * 100)}%`;
  if (running) {
    text += ` · now ${running.source}`;
    if (running.video) text += ` frame ${running.frames_done}/${running.frames_total || "?"}`;
  }
  if (job.eta !== null) text += ` · about ${seconds(job.eta)} left`;
  if (!active && job.elapsed) text += ` · took ${seconds(job.elapsed)}`;
  $("#progress-text").textContent = text;
  $("#progress-box").dataset.status = job.status;
  const message = [job.model_line, job.message].filter(Boolean).join("\n");
  $("#job-message").textContent = message;
  $("#job-message").className = job.status === "refused" || job.status === "failed" ? "failed" : "";
  const body = $("#outcomes tbody");
  body.replaceChildren();
  for (const file of job.files) {
    const row = document.createElement("tr");
    row.className = `file ${file.status}`;
    const name = document.createElement("td");
    name.textContent = `${file.source} → ${file.target}`;
    const outcome = document.createElement("td");
    outcome.className = file.status;
    let words = file.status;
    if (file.video && file.status === "running") words += ` (${file.frames_done}/${file.frames_total || "?"} frames)`;
    if (file.reason) words += `: ${file.reason}`;
    if (file.detail) words += `: ${file.detail}`;
    outcome.textContent = words;
    const link = document.createElement("td");
    if (file.status === "written") {
      const a = document.createElement("a");
      a.className = "download";
      a.href = `/api/jobs/${job.id}/files/${file.index}`;
      a.download = file.target.split("/").pop();
      a.textContent = "download";
      link.append(a);
    }
    row.append(name, outcome, link);
    body.append(row);
  }
  for (const missing of job.missing) {
    const row = document.createElement("tr");
    row.className = "file failed";
    row.innerHTML = "<td></td><td class=failed></td><td></td>";
    row.children[0].textContent = missing.path;
    row.children[1].textContent = `failed: ${missing.reason}`;
    body.append(row);
  }
  const zip = $("#download-zip");
  zip.hidden = !job.files.some((file) => file.status === "written") || active;
  zip.href = `/api/jobs/${job.id}/zip`;
}

function renderQueue(jobs) {
  const list = $("#queue");
  list.replaceChildren();
  for (const job of jobs.filter((j) => j.status === "queued" || j.status === "running")) {
    const item = document.createElement("li");
    item.textContent = `job ${job.id}: ${job.status}, ${job.total || "?"} file(s), ${job.model}`;
    list.append(item);
  }
}

// ----------------------------------------------------------------------------------------- wiring

async function start() {
  state.config = await api("/api/state");
  const select = $("#model"), compare = $("#compare-mode");
  for (const model of state.config.models) {
    select.add(new Option(`${model.name}${model.default ? " (default)" : ""}`, model.name));
    compare.add(new Option(`model B: ${model.name}`, model.name));
  }
  select.add(new Option("a model file...", "__file__"));
  for (const fmt of state.config.formats) $("#format").add(new Option(fmt, fmt));
  $("#output").value = state.config.output;
  $("#folder-path").placeholder = `or a folder on this machine, under ${state.config.allowed.join(" or ")}`;

  $("#file-input").addEventListener("change", (event) => { uploadFiles([...event.target.files]); event.target.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadFiles([...event.dataTransfer.files]);
  });
  $("#folder-form").addEventListener("submit", addFolder);
  for (const radio of document.querySelectorAll("input[name=kind]")) radio.addEventListener("change", pickModel);
  $("#scale").addEventListener("change", pickModel);
  $("#model").addEventListener("change", modelChanged);
  $("#use-model-file").addEventListener("click", useModelFile);
  $("#denoise-auto").addEventListener("change", modelChanged);
  $("#denoise").addEventListener("input", modelChanged);
  $("#compare-mode").addEventListener("change", () => schedulePreview(0));
  $("#zoom").addEventListener("change", applyZoom);
  $("#split").addEventListener("input", applySplit);
  // drag on the picture itself to move the before/after line
  const moveSplit = (event) => {
    if (!(event.buttons & 1)) return;
    const rect = $("#stack").getBoundingClientRect();
    $("#split").value = String(Math.round(Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1) * 100));
    applySplit();
  };
  $("#stack").addEventListener("pointerdown", moveSplit);
  $("#stack").addEventListener("pointermove", moveSplit);
  $("#picker").addEventListener("click", (event) => {
    const rect = $("#picker-img").getBoundingClientRect();
    state.cx = Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1);
    state.cy = Math.min(Math.max((event.clientY - rect.top) / rect.height, 0), 1);
    schedulePreview(0);
  });
  $("#run").addEventListener("click", run);
  $("#cancel").addEventListener("click", cancel);
  pickModel();
  document.body.dataset.ready = "1";
  poll();
}

start().catch((error) => showMessage(`could not start: ${error.message}`));
