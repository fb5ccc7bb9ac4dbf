// The fluxserve playground: a form over the BFL API (POST to the mode's route, then poll
// polling_url), "copy as code" for the request on screen, and a gallery of this browser's
// results in localStorage (their input images in IndexedDB). No dependencies.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const form = $("#form");
  const promptEl = $("#prompt");
  const modelEl = $("#model");
  const modeHintEl = $("#mode-hint");
  const sizeField = $("#size-field");
  const sizeEl = $("#size");
  const customEl = $("#custom-size");
  const widthEl = $("#width");
  const heightEl = $("#height");
  const stepsEl = $("#steps");
  const guidanceField = $("#guidance-field");
  const guidanceEl = $("#guidance");
  const imagesField = $("#images-field");
  const imagesEl = $("#images");
  const imagesLabel = $("#images-label");
  const imagesHint = $("#images-hint");
  const imagesError = $("#images-error");
  const thumbsEl = $("#thumbs");
  const maskField = $("#mask-field");
  const maskImage = $("#mask-image");
  const maskCanvas = $("#mask-canvas");
  const maskError = $("#mask-error");
  const brushEl = $("#brush-size");
  const marginsField = $("#margins-field");
  const marginEls = Object.fromEntries(["top", "bottom", "left", "right"].map((s) => [s, $(`#${s}`)]));
  const expandPreview = $("#expand-preview");
  const strengthField = $("#strength-field");
  const strengthEl = $("#strength");
  const ultraFields = $("#ultra-fields");
  const aspectEl = $("#aspect-ratio");
  const rawField = $("#raw-field");
  const rawEl = $("#raw");
  const lorasField = $("#loras-field");
  const loraListEl = $("#lora-list");
  const lorasError = $("#loras-error");
  const loraRegisteredField = $("#lora-registered-field");
  const loraRegisteredEl = $("#lora-registered");
  const loraPathEl = $("#lora-path");
  const seedEl = $("#seed");
  const countEl = $("#count");
  const keyEl = $("#api-key");
  const generateEl = $("#generate");
  const statusEl = $("#status");
  const galleryEl = $("#gallery");
  const emptyEl = $("#gallery-empty");
  const codeText = $("#code-text");
  const codeFiles = $("#code-files");

  const KEY_STORE = "fluxserve.apiKey";
  const MODEL_STORE = "fluxserve.model";
  const GALLERY_STORE = "fluxserve.gallery";
  const GALLERY_MAX = 50;
  const POLL_MS = 250;
  const POLL_RETRIES = 20; // consecutive network failures before a job is given up
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
  const IMAGE_MAX_BYTES = 10 * 1024 * 1024;
  const IMAGE_MIN_SIDE = 64; // the server's --min-image-side
  const THUMB_SIDE = 192;
  const INPUT_THUMB_SIDE = 96;
  const MAX_SEED = (1n << 64n) - 1n; // seeds are 64-bit: kept as text, never as a Number
  const MODES = {
    generate: { label: "Generate", hint: "Text to image." },
    edit: { label: "Edit", hint: "Edit reference images as the prompt says." },
    img2img: { label: "Image to image", hint: "Redraw a start image from the prompt." },
    fill: { label: "Fill", hint: "Repaint the part of an image you paint over." },
    expand: { label: "Expand", hint: "Grow an image's canvas and paint the new border." },
    ultra: { label: "Ultra", hint: "About 4 megapixels at an aspect ratio (FLUX1.1 [pro] Ultra)." },
  };
  const IMAGE_MODES = ["edit", "img2img", "fill", "expand"];
  const KONTEXT_RATIOS = ["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"];
  const MASK_COLOUR = "#ff2d55";

  let models = [];
  let registered = [];
  let gallery = loadGallery();
  let lastPreset = null;
  let images = []; // the chosen input images: {key, name, type, dataUrl, width, height}
  let pickProblem = "";
  let loraRows = []; // {path, scale}
  let maskKey = null; // the image the mask canvas belongs to
  let maskPainted = false;
  let codeLang = "curl";
  let retryTimer = null;

  // --- small helpers ---------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const capitalise = (text) => text.charAt(0).toUpperCase() + text.slice(1);
  const newKey = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null) continue;
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

  function randomSeed() {
    return String(crypto.getRandomValues(new Uint32Array(1))[0]);
  }

  // --- input images kept for "reuse": IndexedDB, else this page's memory ----------------

  const memory = new Map();
  const database = new Promise((resolve) => {
    try {
      const request = indexedDB.open("fluxserve-playground", 1);
      request.onupgradeneeded = () => request.result.createObjectStore("inputs");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
    } catch {
      resolve(null);
    }
  });

  async function keep(key, dataUrl) {
    memory.set(key, dataUrl);
    const db = await database;
    if (!db) return;
    await new Promise((resolve) => {
      const tx = db.transaction("inputs", "readwrite");
      tx.objectStore("inputs").put(dataUrl, key);
      tx.oncomplete = tx.onerror = tx.onabort = () => resolve();
    });
  }

  async function recall(key) {
    if (memory.has(key)) return memory.get(key);
    const db = await database;
    if (!db) return null;
    return new Promise((resolve) => {
      const request = db.transaction("inputs").objectStore("inputs").get(key);
      request.onsuccess = () => resolve(request.result ?? null);
      request.onerror = () => resolve(null);
    });
  }

  async function forget(keys) {
    const used = new Set(gallery.flatMap(inputKeys));
    for (const image of images) used.add(image.key);
    const unused = keys.filter((key) => !used.has(key));
    for (const key of unused) memory.delete(key);
    const db = await database;
    if (!db || !unused.length) return;
    const tx = db.transaction("inputs", "readwrite");
    for (const key of unused) tx.objectStore("inputs").delete(key);
  }

  const inputKeys = (entry) => [...(entry.inputs || []).map((i) => i.key), ...(entry.mask ? [entry.mask.key] : [])];

  // --- models, modes and the form ----------------------------------------------------

  const currentMode = () => form.querySelector('input[name="mode"]:checked')?.value || "generate";
  const currentModel = () => models.find((m) => m.name === modelEl.value);
  const modeInfo = () => currentModel()?.modes?.[currentMode()];

  async function loadModels() {
    try {
      const response = await fetch("/playground/models", { headers: headers() });
      if (!response.ok) throw new Error((await describeError(response)).text);
      models = await response.json();
      if (!models.length) announce("This server has no model the playground can use.");
    } catch (error) {
      models = [];
      announce(`Could not load the models: ${error.message}`);
    }
    try {
      const response = await fetch("/playground/loras", { headers: headers() });
      registered = response.ok ? await response.json() : [];
    } catch {
      registered = [];
    }
    loraRegisteredEl.replaceChildren(
      new Option(registered.length ? "Pick one…" : "None registered", ""),
      ...registered.map((l) => new Option(`${l.name} (${l.source}, scale ${l.scale})`, l.name)),
    );
    loraRegisteredEl.disabled = !registered.length;
    const served = new Set(models.flatMap((m) => Object.keys(m.modes || {})));
    for (const label of form.querySelectorAll(".mode-options label")) {
      label.hidden = !served.has(label.dataset.mode);
      label.querySelector("input").disabled = label.hidden;
    }
    if (!served.has(currentMode())) {
      const first = form.querySelector(".mode-options input:not(:disabled)");
      if (first) first.checked = true;
    }
    generateEl.disabled = !models.length;
    applyMode(localStorage.getItem(MODEL_STORE));
  }

  // The mode's models in the model list; the fields it takes shown, the others hidden.
  function applyMode(wanted = modelEl.value) {
    const mode = currentMode();
    const offered = models.filter((m) => m.modes?.[mode]);
    modelEl.replaceChildren(...offered.map((m) => new Option(
      m.aliases.length ? `${m.name} (${m.aliases.join(", ")})` : m.name, m.name)));
    if (offered.some((m) => m.name === wanted)) modelEl.value = wanted;
    modeHintEl.textContent = MODES[mode].hint;
    applyModel();
  }

  function applyModel() {
    const mode = currentMode();
    const model = currentModel();
    const info = modeInfo();
    if (!model || !info) {
      updateCode();
      return;
    }
    localStorage.setItem(MODEL_STORE, model.name);
    const show = (node, visible) => {
      node.hidden = !visible;
      for (const input of node.querySelectorAll("input, select, textarea")) input.disabled = !visible;
    };
    const kontext = mode === "edit" && info.endpoint !== `/v1/${model.name}`; // by kind, not name
    show(imagesField, IMAGE_MODES.includes(mode));
    show(maskField, mode === "fill");
    show(marginsField, mode === "expand");
    show(strengthField, mode === "img2img");
    show(ultraFields, mode === "ultra" || kontext);
    show(rawField, mode === "ultra");
    show(sizeField, ["generate", "img2img"].includes(mode) || (mode === "edit" && !kontext));
    show(lorasField, info.loras !== "none");
    promptEl.required = ["generate", "edit", "ultra"].includes(mode);
    const most = maxImages();
    imagesEl.multiple = most > 1;
    imagesLabel.textContent = mode === "edit" ? `Reference images (up to ${most})` : "Image";
    imagesHint.textContent = `PNG, JPEG or WebP, up to 10 MB and at least ${IMAGE_MIN_SIDE} pixels a side: `
      + (most > 1 ? "pick, drop or paste them here; the first sets the shape." : "pick, drop or paste it here.");

    stepsEl.min = info.min_steps;
    stepsEl.max = info.max_steps;
    stepsEl.value = Math.min(info.max_steps, Math.max(info.min_steps, model.default_steps));
    const hasGuidance = model.default_guidance !== null;
    show(guidanceField, hasGuidance);
    if (hasGuidance) {
      guidanceEl.min = info.min_guidance;
      guidanceEl.max = info.max_guidance;
      guidanceEl.value = model.default_guidance;
    }

    const ratios = mode === "ultra" ? info.aspect_ratios : KONTEXT_RATIOS;
    const chosenRatio = aspectEl.value || (mode === "ultra" ? "16:9" : "");
    aspectEl.replaceChildren(...(kontext ? [new Option("As the first image", "")] : []),
      ...ratios.map((r) => new Option(r, r)));
    aspectEl.value = chosenRatio;
    if (aspectEl.selectedIndex < 0 || (mode === "ultra" && !aspectEl.value)) aspectEl.value = mode === "ultra" ? "16:9" : "";
    $("#raw-hint").textContent = info.raw_model && info.raw_model !== model.name
      ? `Natural, less processed: made by ${info.raw_model}.`
      : "Natural, less processed (FLUX.1 Krea [dev] when loaded; else noted on the result).";

    const chosen = sizeEl.value || "square";
    sizeEl.replaceChildren(
      ...model.presets.map((p) => new Option(`${capitalise(p.name)} ${p.width}×${p.height}`, p.name)),
      new Option("Custom…", "custom"),
    );
    sizeEl.value = chosen;
    if (!sizeEl.value) sizeEl.value = "square";
    if (chosen !== "custom") {
      widthEl.value = model.width;
      heightEl.value = model.height;
    }
    applySize();
    applyLoraMode();
    renderThumbs();
    checkImages();
    updateCode();
  }

  function applySize() {
    const custom = sizeEl.value === "custom" && !sizeField.hidden;
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

  function checkSeed() {
    const text = seedEl.value.trim();
    const valid = !text || (/^\d{1,20}$/.test(text) && BigInt(text) <= MAX_SEED);
    seedEl.setCustomValidity(valid ? "" : "A seed is a whole number from 0 to 2^64 − 1.");
    return text ? BigInt(text) : null;
  }

  // --- input images: picked, dropped or pasted; checked here; reordered and removed -------

  function maxImages() {
    const info = modeInfo();
    return currentMode() === "edit" ? info?.references || 1 : 1;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function decode(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("not a readable image"));
      img.src = src;
    });
  }

  // Each file is checked (type, bytes, pixels) before it joins the list; nothing is sent.
  async function addFiles(files) {
    const problems = [];
    const most = maxImages();
    let added = 0;
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) {
        problems.push(`${file.name || "That file"} is not a PNG, JPEG or WebP image.`);
        continue;
      }
      if (file.size > IMAGE_MAX_BYTES) {
        problems.push(`${file.name} is larger than 10 MB.`);
        continue;
      }
      let dataUrl;
      let img;
      try {
        dataUrl = await readAsDataUrl(file);
        img = await decode(dataUrl);
      } catch {
        problems.push(`${file.name} could not be read as an image.`);
        continue;
      }
      if (Math.min(img.naturalWidth, img.naturalHeight) < IMAGE_MIN_SIDE) {
        problems.push(`${file.name} is ${img.naturalWidth}×${img.naturalHeight}; each side needs at least ${IMAGE_MIN_SIDE} pixels.`);
        continue;
      }
      if (most === 1) images = [];
      else if (images.length >= most) {
        problems.push(`Choose at most ${most} reference images; ${file.name} was left out.`);
        continue;
      }
      images.push({ key: newKey(), name: file.name || "pasted image", type: file.type, dataUrl,
                    width: img.naturalWidth, height: img.naturalHeight });
      added += 1;
    }
    pickProblem = problems.join(" ");
    imagesEl.value = "";
    renderThumbs();
    checkImages();
    if (pickProblem) imagesEl.reportValidity?.();
    updateCode();
    if (added) announce(added === 1 ? "Added 1 image." : `Added ${added} images.`);
  }

  function checkImages() {
    let problem = pickProblem;
    const mode = currentMode();
    if (!problem && IMAGE_MODES.includes(mode) && !images.length) {
      problem = mode === "edit" ? "Add at least one reference image." : "Add an image.";
    } else if (!problem && images.length > maxImages()) {
      problem = `Choose at most ${maxImages()} reference images (${images.length} chosen).`;
    }
    imagesEl.setCustomValidity(problem);
    imagesError.textContent = pickProblem;
    return problem;
  }

  function renderThumbs() {
    const most = maxImages();
    thumbsEl.replaceChildren(...images.map((image, i) => {
      const label = `Image ${i + 1}${i >= most ? " (not sent: over the limit)" : ""}`;
      const move = (to) => () => {
        const [moved] = images.splice(i, 1);
        images.splice(to, 0, moved);
        renderThumbs();
        updateCode();
        thumbsEl.children[to]?.querySelector(to < i ? ".earlier" : ".later")?.focus();
      };
      return el("li", { class: i >= most ? "thumb over" : "thumb" },
        el("img", { src: image.dataUrl, alt: `${label}: ${image.name}, ${image.width}×${image.height}` }),
        el("div", { class: "thumb-actions" },
          el("button", { type: "button", class: "earlier", "aria-label": `Move image ${i + 1} earlier`,
                         title: "Move earlier", text: "←", ...(i === 0 ? { disabled: "" } : {}), onclick: move(i - 1) }),
          el("button", { type: "button", class: "later", "aria-label": `Move image ${i + 1} later`,
                         title: "Move later", text: "→", ...(i === images.length - 1 ? { disabled: "" } : {}),
                         onclick: move(i + 1) }),
          el("button", { type: "button", class: "remove-image", "aria-label": `Remove image ${i + 1}`,
                         title: "Remove", text: "✕",
                         onclick: () => { images.splice(i, 1); pickProblem = ""; renderThumbs(); checkImages(); updateCode(); imagesEl.focus(); } })));
    }));
    syncMask();
    drawExpand();
  }

  // --- the mask: painted on a canvas over the image, or uploaded -------------------------

  function syncMask() {
    const first = images[0];
    if (!first) {
      maskKey = null;
      maskImage.removeAttribute("src");
      maskCanvas.width = maskCanvas.height = 1;
      maskPainted = false;
      return;
    }
    if (first.key === maskKey) return;
    maskKey = first.key;
    maskImage.src = first.dataUrl;
    maskImage.alt = `The image to fill: ${first.name}`;
    maskCanvas.width = first.width;
    maskCanvas.height = first.height;
    maskCanvas.style.aspectRatio = `${first.width} / ${first.height}`;
    maskPainted = false;
    maskError.textContent = "";
  }

  let lastPoint = null;
  function paintAt(event) {
    const box = maskCanvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * maskCanvas.width;
    const y = ((event.clientY - box.top) / box.height) * maskCanvas.height;
    const ctx = maskCanvas.getContext("2d");
    const eraser = form.querySelector('input[name="tool"]:checked')?.value === "eraser";
    ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
    ctx.lineWidth = Math.max(1, (Number(brushEl.value) / 100) * Math.max(maskCanvas.width, maskCanvas.height));
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (lastPoint) ctx.moveTo(lastPoint.x, lastPoint.y);
    else ctx.moveTo(x, y);
    ctx.lineTo(x + 0.01, y);
    ctx.stroke();
    lastPoint = { x, y };
    maskPainted = true;
  }

  function maskIsEmpty() {
    if (!maskPainted || maskCanvas.width < 2) return true;
    const { data } = maskCanvas.getContext("2d").getImageData(0, 0, maskCanvas.width, maskCanvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return false;
    return true;
  }

  // BFL's mask: the image's size, white where to repaint, black elsewhere.
  function maskDataUrl() {
    const out = el("canvas", { width: maskCanvas.width, height: maskCanvas.height });
    const ctx = out.getContext("2d");
    ctx.drawImage(maskCanvas, 0, 0);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.globalCompositeOperation = "destination-over";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    return out.toDataURL("image/png");
  }

  // A black-and-white mask (uploaded, or a gallery entry's) painted onto the canvas.
  async function loadMask(src) {
    const img = await decode(src);
    const scratch = el("canvas", { width: maskCanvas.width, height: maskCanvas.height });
    const sctx = scratch.getContext("2d");
    sctx.drawImage(img, 0, 0, scratch.width, scratch.height);
    const pixels = sctx.getImageData(0, 0, scratch.width, scratch.height);
    const [r, g, b] = [0xff, 0x2d, 0x55];
    for (let i = 0; i < pixels.data.length; i += 4) {
      const d = pixels.data;
      const on = d[i + 3] > 127 && (d[i] + d[i + 1] + d[i + 2]) / 3 > 127;
      d[i] = r; d[i + 1] = g; d[i + 2] = b; d[i + 3] = on ? 255 : 0;
    }
    maskCanvas.getContext("2d").putImageData(pixels, 0, 0);
    maskPainted = true;
    updateCode();
  }

  function clearMask(all = false) {
    const ctx = maskCanvas.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    if (all) {
      ctx.fillStyle = MASK_COLOUR;
      ctx.fillRect(0, 0, maskCanvas.width, maskCanvas.height);
    }
    maskPainted = all;
    updateCode();
  }

  // --- Expand: the grown canvas, previewed --------------------------------------------

  const margins = () => Object.fromEntries(Object.entries(marginEls).map(([side, input]) => [side, Math.max(0, Math.round(Number(input.value) || 0))]));

  function drawExpand() {
    const ctx = expandPreview.getContext("2d");
    const first = images[0];
    const { top, bottom, left, right } = margins();
    ctx.clearRect(0, 0, expandPreview.width, expandPreview.height);
    if (!first) {
      expandPreview.setAttribute("aria-label", "Choose an image to preview the expanded canvas");
      return;
    }
    const total = [first.width + left + right, first.height + top + bottom];
    const scale = Math.min(480 / total[0], 320 / total[1], 4);
    expandPreview.width = Math.max(1, Math.round(total[0] * scale));
    expandPreview.height = Math.max(1, Math.round(total[1] * scale));
    const style = getComputedStyle(document.documentElement);
    ctx.fillStyle = style.getPropertyValue("--accent").trim() || "#1d4ed8";
    ctx.globalAlpha = 0.35;
    ctx.fillRect(0, 0, expandPreview.width, expandPreview.height);
    ctx.globalAlpha = 1;
    const picture = new Image();
    picture.onload = () => ctx.drawImage(picture, left * scale, top * scale, first.width * scale, first.height * scale);
    picture.src = first.dataUrl;
    expandPreview.setAttribute("aria-label", `Preview: the ${first.width}×${first.height} image on a ${total[0]}×${total[1]} canvas; the shaded border (top ${top}, bottom ${bottom}, left ${left}, right ${right} pixels) is painted in.`);
  }

  // --- LoRAs: by path or registered, each with a scale -------------------------------------

  function applyLoraMode() {
    const info = modeInfo();
    const kind = info?.loras || "none";
    const finetune = kind === "finetune";
    $("#loras-hint").textContent = finetune
      ? "This route takes one registered LoRA (BFL's finetune_id), at a scale from 0 to 2."
      : `Up to ${info?.max_loras || 8}, each a scale from −4 to 4 (0 leaves it out).`;
    loraRegisteredField.hidden = false;
    $("#lora-path").closest(".field").hidden = finetune;
    renderLoras();
  }

  function scaleRange() {
    return modeInfo()?.loras === "finetune" ? [0, 2] : [-4, 4];
  }

  function renderLoras() {
    const [low, high] = scaleRange();
    loraListEl.replaceChildren(...loraRows.map((row, i) => {
      const id = `lora-scale-${i}`;
      const output = el("output", { for: id, text: String(row.scale) });
      const slider = el("input", { id, type: "range", min: low, max: high, step: "0.05", value: row.scale,
        "data-index": i,
        oninput: (event) => { row.scale = Number(event.target.value); output.textContent = String(row.scale); checkLoras(); updateCode(); } });
      return el("li", { class: "lora", "data-index": i },
        el("div", { class: "lora-head" },
          el("span", { class: "lora-name", text: row.path }),
          el("button", { type: "button", class: "remove-lora", "aria-label": `Remove LoRA ${row.path}`, title: "Remove",
                         text: "✕", onclick: () => { loraRows.splice(i, 1); renderLoras(); checkLoras(); updateCode(); loraPathEl.focus(); } })),
        el("label", { for: id, text: `Scale of ${row.path}` , class: "visually-hidden" }),
        el("div", { class: "inline" }, slider, output),
        el("p", { class: "field-error", id: `lora-error-${i}`, role: "alert" }));
    }));
    checkLoras();
  }

  function addLora(path, scale = 1) {
    path = path.trim();
    if (!path) return;
    if (modeInfo()?.loras === "finetune") loraRows = []; // one LoRA on the -finetuned route
    loraRows.push({ path, scale });
    renderLoras();
    updateCode();
    announce(`Added the LoRA ${path}.`);
  }

  function checkLoras() {
    const info = modeInfo();
    const kind = info?.loras || "none";
    let problem = "";
    const [low, high] = scaleRange();
    if (kind === "none" || lorasField.hidden) problem = "";
    else if (loraRows.length > (info.max_loras || 0)) problem = `At most ${info.max_loras} LoRAs.`;
    else if (kind === "finetune" && loraRows.some((r) => !registered.some((l) => l.name === r.path))) {
      problem = "This mode takes only a registered LoRA.";
    } else if (loraRows.some((r) => r.scale < low || r.scale > high)) {
      problem = `Scales run from ${low} to ${high}.`;
    }
    lorasError.textContent = problem;
    loraPathEl.setCustomValidity(problem);
    return problem;
  }

  const sentLoras = () => (lorasField.hidden ? [] : loraRows.map((r) => ({ path: r.path, scale: r.scale })));

  // --- the request: one snapshot of the form, the BFL body, and the same as code ----------

  // Everything about the request on screen, without the images' bytes (those are in
  // `images` and the mask canvas; the snapshot names them by key).
  function snapshot() {
    const mode = currentMode();
    const model = currentModel();
    const info = modeInfo();
    if (!model || !info) return null;
    const entry = {
      mode,
      model: model.name,
      endpoint: info.endpoint,
      prompt: promptEl.value.trim(),
      steps: Number(stepsEl.value),
      guidance: guidanceEl.disabled ? null : Number(guidanceEl.value),
      loras: sentLoras(),
    };
    if (!sizeField.hidden) [entry.width, entry.height] = chosenSize();
    if (mode === "img2img") entry.strength = Number(strengthEl.value);
    if (mode === "expand") entry.margins = margins();
    if (!ultraFields.hidden && aspectEl.value) entry.aspect_ratio = aspectEl.value;
    if (mode === "ultra") entry.raw = rawEl.checked;
    if (IMAGE_MODES.includes(mode)) {
      entry.inputs = images.slice(0, maxImages()).map((i) => ({ key: i.key, type: i.type, name: i.name,
                                                             width: i.width, height: i.height }));
    }
    return entry;
  }

  const extension = (type) => ({ "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" })[type] || "png";
  const inputFile = (entry, i) => `input-${i + 1}.${extension(entry.inputs[i].type)}`;

  // The BFL route and body for `entry`; `files(i)` gives image i's value ("mask" the mask's).
  function bflRequest(entry, files) {
    const body = { prompt: entry.prompt };
    let url = entry.endpoint;
    const t2iSize = () => { body.width = entry.width; body.height = entry.height; };
    switch (entry.mode) {
      case "generate":
        t2iSize();
        break;
      case "edit":
        entry.inputs.forEach((_, i) => { body[i ? `input_image_${i + 1}` : "input_image"] = files(i); });
        if (entry.width) t2iSize();
        if (entry.aspect_ratio) body.aspect_ratio = entry.aspect_ratio;
        break;
      case "img2img":
        t2iSize();
        body.image_prompt = files(0);
        body.strength = entry.strength;
        break;
      case "fill":
        body.image = files(0);
        body.mask = files("mask");
        break;
      case "expand":
        body.image = files(0);
        Object.assign(body, entry.margins);
        break;
      case "ultra":
        body.aspect_ratio = entry.aspect_ratio || "16:9";
        body.raw = Boolean(entry.raw);
        break;
      default:
        break;
    }
    body.steps = entry.steps;
    if (entry.guidance !== null && entry.guidance !== undefined) body.guidance = entry.guidance;
    const info = models.find((m) => m.name === entry.model)?.modes?.[entry.mode];
    if (entry.loras?.length) {
      if ((info?.loras ?? (entry.mode === "fill" || entry.mode === "ultra" ? "finetune" : "list")) === "finetune") {
        url = info?.finetune_endpoint || (entry.mode === "fill" ? "/v1/flux-pro-1.0-fill-finetuned" : "/v1/flux-pro-1.1-ultra-finetuned");
        body.finetune_id = entry.loras[0].path;
        body.finetune_strength = entry.loras[0].scale;
      } else {
        body.loras = entry.loras;
      }
    }
    body.output_format = "jpeg";
    return { url, body };
  }

  // JSON with the seed spliced in as written (a Number would round seeds past 2^53).
  function withSeed(body, seed, indent = 0) {
    const text = JSON.stringify(body, null, indent);
    if (seed === null || seed === undefined || seed === "") return text;
    return indent ? `${text.slice(0, -2)},\n${" ".repeat(indent)}"seed": ${seed}\n}` : `${text.slice(0, -1)},"seed":${seed}}`;
  }

  // --- copy as code ---------------------------------------------------------------

  const KEY_PLACEHOLDER = "YOUR_API_KEY";
  const pyString = (text) => JSON.stringify(text);
  function pyValue(value, indent = "") {
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (Array.isArray(value)) return `[${value.map((v) => pyValue(v, indent)).join(", ")}]`;
    if (typeof value === "object") {
      if (value.__py) return value.__py;
      return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyValue(v, indent)}`).join(", ")}}`;
    }
    if (typeof value === "string") return pyString(value);
    return String(value);
  }
  const py = (code) => ({ __py: code, toJSON: () => code });

  function codeFor(lang, entry, seed) {
    const origin = location.origin;
    const count = Number(countEl.value) || 1;
    const many = count > 1 ? ` (the page makes ${count} images, seeds ${seed ?? "random"} and up: one per run)` : "";
    if (lang === "curl") return curlCode(entry, seed, origin, many);
    if (lang === "openai") return openaiCode(entry, seed, origin, many);
    if (lang === "fal") return falCode(entry, seed, origin, many);
    return aiSdkCode(entry, seed, origin, many);
  }

  function curlCode(entry, seed, origin, many) {
    const hasFiles = Boolean(entry.inputs?.length);
    const marker = (i) => `@@FILE${i}@@`;
    const { url, body } = bflRequest(entry, (i) => marker(i));
    let json = withSeed(body, seed, 2);
    let heredoc = "'EOF'";
    if (hasFiles) {
      // An unquoted here-document, so $(base64 ...) runs: escape what the shell would expand.
      json = json.replace(/[\\$`]/g, (c) => `\\${c}`);
      json = json.replace(/@@FILE(\w+)@@/g, (_, i) => `$(base64 < ${i === "mask" ? "mask.png" : inputFile(entry, Number(i))} | tr -d '\\n')`);
      heredoc = "EOF";
    }
    const field = (name) => `python3 -c 'import json, sys; print(json.load(sys.stdin)${name})'`;
    return [
      `# Submit to ${url}, poll until the task ends, then download the image${many}.`,
      `KEY='${KEY_PLACEHOLDER}'  # your fluxserve API key (x-key); anything when the server needs none`,
      `BASE='${origin}'`,
      `SUBMITTED=$(curl -sS -X POST "$BASE${url}" -H "x-key: $KEY" \\`,
      `  -H 'content-type: application/json' --data-binary @- <<${heredoc}`,
      json,
      "EOF",
      ")",
      `POLL=$(printf '%s' "$SUBMITTED" | ${field('["polling_url"]')})`,
      "while :; do",
      `  RESULT=$(curl -sS "$POLL" -H "x-key: $KEY")`,
      `  STATUS=$(printf '%s' "$RESULT" | ${field('["status"]')})`,
      '  [ "$STATUS" = Pending ] || break',
      "  sleep 0.5",
      "done",
      'echo "$RESULT"',
      `SAMPLE=$(printf '%s' "$RESULT" | ${field('["result"]["sample"]')})`,
      'curl -sS -o fluxserve.jpg "$SAMPLE"',
    ].join("\n");
  }

  function fluxExtras(entry, seed) {
    const extra = {};
    if (seed !== null && seed !== undefined) extra.seed = py(String(seed));
    extra.steps = entry.steps;
    if (entry.guidance !== null && entry.guidance !== undefined) extra.guidance = entry.guidance;
    if (entry.strength !== undefined) extra.strength = entry.strength;
    return extra;
  }

  function openaiCode(entry, seed, origin, many) {
    const head = [
      `# The OpenAI Images API on fluxserve${many}.`,
      "import base64",
      ...(entry.loras.length && entry.inputs ? ["import json"] : []),
      "",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${pyString(`${origin}/v1`)}, api_key=${pyString(KEY_PLACEHOLDER)})`,
    ];
    if (entry.mode === "expand" || entry.mode === "ultra") {
      return [...head, "",
        `# The OpenAI Images API has no ${MODES[entry.mode].label} call: use the curl or fal-client tab.`].join("\n");
    }
    const extra = fluxExtras(entry, seed);
    const size = entry.width ? [`    size=${pyString(`${entry.width}x${entry.height}`)},`] : [];
    if (!entry.inputs) {
      if (entry.loras.length) extra.loras = entry.loras;
      return [...head,
        "result = client.images.generate(",
        `    model=${pyString(entry.model)},`,
        `    prompt=${pyString(entry.prompt)},`,
        ...size,
        '    response_format="b64_json",',
        '    output_format="jpeg",',
        `    extra_body=${pyValue(extra)},`,
        ")",
        'with open("fluxserve.jpg", "wb") as out:',
        "    out.write(base64.b64decode(result.data[0].b64_json))",
      ].join("\n");
    }
    if (entry.loras.length) extra.loras = py(`json.dumps(${pyValue(entry.loras)})`); // a form field: JSON text
    const names = entry.inputs.map((_, i) => `image_${i + 1}`);
    const opens = entry.inputs.map((_, i) => `open(${pyString(inputFile(entry, i))}, "rb") as ${names[i]}`);
    if (entry.mode === "fill") opens.push('open("mask.png", "rb") as mask');
    return [...head,
      `with ${opens.join(", ")}:`,
      "    result = client.images.edit(",
      `        model=${pyString(entry.model)},`,
      `        image=${names.length > 1 ? `[${names.join(", ")}]` : names[0]},`,
      ...(entry.mode === "fill" ? ["        mask=mask,"] : []),
      `        prompt=${pyString(entry.prompt || " ")},`,
      ...size.map((line) => `    ${line}`),
      '        response_format="b64_json",',
      '        output_format="jpeg",',
      `        extra_body=${pyValue(extra)},`,
      "    )",
      'with open("fluxserve.jpg", "wb") as out:',
      "    out.write(base64.b64decode(result.data[0].b64_json))",
    ].join("\n");
  }

  function falCode(entry, seed, origin, many) {
    const info = models.find((m) => m.name === entry.model)?.modes?.[entry.mode];
    const host = location.host;
    const head = [
      `# fal's Python client on fluxserve${many}. fal_client speaks only HTTPS: serve with`,
      "# --tls-cert/--tls-key (and point SSL_CERT_FILE at your CA). It reads these at import.",
      "import os",
      "",
      `os.environ["FAL_KEY"] = ${pyString(KEY_PLACEHOLDER)}`,
      `os.environ["FAL_RUN_HOST"] = ${pyString(host)}`,
      `os.environ["FAL_QUEUE_RUN_HOST"] = ${pyString(`${host}/queue`)}`,
      "",
      "import fal_client  # noqa: E402",
      "",
    ];
    const id = info?.fal;
    if (!id) {
      return [...head, `# No fal endpoint reaches ${entry.model} in ${MODES[entry.mode].label} mode on this server: use the curl tab.`].join("\n");
    }
    const args = { prompt: entry.prompt };
    const encode = (i) => py(`fal_client.encode_file(${pyString(i === "mask" ? "mask.png" : inputFile(entry, i))})`);
    const flux2 = id.startsWith("fal-ai/flux-2");
    if (entry.width) args.image_size = { width: entry.width, height: entry.height };
    if (entry.mode === "edit") {
      args.image_urls = entry.inputs.map((_, i) => encode(i));
      if (entry.aspect_ratio) args.aspect_ratio = entry.aspect_ratio;
    }
    if (entry.mode === "img2img") {
      args.image_url = encode(0);
      args.strength = entry.strength;
      delete args.image_size; // fal's image-to-image keeps the input's shape
    }
    if (entry.mode === "fill") {
      args.image_url = encode(0);
      args.mask_url = encode("mask");
    }
    if (entry.mode === "ultra") {
      args.aspect_ratio = entry.aspect_ratio || "16:9";
      args.raw = Boolean(entry.raw);
    }
    if (!["ultra"].includes(entry.mode)) {
      args.num_inference_steps = entry.steps;
      if (entry.guidance !== null && entry.guidance !== undefined) args.guidance_scale = entry.guidance;
    }
    if (seed !== null && seed !== undefined) args.seed = py(String(seed));
    if (entry.loras.length && (id.includes("lora"))) args.loras = entry.loras;
    const notes = [];
    if (entry.loras.length && !id.includes("lora")) notes.push(`# ${id} takes no LoRAs: they are left out here.`);
    if (flux2 && entry.mode === "edit" && !entry.width) args.image_size = "auto";
    return [...head, ...notes,
      `result = fal_client.subscribe(${pyString(id)}, arguments={`,
      ...Object.entries(args).map(([key, value]) => `    ${pyString(key)}: ${pyValue(value)},`),
      "})",
      'print(result["images"][0]["url"])',
    ].join("\n");
  }

  function aiSdkCode(entry, seed, origin, many) {
    const head = [
      `// The AI SDK (ai, @ai-sdk/openai-compatible) on fluxserve's OpenAI Images API${many}.`,
      `import { ${entry.inputs ? "readFileSync, " : ""}writeFileSync } from "node:fs";`,
      'import { createOpenAICompatible } from "@ai-sdk/openai-compatible";',
      'import { experimental_generateImage as generateImage } from "ai";',
      "",
      "const fluxserve = createOpenAICompatible({",
      '  name: "fluxserve",',
      `  baseURL: ${JSON.stringify(`${origin}/v1`)},`,
      `  apiKey: ${JSON.stringify(KEY_PLACEHOLDER)},`,
      "});",
      "",
    ];
    if (entry.mode === "expand" || entry.mode === "ultra") {
      return [...head, `// The OpenAI Images API has no ${MODES[entry.mode].label} call: use the curl or fal-client tab.`].join("\n");
    }
    // The provider sends its own options as body (or form) fields: fluxserve's extras.
    const options = {};
    if (seed !== null && seed !== undefined) options.seed = "@@SEED@@";
    options.steps = entry.steps;
    if (entry.guidance !== null && entry.guidance !== undefined) options.guidance = entry.guidance;
    if (entry.strength !== undefined) options.strength = entry.strength;
    options.output_format = "jpeg";
    if (entry.loras.length) options.loras = entry.inputs ? JSON.stringify(entry.loras) : entry.loras;
    const optionsText = JSON.stringify(options, null, 2).replace('"@@SEED@@"', String(seed)).replace(/\n/g, "\n  ");
    let prompt = `  prompt: ${JSON.stringify(entry.prompt)},`;
    if (entry.inputs) {
      const files = entry.inputs.map((_, i) => `readFileSync(${JSON.stringify(inputFile(entry, i))})`);
      prompt = [
        "  prompt: {",
        `    text: ${JSON.stringify(entry.prompt || " ")},`,
        `    images: [${files.join(", ")}],`,
        ...(entry.mode === "fill" ? ['    mask: readFileSync("mask.png"),'] : []),
        "  },",
      ].join("\n");
    }
    return [...head,
      "const { image } = await generateImage({",
      `  model: fluxserve.imageModel(${JSON.stringify(entry.model)}),`,
      prompt,
      ...(entry.width ? [`  size: "${entry.width}x${entry.height}",`] : []),
      `  providerOptions: { fluxserve: ${optionsText} },`,
      "});",
      'writeFileSync("fluxserve.jpg", image.uint8Array);',
    ].join("\n");
  }

  function updateCode() {
    const entry = snapshot();
    if (!entry) {
      codeText.textContent = "";
      return;
    }
    const seed = checkSeed();
    codeText.textContent = codeFor(codeLang, entry, seed === null ? null : String(seed));
    const files = (entry.inputs || []).map((input, i) => ({ name: inputFile(entry, i), href: images[i]?.dataUrl }));
    if (entry.mode === "fill" && images.length) files.push({ name: "mask.png", href: null });
    codeFiles.replaceChildren();
    if (files.length) {
      codeFiles.append("Beside the code, save ");
      files.forEach((file, i) => {
        if (i) codeFiles.append(i === files.length - 1 ? " and " : ", ");
        const link = el("a", { href: file.href || "#", download: file.name, text: file.name });
        if (file.name === "mask.png") link.addEventListener("click", () => { link.href = maskDataUrl(); });
        codeFiles.append(link);
      });
      codeFiles.append(".");
    }
  }

  async function copyCode() {
    const text = codeText.textContent;
    const done = $("#code-copied");
    try {
      await navigator.clipboard.writeText(text);
      done.textContent = "Copied.";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(codeText);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done.textContent = document.execCommand("copy") ? "Copied." : "Selected: press Ctrl+C to copy.";
    }
    setTimeout(() => { done.textContent = ""; }, 4000);
  }

  function selectTab(tab) {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
    }
    $("#code-panel").setAttribute("aria-labelledby", tab.id);
    codeLang = tab.dataset.lang;
    updateCode();
  }

  // --- errors a person can act on ------------------------------------------------------

  // The control a 422's loc names (["body", "steps"], ["body", "loras", 0, "path"]).
  function fieldFor(loc) {
    // fluxserve's own checks name a nested field in one string: ["body", "loras.0.path"].
    const parts = (loc || []).flatMap((p) => (typeof p === "string" ? p.split(".") : [p]))
      .map((p) => (typeof p === "string" && /^\d+$/.test(p) ? Number(p) : p));
    const [name, index] = parts.slice(parts[0] === "body" ? 1 : 0);
    if (typeof name !== "string") return null;
    if (name === "loras") return typeof index === "number" ? loraListEl.children[index] || lorasField : lorasField;
    if (name.startsWith("finetune")) return loraListEl.children[0] || lorasField;
    if (name === "mask") return maskField;
    if (/^(input_image|image)/.test(name)) return imagesField;
    if (name === "aspect_ratio") return $("#aspect-field");
    if (["top", "bottom", "left", "right"].includes(name)) return marginEls[name].closest(".field");
    if (["width", "height"].includes(name)) return sizeEl.value === "custom" ? $(`#${name}`).closest(".field") : sizeField;
    const control = { prompt: promptEl, steps: stepsEl, guidance: guidanceEl, seed: seedEl,
                      strength: strengthEl, raw: rawEl }[name];
    return control ? control.closest(".field") : null;
  }

  function clearFieldErrors() {
    for (const node of form.querySelectorAll(".field-error.from-server")) node.remove();
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  function showFieldError(container, message) {
    const error = el("p", { class: "field-error from-server", role: "alert", text: message,
                            id: `error-${Math.random().toString(36).slice(2)}` });
    container.append(error);
    const control = container.querySelector("input:not([type=hidden]), select, textarea");
    if (control) {
      control.setAttribute("aria-invalid", "true");
      const described = control.getAttribute("aria-describedby") || "";
      control.setAttribute("aria-describedby", `${described} ${error.id}`.trim());
      control.addEventListener("input", () => { error.remove(); control.removeAttribute("aria-invalid"); }, { once: true });
    }
  }

  // {text, fields: [[container, message]], retryAfter} from an error response.
  async function describeError(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: the status line
    }
    const detail = body?.detail ?? body?.message ?? body?.error?.message;
    const result = { text: "", fields: [], retryAfter: null };
    if (Array.isArray(detail)) {
      const parts = [];
      for (const d of detail) {
        const where = (d.loc || []).slice(d.loc?.[0] === "body" ? 1 : 0).join(".");
        parts.push(String(d.msg).startsWith(where) ? d.msg : `${where}: ${d.msg}`);
        const container = fieldFor(d.loc);
        if (container && !container.hidden) result.fields.push([container, d.msg]);
      }
      result.text = parts.join("; ");
    } else if (detail) {
      result.text = String(detail);
    } else {
      result.text = `HTTP ${response.status} ${response.statusText}`.trim();
    }
    if (response.status === 429 || response.status === 503) {
      const seconds = Number(response.headers.get("Retry-After"));
      if (Number.isFinite(seconds) && seconds >= 0) {
        result.retryAfter = seconds;
        const at = new Date(Date.now() + seconds * 1000).toLocaleTimeString();
        result.text = `${response.status === 429 ? "Too many requests" : "The server is busy"}: ${result.text} Retry in ${seconds} s (at ${at}).`;
      }
    }
    return result;
  }

  // Which check refused a moderated task, from get_result's details.verdicts.
  function moderationText(result) {
    const verdicts = result.details?.verdicts || [];
    if (!verdicts.length) return result.details?.message && result.details.message !== result.status
      ? `${result.status}: ${result.details.message}` : result.status;
    const where = (point) => {
      if (point === "prompt") return "the prompt";
      const [kind, n] = String(point).split(":");
      if (kind === "input") return `input image ${Number(n) + 1}`;
      if (kind === "output") return "the generated image";
      return point || "the request";
    };
    const reasons = verdicts.map((v) => `${where(v.point)} was refused by the ${v.checker} check (${v.category}${
      typeof v.score === "number" && v.category !== "blocked_term" ? `, score ${v.score.toFixed(2)}` : ""}${
      v.tolerance !== null && v.tolerance !== undefined ? `, safety_tolerance ${v.tolerance}` : ""})`);
    return `${result.status}: ${reasons.join("; ")}.`;
  }

  function holdForRetry(seconds) {
    clearInterval(retryTimer);
    let left = Math.ceil(seconds);
    if (left <= 0) return;
    generateEl.disabled = true;
    const tick = () => {
      if (left <= 0) {
        clearInterval(retryTimer);
        generateEl.disabled = !models.length;
        generateEl.textContent = "Generate";
        return;
      }
      generateEl.textContent = `Generate (retry in ${left} s)`;
      left -= 1;
    };
    tick();
    retryTimer = setInterval(tick, 1000);
  }

  // --- submitting and polling ----------------------------------------------------------

  async function generate(event) {
    event.preventDefault();
    clearFieldErrors();
    const firstSeed = checkSeed();
    checkImages();
    checkLoras();
    const mode = currentMode();
    let problem = "";
    if (mode === "fill" && images.length && maskIsEmpty()) problem = "Paint over the area to repaint, or upload a mask.";
    maskError.textContent = problem;
    if (mode === "expand" && !Object.values(margins()).some(Boolean)) {
      marginEls.top.setCustomValidity("Add at least one margin above 0.");
    } else {
      marginEls.top.setCustomValidity("");
    }
    if (problem) {
      maskCanvas.scrollIntoView({ block: "center" });
      announce(problem);
      return;
    }
    if (!form.reportValidity()) return;
    const entryBase = snapshot();
    if (!entryBase) return;
    const values = images.slice(0, maxImages()).map((i) => i.dataUrl);
    const mask = mode === "fill" ? maskDataUrl() : null;
    const count = Number(countEl.value) || 1;
    // The inputs are kept for "reuse" (IndexedDB), and as small thumbnails in the gallery.
    const inputs = await Promise.all(images.slice(0, maxImages()).map(async (image) => {
      await keep(image.key, image.dataUrl);
      return { key: image.key, type: image.type, name: image.name, width: image.width, height: image.height,
               thumb: await smallCopy(image.dataUrl) };
    }));
    let maskEntry = null;
    if (mask) {
      maskEntry = { key: newKey(), thumb: await smallCopy(mask) };
      await keep(maskEntry.key, mask);
    }
    const entries = [];
    for (let i = 0; i < count; i += 1) {
      const seed = firstSeed === null ? randomSeed() : String((firstSeed + BigInt(i)) % (MAX_SEED + 1n));
      entries.push({ ...entryBase, ...(entryBase.inputs ? { inputs } : {}), ...(maskEntry ? { mask: maskEntry } : {}),
                     seed, id: `local-${Date.now()}-${i}` });
    }
    const files = (i) => (i === "mask" ? mask : values[i]);
    const cards = entries.map((entry, i) => card(entry, `Image ${i + 1} of ${count}`));
    galleryEl.prepend(...cards.map((c) => c.node));
    updateEmpty();
    announce(count === 1 ? "Generating 1 image…" : `Generating ${count} images…`);
    const outcomes = await Promise.all(entries.map((entry, i) => run(entry, cards[i], files)));
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

  async function smallCopy(dataUrl) {
    try {
      const img = await decode(dataUrl);
      return thumbnail(img, INPUT_THUMB_SIDE);
    } catch {
      return null;
    }
  }

  // One job: submit, poll, show. Resolves true when its image is ready, else the reason.
  async function run(entry, view, files) {
    const { url, body } = bflRequest(entry, files);
    body.previews = true; // the latest preview image comes with each poll, where offered
    let pollingUrl;
    try {
      const response = await fetch(url, { method: "POST", headers: headers(true), body: withSeed(body, entry.seed) });
      if (!response.ok) {
        const problem = await describeError(response);
        for (const [container, message] of problem.fields) {
          if (!container.querySelector(".from-server")) showFieldError(container, message);
        }
        if (problem.retryAfter !== null) holdForRetry(problem.retryAfter);
        return view.fail(`Not submitted: ${problem.text}`);
      }
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
        if (!response.ok) return view.fail((await describeError(response)).text);
        result = await response.json();
        failures = 0;
      } catch (error) {
        failures += 1;
        if (failures > POLL_RETRIES) return view.fail(`Lost the server: ${error.message}`);
        await sleep(POLL_MS * 2);
        continue;
      }
      if (result.status === "Pending") {
        view.progress(result.progress ?? 0, result.preview);
        await sleep(POLL_MS);
        continue;
      }
      if (result.status === "Ready") {
        entry.url = result.result.sample;
        entry.created = Date.now();
        const notes = result.details?.notes;
        if (notes?.length) entry.notes = notes;
        view.ready(entry);
        addToGallery(entry);
        return true;
      }
      if (result.status === "Request Moderated" || result.status === "Content Moderated") {
        return view.fail(moderationText(result));
      }
      const message = result.details?.message;
      return view.fail(message && message !== result.status ? `${result.status}: ${message}` : result.status);
    }
  }

  // --- result cards ----------------------------------------------------------------

  // A card: the image (or progress and preview, or the failure) above its inputs,
  // parameters and actions.
  function card(entry, label) {
    const frame = el("div", { class: "frame" });
    if (entry.width && entry.height) frame.style.aspectRatio = `${entry.width} / ${entry.height}`;
    else if (entry.inputs?.[0]) frame.style.aspectRatio = `${entry.inputs[0].width} / ${entry.inputs[0].height}`;
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", class: "reuse", text: "Reuse", title: "Put this image's settings and inputs back in the form",
                     "aria-label": `Reuse the settings of ${entry.prompt ? `“${entry.prompt.slice(0, 40)}”` : "this image"}`,
                     onclick: () => reuse(entry) }));
    const meta = el("div", { class: "meta" }, el("p", { class: "prompt", text: entry.prompt || "(no prompt)" }));
    if (entry.inputs?.length) {
      meta.append(el("ul", { class: "inputs", "aria-label": "Inputs" },
        ...entry.inputs.map((input, i) => el("li", {}, input.thumb
          ? el("img", { src: input.thumb, alt: `Input ${i + 1}: ${input.name}` })
          : el("span", { text: `Input ${i + 1}` }))),
        ...(entry.mask?.thumb ? [el("li", {}, el("img", { src: entry.mask.thumb, alt: "Mask" }))] : [])));
    }
    meta.append(params(entry), actions);
    const node = el("li", { class: "card" }, frame, meta);
    const remove = (name) => el("button", {
      type: "button", class: "remove", "aria-label": name, title: name, text: "✕",
      onclick: () => { removeFromGallery(entry); node.remove(); updateEmpty(); promptEl.focus(); },
    });
    let bar;
    let caption;
    let preview;
    const view = {
      node,
      progress(value, shown) {
        if (!bar) return;
        if (value > 0) bar.value = value;
        caption.textContent = value > 0 ? `Generating… ${Math.round(value * 100)}%` : "Queued";
        if (shown?.image && /^data:image\//.test(shown.image)) {
          if (!preview) {
            preview = el("img", { class: "preview" });
            frame.prepend(preview);
          }
          preview.src = shown.image;
          preview.alt = `Preview at step ${shown.step} of ${shown.steps}`;
        }
      },
      ready(done) {
        frame.replaceChildren(image(done, node));
        actions.prepend(download(done));
        actions.append(remove("Remove"));
        if (done.notes?.length) meta.insertBefore(el("p", { class: "hint notes", text: done.notes.join(" ") }), actions);
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
    const has = (value) => value !== null && value !== undefined;
    const m = entry.margins;
    const rows = [
      ["Mode", MODES[entry.mode || "generate"].label],
      ["Model", entry.model],
      ...(entry.width ? [["Size", `${entry.width}×${entry.height}`]] : []),
      ...(entry.aspect_ratio ? [["Aspect ratio", entry.aspect_ratio]] : []),
      ...(entry.raw ? [["Raw", "yes"]] : []),
      ...(m ? [["Margins", `top ${m.top}, bottom ${m.bottom}, left ${m.left}, right ${m.right}`]] : []),
      ...(has(entry.strength) ? [["Strength", entry.strength]] : []),
      ["Steps", entry.steps],
      ...(has(entry.guidance) ? [["Guidance", entry.guidance]] : []),
      ...(entry.loras?.length ? [["LoRAs", entry.loras.map((l) => `${l.path} @ ${l.scale}`).join(", ")]] : []),
      ["Seed", entry.seed],
    ];
    return el("dl", { class: "params" },
      ...rows.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) }))));
  }

  // The result at its signed URL; once that has expired, the thumbnail kept at load time.
  function image(entry, node) {
    const img = el("img", { alt: entry.prompt || "Generated image" });
    img.addEventListener("load", () => {
      if (!entry.thumb && img.src === entry.url) {
        entry.thumb = thumbnail(img, THUMB_SIDE);
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
  function thumbnail(img, side) {
    try {
      const scale = Math.min(1, side / Math.max(img.naturalWidth, img.naturalHeight));
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

  // Everything back in the form: mode, model, prompt, sizes, inputs, mask, LoRAs, seed.
  async function reuse(entry) {
    const mode = entry.mode || "generate";
    const radio = form.querySelector(`input[name="mode"][value="${mode}"]`);
    if (radio && !radio.disabled) radio.checked = true;
    applyMode(entry.model);
    promptEl.value = entry.prompt;
    const model = currentModel();
    if (entry.width && model) {
      const preset = model.presets.find((p) => p.width === entry.width && p.height === entry.height);
      lastPreset = null;
      sizeEl.value = preset ? preset.name : "custom";
      widthEl.value = entry.width;
      heightEl.value = entry.height;
      applySize();
    }
    stepsEl.value = entry.steps;
    if (!guidanceEl.disabled && entry.guidance !== null && entry.guidance !== undefined) guidanceEl.value = entry.guidance;
    if (entry.strength !== undefined) {
      strengthEl.value = entry.strength;
      $("#strength-value").textContent = String(entry.strength);
    }
    if (entry.margins) for (const [side, value] of Object.entries(entry.margins)) marginEls[side].value = value;
    if (entry.aspect_ratio !== undefined) aspectEl.value = entry.aspect_ratio;
    rawEl.checked = Boolean(entry.raw);
    loraRows = (entry.loras || []).map((l) => ({ ...l }));
    renderLoras();
    seedEl.value = entry.seed;
    seedEl.setCustomValidity("");
    countEl.value = "1";
    let missing = 0;
    if (entry.inputs) {
      const restored = [];
      for (const input of entry.inputs) {
        const dataUrl = (await recall(input.key)) || null;
        if (!dataUrl) {
          missing += 1;
          continue;
        }
        restored.push({ ...input, dataUrl });
      }
      images = restored;
      pickProblem = "";
      maskKey = null;
      renderThumbs();
      checkImages();
      if (entry.mask && images.length) {
        const mask = await recall(entry.mask.key);
        if (mask) await loadMask(mask);
        else missing += 1;
      }
    }
    drawExpand();
    updateCode();
    promptEl.focus();
    announce(`Loaded the settings of that image, with seed ${entry.seed}` +
             (missing ? `; ${missing} input image(s) are no longer kept: add them again.` : "."));
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
        forget(inputKeys(dropped));
      }
    }
  }

  function addToGallery(entry) {
    gallery.unshift(entry);
    for (const dropped of gallery.splice(GALLERY_MAX)) {
      galleryEl.querySelector(`[data-id="${CSS.escape(dropped.id)}"]`)?.remove();
      forget(inputKeys(dropped));
    }
    saveGallery();
  }

  function removeFromGallery(entry) {
    gallery = gallery.filter((e) => e.id !== entry.id);
    saveGallery();
    forget(inputKeys(entry));
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
  for (const radio of form.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => { pickProblem = ""; applyMode(); });
  }
  modelEl.addEventListener("change", applyModel);
  sizeEl.addEventListener("change", () => { applySize(); updateCode(); });
  seedEl.addEventListener("input", () => { checkSeed(); updateCode(); });
  form.addEventListener("input", (event) => {
    if (event.target.closest(".mode-options") || event.target === seedEl) return;
    if (event.target === strengthEl) $("#strength-value").textContent = strengthEl.value;
    if (event.target === brushEl) $("#brush-size-value").textContent = `${brushEl.value}%`;
    if (Object.values(marginEls).includes(event.target)) drawExpand();
    updateCode();
  });
  countEl.addEventListener("change", updateCode);
  imagesEl.addEventListener("change", () => addFiles([...imagesEl.files]));
  for (const type of ["dragenter", "dragover"]) {
    imagesField.addEventListener(type, (event) => {
      event.preventDefault();
      imagesField.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    imagesField.addEventListener(type, () => imagesField.classList.remove("dragging"));
  }
  imagesField.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles([...(event.dataTransfer?.files || [])]);
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length || imagesField.hidden) return;
    event.preventDefault();
    addFiles(files);
  });
  maskCanvas.addEventListener("pointerdown", (event) => {
    if (!images.length) return;
    maskCanvas.setPointerCapture(event.pointerId);
    lastPoint = null;
    paintAt(event);
    maskError.textContent = "";
  });
  maskCanvas.addEventListener("pointermove", (event) => {
    if (event.buttons & 1 && maskCanvas.hasPointerCapture(event.pointerId)) paintAt(event);
  });
  for (const type of ["pointerup", "pointercancel"]) {
    maskCanvas.addEventListener(type, () => { lastPoint = null; updateCode(); });
  }
  $("#mask-clear").addEventListener("click", () => clearMask(false));
  $("#mask-all").addEventListener("click", () => clearMask(true));
  $("#mask-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    maskError.textContent = "";
    if (!file) return;
    if (!images.length) maskError.textContent = "Add the image first, then its mask.";
    else if (!IMAGE_TYPES.includes(file.type)) maskError.textContent = `${file.name} is not a PNG, JPEG or WebP image.`;
    else if (file.size > IMAGE_MAX_BYTES) maskError.textContent = `${file.name} is larger than 10 MB.`;
    else {
      try {
        await loadMask(await readAsDataUrl(file));
        announce("Mask loaded.");
      } catch {
        maskError.textContent = `${file.name} could not be read as an image.`;
      }
    }
    event.target.value = "";
  });
  $("#lora-add").addEventListener("click", () => { addLora(loraPathEl.value); loraPathEl.value = ""; });
  loraPathEl.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addLora(loraPathEl.value);
      loraPathEl.value = "";
    }
  });
  loraRegisteredEl.addEventListener("change", () => {
    const chosen = registered.find((l) => l.name === loraRegisteredEl.value);
    if (chosen) addLora(chosen.name, chosen.scale);
    loraRegisteredEl.value = "";
  });
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  }
  $("#code-copy").addEventListener("click", copyCode);
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
