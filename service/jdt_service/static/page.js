// The pair page: asks for the API key when the server needs one, sends the files to the public
// POST /v1/scores (with overlays=true), shows the per-label table and draws the outlines.
// Plain JavaScript, no libraries, nothing loaded from another host.
"use strict";

(() => {
  const root = document.body.dataset.root || "";
  const authRequired = document.body.dataset.authRequired === "true";
  const KEY_STORE = "jdt-api-key";
  // Okabe & Ito's colour-blind-safe pair (RGB): reference sky blue, prediction orange
  const REFERENCE = [0x56, 0xb4, 0xe9];
  const PREDICTION = [0xe6, 0x9f, 0x00];
  const BACKGROUND = 40; // grey level of the plain background (no image)
  const DISPLAY_PX = 320; // longest side of a picture on screen
  const $ = (id) => document.getElementById(id);

  // Each view: the fixed axis of the RAS+ volume, and for the picture's columns and rows the
  // axis they run along and whether they run against it (radiological convention: the patient's
  // right, large x, on the left; anterior and superior at the top; sagittal: anterior left).
  const VIEWS = {
    axial: { fixed: 2, col: [0, true], row: [1, true], edges: ["A", "R", "L", "P"] },
    coronal: { fixed: 1, col: [0, true], row: [2, true], edges: ["S", "R", "L", "I"] },
    sagittal: { fixed: 0, col: [1, true], row: [2, true], edges: ["S", "A", "P", "I"] },
  };

  const state = { report: null, volumes: null, members: null, rounded: false };

  // Column titles of the metrics (distances in mm); hd95 is the options.percentile-th one.
  const TITLES = {
    dice: "Dice", jaccard: "Jaccard", precision: "Precision", recall: "Recall", tversky: "Tversky",
    hd: "HD (mm)", hd95: "HD95 (mm)", assd: "ASSD (mm)", masd: "MASD (mm)", nsd: "NSD",
    boundary_iou: "Boundary IoU",
  };

  function metricTitle(metric, options) {
    const title = TITLES[metric] || metric;
    const p = options && options.percentile;
    return metric === "hd95" && typeof p === "number" && p !== 95 ? `${title}, ${p}th percentile` : title;
  }

  // A row of a report is a label (label: id) or a region (region: name, members: its labels).
  const isRegion = (row) => typeof row.region === "string";
  const rowName = (row) =>
    isRegion(row) ? `${row.region} (region of ${row.members.join(", ")})` : row.name ? `${row.label} (${row.name})` : String(row.label);

  // Label ids go up to 2^63 - 1; a JavaScript number holds integers exactly only up to 2^53.
  // Larger integers are read as BigInt where the browser hands a reviver the number's text
  // (Chromium 114+, Firefox 135+, Safari 18.4+) and written back as that text; elsewhere they
  // are rounded, and the page says so (state.rounded).
  function parseJson(text) {
    return JSON.parse(text, (key, value, context) => {
      if (typeof value !== "number" || !Number.isInteger(value) || Number.isSafeInteger(value)) return value;
      if (context && /^-?\d+$/.test(context.source)) return BigInt(context.source);
      if (/^-?\d+$/.test(JSON.stringify(value))) state.rounded = true;
      return value;
    });
  }

  const toJson = (value) =>
    JSON.stringify(value, (key, v) => (typeof v === "bigint" ? JSON.rawJSON(String(v)) : v), 2);

  async function readJson(response) {
    return parseJson(await response.text());
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function setMessage(element, text, isError) {
    element.textContent = text;
    element.classList.toggle("error", Boolean(isError));
  }

  // ---------------------------------------------------------------- the API key

  function askForKey(text) {
    $("key-section").hidden = false;
    setMessage($("key-message"), text, true);
    $("api-key").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    // a header carries Latin-1 only: an invisible character pasted with the key would fail
    if (!/^[\x20-\x7e\xa0-\xff]+$/.test(key)) {
      askForKey(key ? "This key holds a character that cannot be sent (an invisible or non-Latin " +
        "character pasted with it?); type or paste the key alone." : "Enter the API key.");
      return;
    }
    let response;
    try {
      response = await fetch(root + "/v1/info", { headers: { Authorization: "Bearer " + key } });
    } catch (error) {
      setMessage($("key-message"), "The server could not be reached (" + error.message + ").", true);
      return;
    }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      askForKey("This API key is not valid: the server refused it. Check it and try again.");
      return;
    }
    if (!response.ok) {
      setMessage($("key-message"), "The server answered " + response.status + "; try again later.", true);
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    setMessage($("key-message"), "Key accepted.", false);
    offerDatasets();
    $("prediction").focus();
  }

  // ---------------------------------------------------------------- scoring

  function formData() {
    const data = new FormData();
    data.append("prediction", $("prediction").files[0]);
    data.append("reference", $("reference").files[0]);
    const wantOverlays = $("want-overlays").checked;
    if (wantOverlays && $("image").files.length) data.append("image", $("image").files[0]);
    const labels = $("labels").value.trim();
    if (labels) data.append("labels", labels);
    const regions = $("regions").value.trim();
    if (regions) data.append("regions", regions);
    const metrics = [...document.querySelectorAll("input[name=metric]:checked")].map((box) => box.value);
    if (metrics.length) data.append("metrics", metrics.join(","));
    data.append("include_background", $("include-background").checked ? "true" : "false");
    data.append("overlays", wantOverlays ? "true" : "false");
    return data;
  }

  function hideResults() {
    $("results").hidden = true;
    $("pictures").hidden = true;
  }

  async function score(event) {
    event.preventDefault();
    if (authRequired && !apiKey()) {
      askForKey("Enter the API key first.");
      return;
    }
    const button = $("score-button");
    const status = $("status");
    button.disabled = true;
    setMessage(status, "Uploading and scoring…", false);
    state.rounded = false;
    let response;
    try {
      response = await fetch(root + "/v1/scores", {
        method: "POST",
        headers: authHeaders(),
        body: formData(),
      });
    } catch (error) {
      hideResults();
      setMessage(status, "Not scored: the server could not be reached (" + error.message + ").", true);
      button.disabled = false;
      return;
    }
    try {
      const body = await readJson(response).catch(() => null);
      if (!response.ok) hideResults(); // an earlier case's scores must not stay beside the error
      if (response.status === 401) {
        sessionStorage.removeItem(KEY_STORE);
        askForKey("This API key is not valid: the server refused it. Check it and try again.");
        setMessage(status, "Not scored: the API key was refused.", true);
        return;
      }
      if (!response.ok) {
        const detail = body && body.detail;
        const text = detail && detail.message ? `${detail.message} [${detail.code}]` : `error ${response.status}`;
        setMessage(status, "Not scored: " + text, true);
        return;
      }
      setMessage(status, `Scored in ${body.seconds.toFixed(2)} s.`, false);
      await show(body);
    } catch (error) {
      hideResults();
      setMessage(status, "Scored, but this page could not show the result (" + error.message +
        "); the API's JSON has it.", true);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- the table

  // Four decimals (or ``decimals``), but never rounded onto 0 or 1 when the value is neither:
  // a Dice of 0.99996 is not a perfect 1.0000, nor a volume of 0.0000271 mL an empty 0.0000.
  function fmt(value, decimals = 4) {
    if (typeof value !== "number") return "";
    const text = value.toFixed(decimals);
    const shown = Number(text);
    if (shown === value || (shown !== 0 && Math.abs(shown) !== 1)) return text;
    if (shown === 0) return value.toPrecision(3);
    for (let digits = decimals + 1; digits < 16; digits++) {
      const longer = value.toFixed(digits);
      if (Math.abs(Number(longer)) !== 1) return longer;
    }
    return String(value);
  }

  // A voxel size as stored (0.48828125 mm), to 6 significant digits.
  const fmtMm = (value) => String(Number(value.toPrecision(6)));

  function columns(report) {
    const cols = [
      // a region sorts by its name, after the labels
      { key: "label", title: "Label", text: (row) => (isRegion(row) ? row.region : String(row.label)) },
      {
        key: "name",
        title: "Name",
        text: (row) => (isRegion(row) ? `region: labels ${row.members.join(", ")}` : row.name || ""),
      },
    ];
    for (const metric of report.options.metrics) {
      cols.push({ key: metric, title: metricTitle(metric, report.options), metric: true });
    }
    cols.push({ key: "reference_ml", title: "Reference mL", text: (row) => fmt(row.reference_ml) });
    cols.push({ key: "predicted_ml", title: "Predicted mL", text: (row) => fmt(row.predicted_ml) });
    return cols;
  }

  function cell(row, col) {
    const td = document.createElement("td");
    td.dataset.column = col.key;
    if (!col.metric) {
      td.textContent = col.text(row);
      return td;
    }
    const value = row[col.key];
    if (typeof value === "number") {
      td.textContent = fmt(value);
    } else {
      const word = document.createElement("span");
      word.className = "undefined";
      word.textContent = "undefined";
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = (row.reasons && row.reasons[col.key]) || "not defined for this label";
      td.append(word, reason);
    }
    return td;
  }

  function renderTable(report, sortKey, descending) {
    const cols = columns(report);
    const headRow = document.querySelector("#scores-table thead tr");
    headRow.replaceChildren();
    for (const col of cols) {
      const th = document.createElement("th");
      th.scope = "col";
      th.setAttribute("aria-sort", col.key === sortKey ? (descending ? "descending" : "ascending") : "none");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = col.title;
      button.addEventListener("click", () =>
        renderTable(report, col.key, col.key === sortKey ? !descending : false),
      );
      th.append(button);
      headRow.append(th);
    }
    const rows = [...report.labels];
    const sortValue = (row) => (sortKey === "label" && isRegion(row) ? null : row[sortKey]);
    rows.sort((a, b) => {
      if (sortKey === "label" && isRegion(a) && isRegion(b)) return a.region.localeCompare(b.region);
      const x = sortValue(a);
      const y = sortValue(b);
      const missingX = x === null || x === undefined;
      const missingY = y === null || y === undefined;
      if (missingX || missingY) return missingX - missingY; // undefined values last
      const numeric = ["number", "bigint"].includes(typeof x) && ["number", "bigint"].includes(typeof y);
      const order = numeric ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    const body = document.querySelector("#scores-table tbody");
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        if (isRegion(row)) tr.dataset.region = row.region;
        else tr.dataset.label = row.label;
        tr.append(...cols.map((col) => cell(row, col)));
        return tr;
      }),
    );
  }

  function csvOf(report) {
    const metrics = report.options.metrics;
    const head = ["label", "region", "members", "name", ...metrics, "reference_ml", "predicted_ml", "reasons"];
    const quote = (value) => {
      const text = value === null || value === undefined ? "" : String(value);
      return /[",\n]/.test(text) ? '"' + text.replaceAll('"', '""') + '"' : text;
    };
    const lines = report.labels.map((row) =>
      [
        row.label,
        row.region,
        row.members ? row.members.join(" ") : null,
        row.name,
        ...metrics.map((metric) => row[metric]),
        row.reference_ml,
        row.predicted_ml,
        Object.entries(row.reasons || {}).map(([k, v]) => `${k}: ${v}`).join("; "),
      ].map(quote).join(","),
    );
    return [head.join(","), ...lines].join("\n") + "\n";
  }

  function setDownload(id, text, type, name) {
    const link = $(id);
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type }));
    link.download = name;
  }

  // ---------------------------------------------------------------- the pictures

  async function inflate(base64, dtype) {
    const bytes = Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buffer = await new Response(stream).arrayBuffer();
    const types = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array };
    return new types[dtype](buffer);
  }

  async function loadVolumes(overlays) {
    const [reference, prediction, image] = await Promise.all([
      inflate(overlays.reference, overlays.label_dtype),
      inflate(overlays.prediction, overlays.label_dtype),
      overlays.image ? inflate(overlays.image, "uint8") : Promise.resolve(null),
    ]);
    return { ...overlays, reference, prediction, image };
  }

  // The voxel index of picture pixel (c, r) on slice s of a view.
  function indexer(volumes, view) {
    const [X, Y, Z] = volumes.shape;
    const sizes = volumes.shape;
    const [colAxis, colFlip] = view.col;
    const [rowAxis, rowFlip] = view.row;
    const cols = sizes[colAxis];
    const rows = sizes[rowAxis];
    return {
      cols,
      rows,
      at(c, r, s) {
        const v = [0, 0, 0];
        v[view.fixed] = s;
        v[colAxis] = colFlip ? cols - 1 - c : c;
        v[rowAxis] = rowFlip ? rows - 1 - r : r;
        return (v[0] * Y + v[1]) * Z + v[2];
      },
      X,
    };
  }

  // The outline of the voxels whose label is one of `members` (one label, or a region's).
  function outline(volume, idx, slice, members) {
    const { cols, rows } = idx;
    const inside = new Uint8Array(cols * rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) inside[r * cols + c] = members.has(volume[idx.at(c, r, slice)]) ? 1 : 0;
    }
    const edge = new Uint8Array(cols * rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const p = r * cols + c;
        if (!inside[p]) continue;
        edge[p] =
          c === 0 || r === 0 || c === cols - 1 || r === rows - 1 ||
          !inside[p - 1] || !inside[p + 1] || !inside[p - cols] || !inside[p + cols] ? 1 : 0;
      }
    }
    return edge;
  }

  function draw(name) {
    const volumes = state.volumes;
    const view = VIEWS[name];
    const idx = indexer(volumes, view);
    const { cols, rows } = idx;
    const slider = $(name + "-slider");
    const slice = Number(slider.value);
    const pixels = new ImageData(cols, rows);
    const data = pixels.data;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const grey = volumes.image ? volumes.image[idx.at(c, r, slice)] : BACKGROUND;
        const p = 4 * (r * cols + c);
        data[p] = data[p + 1] = data[p + 2] = grey;
        data[p + 3] = 255;
      }
    }
    const ref = outline(volumes.reference, idx, slice, state.members);
    const pred = outline(volumes.prediction, idx, slice, state.members);
    for (let p = 0; p < cols * rows; p++) {
      if (!ref[p] && !pred[p]) continue;
      const both = ref[p] && pred[p];
      const colour = both ? ((p % cols) + Math.floor(p / cols)) % 2 ? REFERENCE : PREDICTION : ref[p] ? REFERENCE : PREDICTION;
      data.set(colour, 4 * p);
    }
    const native = document.createElement("canvas");
    native.width = cols;
    native.height = rows;
    native.getContext("2d").putImageData(pixels, 0, 0);
    // true aspect: each pixel is as wide and high as its voxel in mm
    const spacing = volumes.spacing_mm;
    const widthMm = cols * spacing[view.col[0]];
    const heightMm = rows * spacing[view.row[0]];
    const scale = DISPLAY_PX / Math.max(widthMm, heightMm);
    const canvas = $(name + "-canvas");
    canvas.width = Math.max(1, Math.round(widthMm * scale));
    canvas.height = Math.max(1, Math.round(heightMm * scale));
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(native, 0, 0, canvas.width, canvas.height);
    const total = volumes.shape[view.fixed];
    const step = volumes.step ? volumes.step[view.fixed] : 1;
    $(name + "-value").textContent =
      step > 1 ? `slice ${slice + 1} of ${total} shown (1 in ${step} of the volume's)` : `slice ${slice + 1} of ${total}`;
  }

  // A region's centre: the mean voxel of reference ∪ prediction over its labels (a label's
  // comes with the overlays); the volume's centre when it is empty.
  function regionCentre(volumes, members) {
    const [, Y, Z] = volumes.shape;
    const sums = [0, 0, 0];
    let n = 0;
    for (let i = 0; i < volumes.reference.length; i++) {
      if (!members.has(volumes.reference[i]) && !members.has(volumes.prediction[i])) continue;
      sums[0] += Math.floor(i / (Y * Z));
      sums[1] += Math.floor(i / Z) % Y;
      sums[2] += i % Z;
      n++;
    }
    return n ? sums.map((sum) => Math.round(sum / n)) : null;
  }

  // `choice`: a label id, or "region:NAME"
  function centreOn(choice) {
    const volumes = state.volumes;
    let centre = null;
    if (choice.startsWith("region:")) {
      const row = state.report.labels.find((item) => isRegion(item) && item.region === choice.slice(7));
      state.members = new Set(row.members);
      centre = regionCentre(volumes, state.members);
    } else {
      state.members = new Set([Number(choice)]);
      const entry = volumes.centres.find((item) => item.label === Number(choice));
      centre = entry ? entry.centre : null;
    }
    for (const [name, view] of Object.entries(VIEWS)) {
      const slider = $(name + "-slider");
      slider.max = String(volumes.shape[view.fixed] - 1);
      slider.value = String(centre ? centre[view.fixed] : Math.floor(volumes.shape[view.fixed] / 2));
      draw(name);
    }
  }

  function fillLabelPicker(report, overlays) {
    const picker = $("label-picker");
    picker.replaceChildren(
      ...report.labels.map((row) => {
        const option = document.createElement("option");
        option.value = isRegion(row) ? "region:" + row.region : String(row.label);
        option.textContent = rowName(row);
        return option;
      }),
    );
    if (overlays.worst_label !== null) picker.value = String(overlays.worst_label);
    const by = { dice: "lowest Dice", jaccard: "lowest Jaccard" }[overlays.worst_by];
    $("label-note").textContent =
      overlays.worst_label === null
        ? ""
        : by
          ? `Opened at the worst-scoring label (${by}): ${overlays.worst_label}.`
          : `Opened at the first label, ${overlays.worst_label} (neither Dice nor Jaccard was scored).`;
  }

  // ---------------------------------------------------------------- putting it together

  async function show(report) {
    const { overlays, ...rest } = report;
    state.report = rest;
    const caseName = rest.case_id ? `Case ${rest.case_id}: ` : "";
    $("case-summary").textContent =
      `${caseName}${rest.kind}, shape ${rest.shape.join(" × ")}, voxel ${rest.spacing_mm ? rest.spacing_mm.map(fmtMm).join(" × ") + " mm" : "size unknown"}, scored on ${rest.device}.`;
    const notes = [...(rest.notes || []), ...(rest.warnings || [])];
    if (state.rounded) {
      notes.push("This browser rounds integers above 2^53: label ids that large are shown and " +
        "downloaded here rounded (two may even look alike); the API's JSON has them exactly.");
    }
    $("notes").replaceChildren(
      ...notes.map((note) => {
        const li = document.createElement("li");
        li.textContent = typeof note === "string" ? note : JSON.stringify(note);
        return li;
      }),
    );
    renderTable(rest, "label", false);
    const stem = rest.case_id || "scores";
    setDownload("download-json", toJson(rest), "application/json", stem + ".json");
    setDownload("download-csv", csvOf(rest), "text/csv", stem + ".csv");
    $("results").hidden = false;
    if (!overlays || !rest.labels.length) {
      $("pictures").hidden = true;
      return;
    }
    state.volumes = await loadVolumes(overlays);
    for (const [name, view] of Object.entries(VIEWS)) {
      const edges = document.querySelectorAll(`[data-view=${name}] .edge`);
      view.edges.forEach((letter, i) => {
        edges[i].textContent = letter;
      });
    }
    fillLabelPicker(rest, overlays);
    $("pictures").hidden = false;
    centreOn($("label-picker").value);
  }


  // ---------------------------------------------------------------- a dataset (the jobs API)

  const FINISHED = ["done", "failed", "cancelled"];
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const BOX_METRICS = [["dice", "Dice", 1], ["hd95", "HD95 (mm)", null]];
  const job = { id: null, referenceSet: null };
  const datasetBoxes = () => [...document.querySelectorAll("input[name=dataset-metric]")];
  // the dataset form's metrics as the page came (used when a set has no metrics of its own)
  const DATASET_DEFAULTS = datasetBoxes().filter((box) => box.checked).map((box) => box.value);
  const setOptions = new Map(); // reference set id -> its default options

  // A request that got no answer at all (the network, not the server), told apart from an
  // error of this page's own drawing.
  class Unreachable extends Error {}

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(root + path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    } catch (error) {
      throw new Unreachable(error.message);
    }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      askForKey("This API key is not valid: the server refused it. Check it and try again.");
    }
    return response;
  }

  async function errorText(response) {
    const body = await response.json().catch(() => null);
    const detail = body && body.detail;
    return detail && detail.message ? `${detail.message} [${detail.code}]` : `error ${response.status}`;
  }

  // Shown only where the server has the jobs API.
  async function offerDatasets() {
    if (authRequired && !apiKey()) return;
    const response = await api("/v1/reference-sets");
    if (!response.ok) return;
    const body = await response.json();
    const picker = $("reference-set");
    picker.replaceChildren(picker.options[0]);
    setOptions.clear();
    for (const set of body.reference_sets || []) {
      setOptions.set(set.id, set.options || {});
      const option = document.createElement("option");
      option.value = set.id;
      option.textContent = `${set.name} (${set.cases_total} cases, version ${String(set.version).slice(0, 8)})`;
      picker.append(option);
    }
    if (picker.options.length > 1) picker.selectedIndex = 1;
    referencesChoice();
    $("dataset-section").hidden = false;
  }

  // A reference set brings its default options: its metrics tick the boxes, its labels and
  // regions show as the placeholders (an empty field keeps the set's).
  function referencesChoice() {
    const setId = $("reference-set").value;
    $("references-field").hidden = setId !== "";
    const options = setOptions.get(setId) || {};
    const wanted = options.metrics ? options.metrics.split(",").map((m) => m.trim()) : DATASET_DEFAULTS;
    for (const box of datasetBoxes()) box.checked = wanted.includes(box.value);
    $("dataset-labels").placeholder = options.labels || "1=liver,2=spleen";
    $("dataset-regions").placeholder = options.regions || "WT=1,2,3;TC=2,3;ET=3";
  }

  async function submitJob(event) {
    event.preventDefault();
    const status = $("job-status");
    const data = new FormData();
    data.append("predictions", $("predictions").files[0]);
    const setId = $("reference-set").value;
    if (setId) data.append("reference_set", setId);
    else if ($("references").files.length) data.append("references", $("references").files[0]);
    else {
      setMessage(status, "Choose a reference set or a references archive.", true);
      return;
    }
    const labels = $("dataset-labels").value.trim();
    if (labels) data.append("labels", labels);
    const regions = $("dataset-regions").value.trim();
    if (regions) data.append("regions", regions);
    const metrics = datasetBoxes().filter((box) => box.checked).map((box) => box.value);
    if (metrics.length) data.append("metrics", metrics.join(","));
    $("dataset-button").disabled = true;
    $("dataset-results").hidden = true;
    setMessage(status, "Uploading…", false);
    try {
      const response = await api("/v1/jobs", { method: "POST", body: data });
      if (!response.ok) {
        setMessage(status, "Not submitted: " + (await errorText(response)), true);
        return;
      }
      const created = await response.json();
      job.id = created.id;
      job.referenceSet = setId || null;
      await follow(created);
    } catch (error) {
      const shown = error instanceof Unreachable
        ? "The server could not be reached (" + error.message + ")."
        : "This page could not show the job (" + error.message + "); the API has its report.";
      setMessage(status, shown, true);
    } finally {
      $("dataset-button").disabled = false;
    }
  }

  async function follow(current) {
    const bar = $("job-progress");
    const status = $("job-status");
    for (;;) {
      const { cases_done: done, cases_total: total, failures } = current.progress;
      const unpaired = current.unpaired || { predictions: [], references: [] };
      bar.max = Math.max(1, total);
      bar.value = done;
      setMessage(status, `Job ${current.id}: ${current.status}, ${done} of ${total} cases scored` +
        (failures ? `, ${failures} failed` : "") +
        (unpaired.references.length ? `, ${plural(unpaired.references.length, "reference")} without a prediction` : "") +
        (unpaired.predictions.length ? `, ${plural(unpaired.predictions.length, "prediction")} without a reference` : "") +
        (current.error ? `: ${current.error}` : "") + ".", current.status === "failed");
      if (FINISHED.includes(current.status)) break;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const response = await api(`/v1/jobs/${current.id}`);
      if (!response.ok) {
        setMessage(status, "Lost the job: " + (await errorText(response)), true);
        return;
      }
      current = await response.json();
    }
    if (current.status !== "done") return;
    const response = await api(`/v1/jobs/${current.id}/report`);
    if (!response.ok) {
      setMessage(status, "No report: " + (await errorText(response)), true);
      return;
    }
    showDataset(await readJson(response));
  }

  // Quantile by linear interpolation between order statistics (numpy's default).
  function quantile(sorted, q) {
    const at = (sorted.length - 1) * q;
    const low = Math.floor(at);
    const high = Math.min(low + 1, sorted.length - 1);
    return sorted[low] + (sorted[high] - sorted[low]) * (at - low);
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // One horizontal box plot per label (and region): box from the 1st to the 3rd quartile, the
  // median line, whiskers to the extremes, every case where the metric is defined as a dot.
  function boxPlot(report, metric, title, fixedMax) {
    if (!report.cases.some((caseReport) => caseReport.options.metrics.includes(metric))) return null;
    const byLabel = new Map();
    for (const caseReport of report.cases) {
      for (const row of caseReport.labels) {
        const key = rowName(row);
        if (!byLabel.has(key)) {
          const where = isRegion(row) ? { "data-region": row.region } : { "data-label": row.label };
          byLabel.set(key, { where, values: [], undefined: 0 });
        }
        const entry = byLabel.get(key);
        if (typeof row[metric] === "number") entry.values.push(row[metric]);
        else entry.undefined++;
      }
    }
    for (const [key, entry] of byLabel) if (!entry.values.length) byLabel.delete(key);
    if (!byLabel.size) return null;
    const all = [...byLabel.values()].flatMap((entry) => entry.values);
    const top = fixedMax || all.reduce((a, b) => Math.max(a, b), 0) || 1;
    const left = 240, width = 420, rowHeight = 34;
    const height = rowHeight * byLabel.size + 52;
    const x = (value) => left + (value / top) * width;
    const plot = svg("svg", { class: "box-plot", width: left + width + 20, height, role: "img",
      "aria-label": `Box plots of ${title} over cases, per label`, "data-metric": metric });
    plot.append(svg("text", { x: 4, y: 14 }, title));
    let y = 30;
    for (const [key, entry] of byLabel) {
      const values = [...entry.values].sort((a, b) => a - b);
      const [q1, median, q3] = [0.25, 0.5, 0.75].map((q) => quantile(values, q));
      const group = svg("g", { ...entry.where, "data-median": median, "data-q1": q1,
        "data-q3": q3, "data-n": values.length, "data-undefined": entry.undefined });
      const mid = y + rowHeight / 2 - 4;
      const caption = entry.undefined ? `${key}, ${entry.undefined} undefined` : key;
      group.append(
        svg("title", {}, `${key}: median ${fmt(median)}, quartiles ${fmt(q1)} to ${fmt(q3)}, ${values.length} cases` +
          (entry.undefined ? ` (${entry.undefined} where it is undefined left out)` : "")),
        svg("text", { x: 4, y: mid + 4 }, caption),
        svg("line", { class: "whisker", x1: x(values[0]), x2: x(values[values.length - 1]), y1: mid, y2: mid }),
        svg("rect", { class: "box", x: x(q1), y: mid - 9, width: Math.max(1, x(q3) - x(q1)), height: 18 }),
        svg("line", { class: "median", x1: x(median), x2: x(median), y1: mid - 9, y2: mid + 9 }),
        ...values.map((value) => svg("circle", { class: "point", cx: x(value), cy: mid, r: 2.5 })),
      );
      plot.append(group);
      y += rowHeight;
    }
    plot.append(
      svg("line", { class: "axis", x1: left, x2: left + width, y1: y, y2: y }),
      svg("text", { x: left, y: y + 14 }, "0"),
      svg("text", { x: left + width - 30, y: y + 14 }, top.toFixed(top >= 10 ? 0 : 2)),
    );
    return plot;
  }

  function caseRows(report) {
    const rows = report.cases.map((caseReport) => {
      // labels only: a region repeats its labels' voxels
      const scored = caseReport.labels.filter((row) => !isRegion(row) && typeof row.dice === "number");
      const mean = scored.length ? scored.reduce((sum, row) => sum + row.dice, 0) / scored.length : null;
      const worst = scored.length ? scored.reduce((a, b) => (b.dice < a.dice ? b : a)) : null;
      return { case_id: caseReport.case_id, mean, worst, failure: null };
    });
    for (const failure of report.failures || []) {
      rows.push({ case_id: failure.case_id, mean: null, worst: null, failure: `${failure.message} [${failure.code}]` });
    }
    for (const name of (report.unpaired || {}).references || []) {
      rows.push({ case_id: name, mean: null, worst: null, failure: "no prediction for this reference" });
    }
    // failed cases first, then the lowest mean Dice
    rows.sort((a, b) => (a.mean === null) !== (b.mean === null) ? (a.mean === null ? -1 : 1) : (a.mean ?? 0) - (b.mean ?? 0));
    return rows;
  }

  function showDataset(report) {
    const plots = $("box-plots");
    plots.replaceChildren(
      ...BOX_METRICS.map(([metric, title, fixedMax]) => boxPlot(report, metric, title, fixedMax)).filter(Boolean),
    );
    $("cases-table").querySelector("tbody").replaceChildren(
      ...caseRows(report).map((row) => {
        const tr = document.createElement("tr");
        tr.dataset.case = row.case_id;
        const cells = [
          row.case_id,
          row.mean === null ? "" : fmt(row.mean),
          row.worst ? `${fmt(row.worst.dice)}, label ${rowName(row.worst)}` : "",
          row.failure || "",
        ];
        tr.append(...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
        return tr;
      }),
    );
    const ignored = (report.unpaired || {}).predictions || [];
    const unscored = $("unpaired-predictions");
    unscored.textContent = ignored.length
      ? `Not scored, no reference of that name: ${ignored.join(", ")}.`
      : "";
    unscored.hidden = !ignored.length;
    $("dataset-results").hidden = false;
    // the leaderboard ranks by any metric the job scored (Dice first when it did)
    const choice = $("leaderboard-metric");
    const scored = report.summary.metrics;
    choice.replaceChildren(...scored.map((metric) =>
      Object.assign(document.createElement("option"), { value: metric, textContent: metricTitle(metric, null) })));
    choice.value = scored.includes("dice") ? "dice" : scored[0];
    showLeaderboard();
  }

  // The decimals (4 to 12) that tell apart every two neighbouring scores that differ: two
  // teams ranked apart are never shown with the same score.
  function rankDecimals(scores) {
    const numbers = scores.filter((value) => typeof value === "number");
    for (let decimals = 4; decimals < 12; decimals++) {
      const texts = numbers.map((value) => fmt(value, decimals));
      if (numbers.every((value, i) => i === 0 || value === numbers[i - 1] || texts[i] !== texts[i - 1])) {
        return decimals;
      }
    }
    return 12;
  }

  async function showLeaderboard() {
    const board = $("leaderboard");
    if (!job.referenceSet) {
      board.hidden = true;
      return;
    }
    const metric = encodeURIComponent($("leaderboard-metric").value || "dice");
    const response = await api(`/v1/reference-sets/${job.referenceSet}/leaderboard?metric=${metric}&aggregate=mean`);
    if (!response.ok) {
      board.hidden = true;
      return;
    }
    const body = await readJson(response);
    const decimals = rankDecimals(body.entries.map((entry) => entry.score));
    $("leaderboard-order").textContent = body.better === "lower" ? "(lower is better)" : "(higher is better)";
    board.querySelector("tbody").replaceChildren(
      ...body.entries.map((entry) => {
        const tr = document.createElement("tr");
        const score = typeof entry.score === "number" ? fmt(entry.score, decimals) : "undefined";
        tr.append(...[entry.rank, entry.team, score, entry.cases].map((text) =>
          Object.assign(document.createElement("td"), { textContent: String(text) })));
        return tr;
      }),
    );
    // teams whose newest job was scored with other options than the set's, or not on
    // every case of the set, do not rank
    const reasons = (entry) => [
      ...entry.differs,
      ...(entry.failed ? [plural(entry.failed, "case") + " failed"] : []),
      ...(entry.missing ? [plural(entry.missing, "reference") + " without a prediction"] : []),
    ].join(", ");
    const excluded = $("leaderboard-excluded");
    excluded.textContent = (body.excluded || []).length
      ? "Not ranked (newest job scored with other options than the set's, or not on every case): " +
        body.excluded.map((entry) => `${entry.team} (${reasons(entry)})`).join("; ")
      : "";
    excluded.hidden = !excluded.textContent;
    board.hidden = false;
  }

  // Downloads need the key header, so they are fetched and handed over as a file.
  async function download(event) {
    const button = event.target.closest("button[data-download]");
    if (!button || !job.id) return;
    const response = await api(`/v1/jobs/${job.id}/${button.dataset.download}`);
    if (!response.ok) {
      setMessage($("job-status"), "Download failed: " + (await errorText(response)), true);
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = button.dataset.name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  }

  $("key-form").addEventListener("submit", useKey);
  $("dataset-form").addEventListener("submit", submitJob);
  $("reference-set").addEventListener("change", referencesChoice);
  $("dataset-results").addEventListener("click", download);
  $("pair-form").addEventListener("submit", score);
  $("label-picker").addEventListener("change", (event) => centreOn(event.target.value));
  $("leaderboard-metric").addEventListener("change", showLeaderboard);
  for (const name of Object.keys(VIEWS)) {
    $(name + "-slider").addEventListener("input", () => draw(name));
  }
  if (authRequired && apiKey()) setMessage($("key-message"), "Using the key given earlier in this tab.", false);
  offerDatasets();
})();
