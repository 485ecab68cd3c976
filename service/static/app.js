// The demo page: sends the chosen photo to /annotate (the image) and /detect (the JSON), and lists
// the model files from /models. Plain browser JavaScript, no build step, same-origin requests only.
"use strict";

const $ = (id) => document.getElementById(id);
let photo = null;      // the File being shown
let detected = null;   // /detect's answer for it
let imageUrl = null;   // object URL of the current annotated image
let latest = 0;        // only the newest request may update the page

function sticker() {
  return document.querySelector('input[name="sticker"]:checked').value;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function problemText(response) {
  // Errors are problem+json (RFC 9457); show their detail.
  try {
    const body = await response.json();
    return body.detail || body.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function form() {
  const data = new FormData();
  data.append("image", photo, photo.name || "photo");
  return data;
}

async function annotate() {
  const query = sticker() ? `?sticker=${encodeURIComponent(sticker())}` : "";
  const response = await fetch(`/annotate${query}`, { method: "POST", body: form(), headers: { Accept: "image/jpeg" } });
  if (!response.ok) throw new Error(await problemText(response));
  return { blob: await response.blob(), faces: Number(response.headers.get("X-Catface-Faces")) };
}

async function detect() {
  const response = await fetch("/detect", { method: "POST", body: form() });
  if (!response.ok) throw new Error(await problemText(response));
  return response.json();
}

function percent(score) {
  return `${Math.round(score * 100)}%`;
}

function showBreeds(body) {
  const list = $("breeds");
  list.replaceChildren();
  if (body.faces.length === 0) {
    const item = document.createElement("li");
    item.textContent = "no cat face found";
    list.append(item);
    return;
  }
  body.faces.forEach((face, i) => {
    const item = document.createElement("li");
    item.className = "face";
    const names = face.breeds.map((b) => `${b.breed} ${percent(b.score)}`).join(", ") || "breed unsure";
    item.append(`#${i + 1}: ${names} `);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `(face ${percent(face.score)})`;
    item.append(score);
    list.append(item);
  });
}

function showImage(blob, faces) {
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(blob);
  $("result").src = imageUrl;
  $("save").href = imageUrl;
  $("faces-count").textContent = faces === 1 ? "1 cat face." : `${faces} cat faces.`;
}

async function run(withDetect) {
  if (!photo) return;
  const mine = ++latest;
  document.body.dataset.state = "busy";
  setStatus(`Looking at ${photo.name || "the photo"}…`);
  try {
    const [image, body] = await Promise.all([annotate(), withDetect ? detect() : Promise.resolve(detected)]);
    if (mine !== latest) return;
    detected = body;
    showImage(image.blob, image.faces);
    showBreeds(body);
    $("json").textContent = JSON.stringify(body, null, 2);
    $("output").hidden = false;
    setStatus(`${photo.name || "Photo"}: ${body.width}×${body.height} pixels.`);
    document.body.dataset.state = "done";
  } catch (error) {
    if (mine !== latest) return;
    setStatus(`Could not analyse the photo: ${error.message}`, true);
    document.body.dataset.state = "error";
  }
}

function choose(file) {
  if (!file) return;
  photo = file;
  detected = null;
  run(true);
}

function link(entry) {
  const item = document.createElement("li");
  const a = document.createElement("a");
  a.href = entry.url;
  a.textContent = entry.file;
  a.setAttribute("download", entry.file);
  item.append(a, ` ${entry.name} ${entry.version}, ${(entry.bytes / 1e6).toFixed(1)} MB`);
  return item;
}

async function listModels() {
  const lists = { coreml: $("coreml"), onnx: $("onnx") };
  try {
    const response = await fetch("/models");
    if (!response.ok) throw new Error(await problemText(response));
    const { models } = await response.json();
    for (const [format, list] of Object.entries(lists)) {
      const entries = models.filter((m) => m.format === format);
      list.replaceChildren(...entries.map(link));
      if (entries.length === 0) {
        const none = document.createElement("li");
        none.className = "muted";
        none.textContent = "not published yet";
        list.append(none);
      }
    }
  } catch (error) {
    for (const list of Object.values(lists)) list.replaceChildren(`unavailable: ${error.message}`);
  }
}

$("file").addEventListener("change", (event) => choose(event.target.files[0]));
document.querySelectorAll('input[name="sticker"]').forEach((radio) => radio.addEventListener("change", () => run(!detected)));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
listModels();
