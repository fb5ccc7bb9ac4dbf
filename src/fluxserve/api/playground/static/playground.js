// The fluxserve playground: a form over the BFL API (POST /v1/<model>, then poll
// polling_url) and a gallery of this browser's results in localStorage. No dependencies.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const form = $("#form");
  const promptEl = $("#prompt");
  const modelEl = $("#model");
  const sizeEl = $("#size");
  const customEl = $("#custom-size");
  const widthEl = $("#width");
  const heightEl = $("#height");
  const stepsEl = $("#steps");
  const guidanceField = $("#guidance-field");
  const guidanceEl = $("#guidance");
  const referencesField = $("#references-field");
  const referencesEl = $("#references");
  const lorasEl = $("#loras");
  const seedEl = $("#seed");
  const countEl = $("#count");
  const keyEl = $("#api-key");
  const generateEl = $("#generate");
  const statusEl = $("#status");
  const galleryEl = $("#gallery");
  const emptyEl = $("#gallery-empty");

  const KEY_STORE = "fluxserve.apiKey";
  const MODEL_STORE = "fluxserve.model";
  const GALLERY_STORE = "fluxserve.gallery";
  const GALLERY_MAX = 50;
  const POLL_MS = 250;
  const POLL_RETRIES = 20; // consecutive network failures before a job is given up
  const REFERENCE_TYPES = ["image/png", "image/jpeg", "image/webp"];
  const REFERENCE_MAX_BYTES = 10 * 1024 * 1024;
  const THUMB_SIDE = 192;
  const MAX_SEED = (1n << 64n) - 1n; // seeds are 64-bit: kept as text, never as a Number

  let models = [];
  let gallery = loadGallery();
  let lastPreset = null;

  // --- small helpers ---------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const capitalise = (text) => text.charAt(0).toUpperCase() + text.slice(1);

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function announce(text) {
    statusEl.textContent = text;
  }

  function headers(json = false) {
    const result = {};
    const key = keyEl.value.trim();
    if (key) result["x-key"] = key;
    if (json) result["content-type"] = "application/json";
    return result;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      const detail = body.detail ?? body.message ?? body.error?.message;
      if (Array.isArray(detail)) {
        return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      }
      if (detail) return String(detail);
    } catch {
      // not JSON: fall through to the status line
    }
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  function randomSeed() {
    return String(crypto.getRandomValues(new Uint32Array(1))[0]);
  }

  // --- models and the form -----------------------------------------------------------

  const currentModel = () => models.find((m) => m.name === modelEl.value);

  async function loadModels() {
    try {
      const response = await fetch("/playground/models", { headers: headers() });
      if (!response.ok) throw new Error(await errorText(response));
      models = await response.json();
      if (!models.length) announce("This server has no text-to-image model loaded.");
    } catch (error) {
      models = [];
      announce(`Could not load the models: ${error.message}`);
    }
    const wanted = modelEl.value || localStorage.getItem(MODEL_STORE);
    modelEl.replaceChildren(
      ...models.map((m) => new Option(m.aliases.length ? `${m.name} (${m.aliases.join(", ")})`
                                                        : m.name, m.name)),
    );
    if (models.some((m) => m.name === wanted)) modelEl.value = wanted;
    generateEl.disabled = !models.length;
    applyModel();
  }

  function applyModel() {
    const model = currentModel();
    if (!model) return;
    localStorage.setItem(MODEL_STORE, model.name);
    stepsEl.max = model.max_steps;
    stepsEl.value = model.default_steps;
    const hasGuidance = model.default_guidance !== null;
    guidanceField.hidden = !hasGuidance;
    guidanceEl.disabled = !hasGuidance;
    if (hasGuidance) guidanceEl.value = model.default_guidance;
    // FLUX.2 models edit reference images; the others take none.
    referencesField.hidden = !model.max_references;
    referencesEl.disabled = !model.max_references;
    $("#references-max").textContent = model.max_references;
    checkReferences();
    const chosen = sizeEl.value || "square";
    sizeEl.replaceChildren(
      ...model.presets.map((p) => new Option(`${capitalise(p.name)} ${p.width}×${p.height}`,
                                             p.name)),
      new Option("Custom…", "custom"),
    );
    sizeEl.value = chosen;
    if (!sizeEl.value) sizeEl.value = "square";
    if (chosen !== "custom") {
      widthEl.value = model.width;
      heightEl.value = model.height;
    }
    applySize();
  }

  function applySize() {
    const custom = sizeEl.value === "custom";
    const preset = currentModel()?.presets.find((p) => p.name === sizeEl.value);
    if (custom && lastPreset) {
      widthEl.value = lastPreset.width; // start the custom size from the last preset
      heightEl.value = lastPreset.height;
    }
    lastPreset = preset || null;
    customEl.hidden = !custom;
    widthEl.disabled = !custom;
    heightEl.disabled = !custom;
  }

  function chosenSize() {
    if (sizeEl.value === "custom") return [Number(widthEl.value), Number(heightEl.value)];
    const preset = currentModel().presets.find((p) => p.name === sizeEl.value);
    return [preset.width, preset.height];
  }

  // Checked in the page before anything is sent: count, type and size of each file.
  function checkReferences() {
    const files = referencesEl.disabled ? [] : [...referencesEl.files];
    const most = currentModel()?.max_references ?? 0;
    let problem = "";
    if (files.length > most) problem = `Choose at most ${most} reference images.`;
    for (const file of files) {
      if (!REFERENCE_TYPES.includes(file.type)) problem = `${file.name} is not a PNG, JPEG or WebP image.`;
      else if (file.size > REFERENCE_MAX_BYTES) problem = `${file.name} is larger than 10 MB.`;
    }
    referencesEl.setCustomValidity(problem);
    return files;
  }

  // "path [scale]" per line; a scale that is not a number is refused in the page.
  function chosenLoras() {
    const loras = [];
    let problem = "";
    for (const line of lorasEl.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const [path, scaleText, ...rest] = line.split(/\s+/);
      const scale = scaleText === undefined ? 1 : Number(scaleText);
      if (rest.length || !Number.isFinite(scale) || scale < -4 || scale > 4) {
        problem = `"${line}": write a path, then a scale from -4 to 4.`;
      }
      loras.push({ path, scale });
    }
    lorasEl.setCustomValidity(problem);
    return loras;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function checkSeed() {
    const text = seedEl.value.trim();
    const valid = !text || (/^\d{1,20}$/.test(text) && BigInt(text) <= MAX_SEED);
    seedEl.setCustomValidity(valid ? "" : "A seed is a whole number from 0 to 2^64 − 1.");
    return text ? BigInt(text) : null;
  }

  // --- submitting and polling ----------------------------------------------------------

  async function generate(event) {
    event.preventDefault();
    const firstSeed = checkSeed();
    const files = checkReferences();
    const loras = chosenLoras();
    if (!form.reportValidity()) return;
    const model = currentModel();
    const references = await Promise.all(files.map(readAsDataUrl));
    const [width, height] = chosenSize();
    const count = Number(countEl.value) || 1;
    const base = {
      prompt: promptEl.value.trim(),
      model: model.name,
      width,
      height,
      steps: Number(stepsEl.value),
      guidance: guidanceEl.disabled ? null : Number(guidanceEl.value),
      references: references.length,
      loras,
    };
    const entries = [];
    for (let i = 0; i < count; i += 1) {
      const seed = firstSeed === null ? randomSeed() : String((firstSeed + BigInt(i)) % (MAX_SEED + 1n));
      entries.push({ ...base, seed, id: `local-${Date.now()}-${i}` });
    }
    const cards = entries.map((entry, i) => card(entry, `Image ${i + 1} of ${count}`));
    // The images go with the request, not into the gallery (localStorage is small).
    const inputs = Object.fromEntries(references.map(
      (uri, i) => [i ? `input_image_${i + 1}` : "input_image", uri]));
    galleryEl.prepend(...cards.map((c) => c.node));
    updateEmpty();
    announce(count === 1 ? "Generating 1 image…" : `Generating ${count} images…`);
    const outcomes = await Promise.all(entries.map((entry, i) => run(entry, cards[i], inputs)));
    const failures = outcomes.filter((outcome) => outcome !== true);
    if (!failures.length) {
      announce(count === 1 ? "Your image is ready." : `All ${count} images are ready.`);
    } else if (count === 1) {
      announce(`Not generated: ${failures[0]}`);
    } else {
      announce(`${count - failures.length} of ${count} images are ready; ` +
               `${failures.length} failed (the message is on each).`);
    }
  }

  // One job: submit, poll, show. Resolves true when its image is ready, else the reason.
  async function run(entry, view, inputs = {}) {
    const { seed, model, guidance, references, loras, ...fields } = entry;
    delete fields.id;
    const payload = { ...fields, ...inputs, output_format: "jpeg" };
    if (loras?.length) payload.loras = loras;
    if (guidance !== null) payload.guidance = guidance;
    // The seed goes in as written: a Number would round seeds past 2^53.
    const body = `${JSON.stringify(payload).slice(0, -1)},"seed":${seed}}`;
    let pollingUrl;
    try {
      const response = await fetch(`/v1/${encodeURIComponent(model)}`, {
        method: "POST", headers: headers(true), body,
      });
      if (!response.ok) return view.fail(`Not submitted: ${await errorText(response)}`);
      const submitted = await response.json();
      pollingUrl = submitted.polling_url;
      view.node.dataset.id = entry.id = submitted.id;
    } catch (error) {
      return view.fail(`Not submitted: ${error.message}`);
    }
    let failures = 0;
    for (;;) {
      let result;
      try {
        const response = await fetch(pollingUrl, { headers: headers(), cache: "no-store" });
        if (!response.ok) return view.fail(await errorText(response));
        result = await response.json();
        failures = 0;
      } catch (error) {
        failures += 1;
        if (failures > POLL_RETRIES) return view.fail(`Lost the server: ${error.message}`);
        await sleep(POLL_MS * 2);
        continue;
      }
      if (result.status === "Pending") {
        view.progress(result.progress ?? 0);
        await sleep(POLL_MS);
        continue;
      }
      if (result.status === "Ready") {
        entry.url = result.result.sample;
        entry.created = Date.now();
        view.ready(entry);
        addToGallery(entry);
        return true;
      }
      const message = result.details?.message;
      return view.fail(message && message !== result.status ? `${result.status}: ${message}` : result.status);
    }
  }

  // --- result cards ----------------------------------------------------------------

  // A card: the image (or progress, or the failure) above its parameters and actions.
  function card(entry, label) {
    const frame = el("div", { class: "frame" });
    frame.style.aspectRatio = `${entry.width} / ${entry.height}`;
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", class: "reuse", text: "Reuse seed", onclick: () => reuse(entry) }));
    const node = el("li", { class: "card" }, frame,
      el("div", { class: "meta" }, el("p", { class: "prompt", text: entry.prompt || "(no prompt)" }),
         params(entry), actions));
    const remove = (name) => el("button", {
      type: "button", class: "remove", "aria-label": name, title: name, text: "✕",
      onclick: () => { removeFromGallery(entry.id); node.remove(); updateEmpty(); promptEl.focus(); },
    });
    let bar;
    let caption;
    const view = {
      node,
      progress(value) {
        if (!bar) return;
        if (value > 0) bar.value = value;
        caption.textContent = value > 0 ? `Generating… ${Math.round(value * 100)}%` : "Queued";
      },
      ready(done) {
        frame.replaceChildren(image(done, node));
        actions.prepend(download(done));
        actions.append(remove("Remove"));
      },
      fail(message) {
        frame.replaceChildren(el("p", { class: "error", text: message }));
        actions.append(remove("Dismiss"));
        announce(`${label}: ${message}`);
        return message;
      },
    };
    if (entry.url) {
      view.ready(entry);
    } else {
      const id = `progress-${Math.random().toString(36).slice(2)}`;
      caption = el("span", { id, text: "Queued" });
      bar = el("progress", { max: "1", "aria-label": `${label} progress`, "aria-describedby": id });
      frame.append(el("div", { class: "waiting" }, caption, bar));
    }
    node.dataset.id = entry.id;
    return view;
  }

  function params(entry) {
    const rows = [
      ["Model", entry.model],
      ["Size", `${entry.width}×${entry.height}`],
      ["Steps", entry.steps],
      ...(entry.guidance !== null && entry.guidance !== undefined ? [["Guidance", entry.guidance]] : []),
      ...(entry.references ? [["References", entry.references]] : []),
      ...(entry.loras?.length ? [["LoRAs", entry.loras.map((l) => `${l.path} @ ${l.scale}`).join(", ")]] : []),
      ["Seed", entry.seed],
    ];
    return el("dl", { class: "params" },
      ...rows.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) }))));
  }

  // The result at its signed URL; once that has expired, the thumbnail kept at load time.
  function image(entry, node) {
    const img = el("img", { alt: entry.prompt || "Generated image", width: entry.width, height: entry.height });
    img.addEventListener("load", () => {
      if (!entry.thumb && img.src === entry.url) {
        entry.thumb = thumbnail(img);
        if (entry.thumb) saveGallery();
      }
    });
    img.addEventListener("error", () => {
      const link = node.querySelector(".download");
      if (entry.thumb && img.src !== entry.thumb) {
        img.src = entry.thumb;
        link.href = entry.thumb;
        link.textContent = "Download thumbnail";
      } else if (!entry.thumb) {
        img.replaceWith(el("p", { class: "error", text: "This image's link has expired." }));
        link.remove();
      }
    });
    img.src = expired(entry.url) && entry.thumb ? entry.thumb : entry.url;
    return img;
  }

  function download(entry) {
    const stale = expired(entry.url) && entry.thumb;
    return el("a", {
      class: "download",
      href: stale ? entry.thumb : entry.url,
      download: `fluxserve-${entry.seed}.jpg`,
      text: stale ? "Download thumbnail" : "Download",
    });
  }

  function expired(url) {
    try {
      const exp = Number(new URL(url, location.href).searchParams.get("exp"));
      return exp > 0 && exp * 1000 < Date.now();
    } catch {
      return false;
    }
  }

  // A small JPEG data: URL of a loaded image; null where the canvas is tainted (another
  // origin without CORS, e.g. an object store's presigned link).
  function thumbnail(img) {
    try {
      const scale = Math.min(1, THUMB_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
      const canvas = el("canvas", {
        width: Math.max(1, Math.round(img.naturalWidth * scale)),
        height: Math.max(1, Math.round(img.naturalHeight * scale)),
      });
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      return canvas.toDataURL("image/jpeg", 0.8);
    } catch {
      return null;
    }
  }

  function reuse(entry) {
    promptEl.value = entry.prompt;
    if (entry.model !== modelEl.value && models.some((m) => m.name === entry.model)) {
      modelEl.value = entry.model;
      applyModel();
    }
    const model = currentModel();
    const preset = model?.presets.find((p) => p.width === entry.width && p.height === entry.height);
    lastPreset = null;
    sizeEl.value = preset ? preset.name : "custom";
    widthEl.value = entry.width;
    heightEl.value = entry.height;
    applySize();
    stepsEl.value = entry.steps;
    if (!guidanceEl.disabled && entry.guidance !== null && entry.guidance !== undefined) {
      guidanceEl.value = entry.guidance;
    }
    seedEl.value = entry.seed;
    seedEl.setCustomValidity("");
    countEl.value = "1";
    promptEl.focus();
    announce(`Loaded the settings of that image, with seed ${entry.seed}.`);
  }

  // --- the gallery in localStorage ---------------------------------------------------

  function loadGallery() {
    try {
      const stored = JSON.parse(localStorage.getItem(GALLERY_STORE) || "[]");
      return Array.isArray(stored) ? stored.filter((e) => e && e.url) : [];
    } catch {
      return [];
    }
  }

  function saveGallery() {
    for (;;) {
      try {
        localStorage.setItem(GALLERY_STORE, JSON.stringify(gallery));
        return;
      } catch {
        // Over quota: drop the oldest entry and retry (give up when none is left).
        if (!gallery.length) return;
        const dropped = gallery.pop();
        galleryEl.querySelector(`[data-id="${CSS.escape(dropped.id)}"]`)?.remove();
      }
    }
  }

  function addToGallery(entry) {
    gallery.unshift(entry);
    for (const dropped of gallery.splice(GALLERY_MAX)) {
      galleryEl.querySelector(`[data-id="${CSS.escape(dropped.id)}"]`)?.remove();
    }
    saveGallery();
  }

  function removeFromGallery(id) {
    gallery = gallery.filter((e) => e.id !== id);
    saveGallery();
  }

  function updateEmpty() {
    emptyEl.hidden = galleryEl.children.length > 0;
  }

  // --- wiring ---------------------------------------------------------------------

  keyEl.value = localStorage.getItem(KEY_STORE) || "";
  keyEl.addEventListener("change", () => {
    const key = keyEl.value.trim();
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
    loadModels();
  });
  modelEl.addEventListener("change", applyModel);
  sizeEl.addEventListener("change", applySize);
  seedEl.addEventListener("input", checkSeed);
  lorasEl.addEventListener("input", chosenLoras);
  referencesEl.addEventListener("change", () => { checkReferences(); referencesEl.reportValidity(); });
  promptEl.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", generate);

  galleryEl.append(...gallery.map((entry) => card(entry, "Image").node));
  updateEmpty();
  loadModels();
})();
