// The slidegrade viewer: submit a slide, follow its job, and look at the slide with
// its Grad-CAM heatmaps laid over it. Plain script, no build step; served by the
// binary together with OpenSeadragon (window.OpenSeadragon).
'use strict';

(() => {
  const KEY_STORAGE = 'slidegrade.apiKey';
  const POLL_MS = 1000;
  const JOBS_REFRESH_MS = 10000;
  const byId = (id) => document.getElementById(id);

  let apiKey = localStorage.getItem(KEY_STORAGE) || '';
  let viewer = null;
  // Everything about the job on screen; replaced wholesale when another job opens.
  let current = newCurrent(null);

  function newCurrent(id) {
    return {
      id,
      job: null,
      poll: null,
      slideOpen: false,
      slideWidth: 0,
      result: null,
      overlays: new Map(), // class → OpenSeadragon.TiledImage (Grad-CAM)
      attentionOverlays: new Map(), // class → OpenSeadragon.TiledImage (AT+ map)
      blobUrls: [],
      overlaysAdded: false,
      slideRequested: false,
    };
  }

  class ApiFailure extends Error {
    constructor(status, message, errorType) {
      super(message);
      this.status = status;
      this.errorType = errorType;
    }
  }

  function authHeaders() {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  // fetch with the key, and the API's `{error, error_type}` body turned into an error.
  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
    if (!response.ok) {
      let body = {};
      try {
        body = await response.json();
      } catch (_) {
        // Not JSON (a proxy's page): the status text will do.
      }
      if (response.status === 401) {
        byId('auth').classList.add('needed');
        byId('auth').open = true;
      }
      throw new ApiFailure(response.status, body.error || response.statusText, body.error_type);
    }
    return response;
  }

  function showMessage(text) {
    const el = byId('message');
    el.textContent = text || '';
    el.hidden = !text;
  }

  // ---------------------------------------------------------------- API key

  function setupKeyForm() {
    const input = byId('api-key');
    input.value = apiKey;
    byId('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      setKey(input.value.trim());
    });
    byId('key-clear').addEventListener('click', () => {
      input.value = '';
      setKey('');
    });
  }

  function setKey(key) {
    apiKey = key;
    if (key) {
      localStorage.setItem(KEY_STORAGE, key);
    } else {
      localStorage.removeItem(KEY_STORAGE);
    }
    byId('auth').classList.remove('needed');
    byId('auth').open = false;
    if (viewer) {
      viewer.setAjaxHeaders(authHeaders(), true);
    }
    showMessage('');
    loadModels();
    refreshJobs();
    if (current.id) {
      openJob(current.id);
    }
  }

  // ---------------------------------------------------------------- models and submission

  async function loadModels() {
    try {
      const body = await (await api('/v1/models')).json();
      const select = byId('model');
      select.replaceChildren(new Option('(server default)', ''));
      for (const m of body.models) {
        const label = `${m.name} v${m.version}${m.default ? ' (default)' : ''}`;
        select.append(new Option(label, m.name));
      }
    } catch (e) {
      showMessage(`Models: ${e.message}`);
    }
  }

  async function submitSlide(file) {
    if (!file) {
      return;
    }
    const form = new FormData();
    const model = byId('model').value;
    const mpp = byId('mpp').value.trim();
    if (model) {
      form.append('model', model);
    }
    if (mpp) {
      form.append('mpp', mpp);
    }
    form.append('slide', file, file.name);
    showMessage('');
    const drop = byId('drop');
    drop.classList.add('busy');
    drop.querySelector('p').textContent = `Uploading ${file.name}…`;
    try {
      const job = await (await api('/v1/slides', { method: 'POST', body: form })).json();
      openJob(job.id);
      refreshJobs();
    } catch (e) {
      showMessage(`Upload refused: ${e.message}`);
    } finally {
      drop.classList.remove('busy');
      drop.querySelector('p').textContent = 'Drop a slide here, or';
      byId('slide-file').value = '';
    }
  }

  function setupDrop() {
    const drop = byId('drop');
    byId('slide-file').addEventListener('change', (e) => submitSlide(e.target.files[0]));
    // A file dropped anywhere on the page is a submission, not a navigation away.
    document.addEventListener('dragover', (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
    document.addEventListener('dragleave', (e) => {
      if (e.relatedTarget === null) {
        drop.classList.remove('over');
      }
    });
    document.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      submitSlide(e.dataTransfer && e.dataTransfer.files[0]);
    });
    drop.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        byId('slide-file').click();
      }
    });
  }

  // ---------------------------------------------------------------- recent jobs

  async function refreshJobs() {
    try {
      const body = await (await api('/v1/jobs')).json();
      const list = byId('jobs');
      list.replaceChildren();
      for (const job of body.jobs) {
        const li = document.createElement('li');
        li.dataset.id = job.id;
        li.classList.toggle('current', job.id === current.id);
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = job.slide_name;
        name.title = job.id;
        const state = document.createElement('span');
        state.className = `state ${job.state}`;
        state.textContent = job.state;
        const when = document.createElement('span');
        when.className = 'when';
        when.textContent = `${new Date(job.created_at * 1000).toLocaleString()}${job.model ? ` · ${job.model}` : ''}`;
        li.append(name, state, when);
        li.addEventListener('click', () => openJob(job.id));
        list.append(li);
      }
      if (body.jobs.length === 0) {
        const li = document.createElement('li');
        li.textContent = 'none yet';
        list.append(li);
      }
    } catch (e) {
      if (e.status !== 401) {
        showMessage(`Jobs: ${e.message}`);
      }
    }
  }

  // ---------------------------------------------------------------- one job

  function openJob(id) {
    if (current.poll) {
      clearTimeout(current.poll);
    }
    for (const url of current.blobUrls) {
      URL.revokeObjectURL(url);
    }
    current = newCurrent(id);
    if (location.hash !== `#job=${id}`) {
      history.replaceState(null, '', `#job=${id}`);
    }
    for (const li of byId('jobs').children) {
      li.classList.toggle('current', li.dataset.id === id);
    }
    byId('job').hidden = false;
    byId('summary').hidden = true;
    byId('job-id').textContent = id.slice(0, 8);
    byId('job-id').title = id;
    byId('job-error').hidden = true;
    resetOverlayControls();
    if (viewer) {
      viewer.close();
    }
    byId('viewer-empty').textContent = 'Opening the slide…';
    byId('viewer-empty').hidden = false;
    pollJob(current);
  }

  async function pollJob(mine) {
    if (mine !== current) {
      return; // another job was opened meanwhile
    }
    try {
      const job = await (await api(`/v1/jobs/${mine.id}`)).json();
      if (mine !== current) {
        return;
      }
      const previous = mine.job && mine.job.state;
      mine.job = job;
      showJob(job);
      if (!mine.slideOpen && !mine.slideRequested) {
        mine.slideRequested = true;
        openSlide(mine);
      }
      if (job.state === 'done') {
        await loadResult(mine);
      }
      if (previous !== job.state) {
        refreshJobs();
      }
      if (job.state === 'queued' || job.state === 'running') {
        mine.poll = setTimeout(() => pollJob(mine), POLL_MS);
      }
    } catch (e) {
      showMessage(`Job ${mine.id}: ${e.message}`);
    }
  }

  function showJob(job) {
    byId('job-slide').textContent = job.slide_name;
    const state = byId('job-state');
    state.textContent = job.state;
    state.className = `state ${job.state}`;
    const progress = byId('job-progress');
    if (job.progress_total > 0) {
      progress.max = job.progress_total;
      progress.value = job.progress_done;
      byId('job-progress-text').textContent = `${job.progress_done} / ${job.progress_total} tiles`;
    } else {
      progress.max = 1;
      progress.value = job.state === 'done' ? 1 : 0;
      byId('job-progress-text').textContent = '';
    }
    const error = byId('job-error');
    error.hidden = !job.error;
    error.textContent = job.error ? `${job.error_type}: ${job.error}` : '';
  }

  async function loadResult(mine) {
    const result = await (await api(`/v1/jobs/${mine.id}/result`)).json();
    if (mine !== current) {
      return;
    }
    mine.result = result;
    showSummary(mine, result);
    addOverlays(mine);
  }

  // ---------------------------------------------------------------- summary

  // The colours of render.rs's class_colour, so the table matches overlay.png and QuPath.
  function classColour(name, index) {
    const palette = ['#1f77b4', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#17becf'];
    switch (name.trim().toUpperCase()) {
      case 'NC':
      case 'BENIGN':
        return '#2ca02c';
      case 'G3':
        return '#ffd700';
      case 'G4':
        return '#ff8c00';
      case 'G5':
        return '#d62728';
      default:
        return palette[index % palette.length];
    }
  }

  function showSummary(mine, r) {
    const g = r.grade;
    byId('gleason').textContent = g ? g.gleason : 'no tissue found';
    byId('isup').textContent = g ? (g.isup_grade_group === 0 ? '0 (benign)' : String(g.isup_grade_group)) : '—';
    byId('tumour').textContent = g ? `${g.tumour_percent.toFixed(1)} %` : '—';
    byId('confidence').textContent = r.confidence == null ? '—' : `${(r.confidence * 100).toFixed(0)} %`;
    byId('tissue').textContent = `${r.tissue_area_mm2.toFixed(2)} mm² in ${r.tiles.inferred} tile${r.tiles.inferred === 1 ? '' : 's'}`;
    byId('model-name').textContent = `${r.model.name} v${r.model.version} (${r.model.provider}, ${r.magnification.mpp} µm/px)`;

    const tbody = byId('areas').querySelector('tbody');
    tbody.replaceChildren();
    const total = r.tissue_area_mm2 || 0;
    r.model.classes.forEach((cls, i) => {
      const area = r.class_areas_mm2[cls] || 0;
      const tr = document.createElement('tr');
      const name = document.createElement('td');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = classColour(cls, i);
      name.append(swatch, cls);
      const mm2 = document.createElement('td');
      mm2.textContent = area.toFixed(3);
      const share = document.createElement('td');
      share.textContent = total > 0 ? `${((100 * area) / total).toFixed(1)} %` : '—';
      tr.append(name, mm2, share);
      tbody.append(tr);
    });

    const id = mine.id;
    const outputs = [
      ['result.json', `/v1/jobs/${id}/result`],
      ['overlay.png', `/v1/jobs/${id}/overlay.png`],
      ['tiles.geojson', `/v1/jobs/${id}/tiles.geojson`],
      ['tiles.csv', `/v1/jobs/${id}/tiles.csv`],
      ['FHIR R4', `/v1/jobs/${id}/fhir`],
      ['HL7 v2', `/v1/jobs/${id}/hl7`],
    ];
    for (const layer of r.heatmap.layers) {
      outputs.push([layer.file, mapPath(id, 'heatmap', layer)]);
    }
    for (const layer of r.heatmap.attention_layers || []) {
      outputs.push([layer.file, mapPath(id, 'attention', layer)]);
    }
    const list = byId('outputs');
    list.replaceChildren();
    for (const [label, href] of outputs) {
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.textContent = label;
      a.href = href;
      a.target = '_blank';
      a.rel = 'noopener';
      a.addEventListener('click', (event) => downloadWithKey(event, href, label));
      li.append(a);
      list.append(li);
    }
    byId('summary').hidden = false;
  }

  // A plain link cannot carry the key: with a key set, fetch the file and save it.
  async function downloadWithKey(event, href, name) {
    if (!apiKey) {
      return;
    }
    event.preventDefault();
    try {
      const blob = await (await api(href)).blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = name.includes('.') ? name : `${name.replace(/\W+/g, '_')}.txt`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      showMessage(`${name}: ${e.message}`);
    }
  }

  // ---------------------------------------------------------------- slide and overlays

  function ensureViewer() {
    if (viewer) {
      return viewer;
    }
    viewer = window.OpenSeadragon({
      element: byId('viewer'),
      // The canvas drawer honours imageSmoothingEnabled and works without a GPU.
      drawer: 'canvas',
      // Nearest-neighbour scaling: one heatmap pixel is one Grad-CAM cell, and its edges
      // must stay on the tile edges instead of blurring into the neighbours.
      imageSmoothingEnabled: false,
      // Our own buttons, so no image assets are needed.
      showNavigationControl: false,
      showNavigator: true,
      navigatorPosition: 'BOTTOM_RIGHT',
      navigatorSizeRatio: 0.16,
      // Tiles through XHR, so they carry the API key.
      loadTilesWithAjax: true,
      ajaxHeaders: authHeaders(),
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.3,
      gestureSettingsMouse: { clickToZoom: false },
    });
    viewer.addHandler('open-failed', (e) => {
      byId('viewer-empty').textContent = `The slide cannot be shown: ${e.message}`;
      byId('viewer-empty').hidden = false;
    });
    byId('zoom-in').addEventListener('click', () => viewer.viewport.zoomBy(1.5));
    byId('zoom-out').addEventListener('click', () => viewer.viewport.zoomBy(1 / 1.5));
    byId('zoom-home').addEventListener('click', () => viewer.viewport.goHome());
    return viewer;
  }

  // Reads the DZI descriptor with the key (and the API's error message if it fails),
  // then gives OpenSeadragon the same descriptor inline.
  async function openSlide(mine) {
    let xml;
    try {
      xml = await (await api(`/v1/jobs/${mine.id}/slide.dzi`)).text();
    } catch (e) {
      if (mine === current) {
        byId('viewer-empty').textContent = `The slide cannot be shown: ${e.message}`;
      }
      return;
    }
    if (mine !== current) {
      return;
    }
    const doc = new DOMParser().parseFromString(xml, 'application/xml');
    const image = doc.documentElement;
    const size = image.getElementsByTagName('Size')[0];
    const width = Number(size.getAttribute('Width'));
    const height = Number(size.getAttribute('Height'));
    const v = ensureViewer();
    v.setAjaxHeaders(authHeaders(), true);
    v.addOnceHandler('open', () => {
      if (mine !== current) {
        return;
      }
      mine.slideOpen = true;
      mine.slideWidth = width;
      byId('viewer-empty').hidden = true;
      addOverlays(mine);
    });
    v.open({
      Image: {
        xmlns: 'http://schemas.microsoft.com/deepzoom/2008',
        Url: `/v1/jobs/${mine.id}/slide_files/`,
        Format: image.getAttribute('Format'),
        Overlap: image.getAttribute('Overlap'),
        TileSize: image.getAttribute('TileSize'),
        Size: { Width: String(width), Height: String(height) },
      },
    });
  }

  // `kind` is `heatmap` (Grad-CAM) or `attention` (the AT+ map); both are served as
  // /v1/jobs/{id}/<kind>/<class stem>.png.
  function mapPath(id, kind, layer) {
    const stem = layer.file.replace(new RegExp(`^${kind}_`), '').replace(/\.png$/, '');
    return `/v1/jobs/${id}/${kind}/${encodeURIComponent(stem)}.png`;
  }

  // The class shown first: the primary Gleason pattern's, else the largest class
  // (as overlay.png).
  function defaultClass(r) {
    const classes = r.model.classes;
    if (r.grade && r.grade.primary) {
      const primary = classes.find((c) => c.toUpperCase() === `G${r.grade.primary}`);
      if (primary) {
        return primary;
      }
    }
    return classes.reduce((best, c) =>
      (r.class_areas_mm2[c] || 0) > (r.class_areas_mm2[best] || 0) ? c : best, classes[0]);
  }

  // Lays every class's heatmap over the slide, hidden but the selected one. The slide
  // is 1 viewport unit wide (= its level-0 width W); the heatmap starts at its level-0
  // origin and spans its level-0 extent, which is usually wider than the slide because
  // the last tiles run past the slide's edge. So: x = origin / W, width = extent / W.
  async function addOverlays(mine) {
    if (!mine.slideOpen || !mine.result || mine.overlaysAdded || mine !== current) {
      return;
    }
    mine.overlaysAdded = true;
    const r = mine.result;
    const g = r.heatmap;
    const W = mine.slideWidth;
    const select = byId('overlay-class');
    select.replaceChildren();
    for (const layer of g.layers) {
      select.append(new Option(layer.class, layer.class));
    }
    select.value = defaultClass(r);
    // Grad-CAM in `overlays`, the AT+ map (where the model exports it) in
    // `attentionOverlays`, both by class.
    const layers = g.layers.map((layer) => ['heatmap', layer])
      .concat((g.attention_layers || []).map((layer) => ['attention', layer]));
    await Promise.all(layers.map(async ([kind, layer]) => {
      const label = kind === 'heatmap' ? 'Heatmap' : 'AT+ map';
      let url;
      try {
        url = URL.createObjectURL(await (await api(mapPath(mine.id, kind, layer))).blob());
      } catch (e) {
        showMessage(`${label} ${layer.class}: ${e.message}`);
        return;
      }
      mine.blobUrls.push(url);
      await new Promise((resolve) => {
        viewer.addTiledImage({
          tileSource: { type: 'image', url, buildPyramid: false },
          x: g.origin_level0_px[0] / W,
          y: g.origin_level0_px[1] / W,
          width: g.extent_level0_px[0] / W,
          opacity: 0,
          success: (event) => {
            if (mine === current) {
              (kind === 'heatmap' ? mine.overlays : mine.attentionOverlays).set(layer.class, event.item);
            }
            resolve();
          },
          error: (event) => {
            showMessage(`${label} ${layer.class}: ${event.message}`);
            resolve();
          },
        });
      });
    }));
    if (mine !== current) {
      return;
    }
    for (const id of ['overlay-on', 'overlay-class', 'opacity']) {
      byId(id).disabled = false;
    }
    byId('overlay-map').disabled = mine.attentionOverlays.size === 0;
    applyOverlay();
  }

  function overlayOpacity() {
    return byId('overlay-on').checked ? Number(byId('opacity').value) / 100 : 0;
  }

  // The selected map's layer of the selected class, or undefined.
  function shownItem() {
    const maps = byId('overlay-map').value === 'attention' ? current.attentionOverlays : current.overlays;
    return maps.get(byId('overlay-class').value);
  }

  function applyOverlay() {
    const shown = shownItem();
    const opacity = overlayOpacity();
    for (const item of [...current.overlays.values(), ...current.attentionOverlays.values()]) {
      item.setOpacity(item === shown ? opacity : 0);
    }
  }

  function resetOverlayControls() {
    for (const id of ['overlay-on', 'overlay-class', 'overlay-map', 'opacity']) {
      byId(id).disabled = true;
    }
    byId('overlay-class').replaceChildren();
    byId('overlay-map').value = 'heatmap';
  }

  function setupOverlayControls() {
    byId('overlay-on').addEventListener('change', applyOverlay);
    byId('overlay-class').addEventListener('change', applyOverlay);
    byId('overlay-map').addEventListener('change', applyOverlay);
    byId('opacity').addEventListener('input', applyOverlay);
    const stops = [];
    for (let i = 0; i <= 16; i++) {
      stops.push(turbo(i / 16));
    }
    byId('colour-bar').style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  }

  // Turbo (d3's polynomial fit), the scale of the heatmap PNGs, for the legend.
  function turbo(t) {
    const c = (v) => Math.max(0, Math.min(255, Math.round(v)));
    const r = c(34.61 + t * (1172.33 - t * (10793.56 - t * (33300.12 - t * (38394.49 - t * 14825.05)))));
    const g = c(23.31 + t * (557.33 + t * (1225.33 - t * (3574.96 - t * (1073.77 + t * 707.56)))));
    const b = c(27.2 + t * (3211.1 - t * (15327.97 - t * (27814 - t * (22569.18 - t * 6838.66)))));
    return `rgb(${r}, ${g}, ${b})`;
  }

  // ---------------------------------------------------------------- start

  // For the browser test and for debugging from the console.
  window.slidegrade = {
    get viewer() {
      return viewer;
    },
    get current() {
      return current;
    },
    overlayOpacity,
    // The shown heatmap's OpenSeadragon state: opacity and placement in viewport units.
    shownOverlay() {
      const item = shownItem();
      if (!item) {
        return null;
      }
      const b = item.getBounds();
      return { opacity: item.getOpacity(), x: b.x, y: b.y, width: b.width, height: b.height };
    },
  };

  function start() {
    setupKeyForm();
    setupDrop();
    setupOverlayControls();
    byId('jobs-refresh').addEventListener('click', refreshJobs);
    loadModels();
    refreshJobs();
    setInterval(() => {
      if (!document.hidden) {
        refreshJobs();
      }
    }, JOBS_REFRESH_MS);
    const match = /^#job=([0-9a-f-]+)$/.exec(location.hash);
    if (match) {
      openJob(match[1]);
    }
  }

  start();
})();
