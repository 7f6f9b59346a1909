// The layout page: the run's neurons in 3D (three.js), their frames over a slider, colourings, a details
// panel and the structure verdicts. Its data is the JSON in #layout-data (written by render/html/page.py);
// every string from it reaches the page through textContent only. window.neuronLayout exposes the camera's
// projection, picking and the frame counter for tests and benchmarks.
(() => {
  'use strict';
  const data = JSON.parse(document.getElementById('layout-data').textContent);
  const $ = (id) => document.getElementById(id);
  const TYPES = { uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int32: Int32Array, float32: Float32Array };
  const GLYPH_SCALE = 1.6; // a field glyph's half width in sphere radii (render/glyphs.py)
  const DOT = 0.5; // a neuron without an image in a field scene, in sphere radii (render/scene.py)
  const PICK_PX = 8; // a click or hover this close to a neuron's centre picks it

  function unpack(packed) {
    if (!packed) return null;
    const text = atob(packed.data);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new TYPES[packed.dtype](bytes.buffer);
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // RGBA pixels of a base64 PNG, exactly as stored (no colour conversion: no profile is written).
  function decodePng(b64) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => {
        const canvas = el('canvas');
        canvas.width = image.width;
        canvas.height = image.height;
        const context = canvas.getContext('2d', { willReadFrequently: true });
        context.drawImage(image, 0, 0);
        resolve(context.getImageData(0, 0, image.width, image.height));
      };
      image.onerror = () => reject(new Error('an image of the page could not be decoded'));
      image.src = 'data:image/png;base64,' + b64;
    });
  }

  // Tile k of an atlas as ImageData; greyscale test images as dark ink on white (style.picture_rgb).
  function tile(atlas, pixels, k, ink) {
    const { width: w, height: h, cols } = atlas;
    const out = new ImageData(w, h);
    const x0 = (k % cols) * w, y0 = Math.floor(k / cols) * h;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const from = ((y0 + y) * pixels.width + x0 + x) * 4, to = (y * w + x) * 4;
        for (let c = 0; c < 3; c++) {
          const v = pixels.data[from + c];
          out.data[to + c] = ink ? 255 - v : v;
        }
        out.data[to + 3] = 255;
      }
    }
    return out;
  }

  function tileCanvas(atlas, pixels, k, ink, canvas) {
    const target = canvas || el('canvas');
    target.width = atlas.width;
    target.height = atlas.height;
    target.getContext('2d').putImageData(tile(atlas, pixels, k, ink), 0, 0);
    return target;
  }

  // ---- the data ----
  const names = data.class_names;
  const n = data.n_neurons;
  const isAnchor = unpack(data.is_anchor), group = unpack(data.group), radius = unpack(data.radius);
  const P = isAnchor.length;
  const frames = data.frames, stored = frames.stored.length;
  const quantised = unpack(frames.positions);
  const neurons = {};
  for (const key of Object.keys(data.neurons)) neurons[key] = unpack(data.neurons[key]);
  const C = names.length;
  const colorings = data.colorings.map((g) => ({ ...g, rgb: unpack(g.rgb), share: unpack(g.share) }));
  const members = data.fields ? unpack(data.fields.members) : new Int32Array(0);
  const edges = unpack(data.edges), edgeSign = unpack(data.edge_sign);

  function hexRgb(hex) {
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  function classRgb(c) {
    return hexRgb(data.class_colors[c % data.class_colors.length]);
  }

  // ---- the scene ----
  THREE.ColorManagement.enabled = false; // colours are written as given: the pixels are style.py's
  const view = $('view');
  const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  renderer.outputColorSpace = THREE.LinearSRGBColorSpace;
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setClearColor(0xffffff, 1);
  view.appendChild(renderer.domElement);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 1000);
  camera.up.set(0, 0, 1);

  const positions = new Float32Array(P * 3);
  function setPositions(t) {
    const s0 = Math.max(0, Math.min(stored - 1, Math.floor(t))), s1 = Math.min(stored - 1, s0 + 1);
    const f = Math.max(0, Math.min(1, t - s0));
    const a = s0 * P * 3, b = s1 * P * 3;
    for (let i = 0; i < P * 3; i++) {
      const axis = i % 3;
      const q = quantised[a + i] * (1 - f) + quantised[b + i] * f;
      positions[i] = frames.low[axis] + (q / 65535) * frames.span[axis];
    }
  }

  const tileOf = new Float32Array(P).fill(-1);
  members.forEach((m, k) => { tileOf[m] = k; }); // the neurons drawn as images, and their tiles in the atlas
  const size = new Float32Array(P);
  for (let p = 0; p < P; p++) {
    size[p] = radius[p] * (isAnchor[p] ? 1 : tileOf[p] >= 0 ? GLYPH_SCALE : data.fields ? DOT : 1);
  }
  const rgb = new Uint8Array(P * 3), share = new Float32Array(P).fill(1);
  for (let p = 0; p < P; p++) rgb.set(classRgb(group[p]), p * 3);

  const geometry = new THREE.BufferGeometry();
  const positionAttribute = new THREE.BufferAttribute(positions, 3);
  const rgbAttribute = new THREE.BufferAttribute(rgb, 3, true);
  const shareAttribute = new THREE.BufferAttribute(share, 1);
  geometry.setAttribute('position', positionAttribute);
  geometry.setAttribute('rgb', rgbAttribute);
  geometry.setAttribute('share', shareAttribute);
  geometry.setAttribute('tile', new THREE.BufferAttribute(tileOf, 1));
  geometry.setAttribute('size', new THREE.BufferAttribute(size, 1));

  const uniforms = {
    scale: { value: 1 },
    atlas: { value: null },
    atlasSize: { value: [1, 1] },
    tileSize: { value: [1, 1] },
    cols: { value: 1 },
    ghost: { value: data.ghost },
  };
  const material = new THREE.ShaderMaterial({
    uniforms,
    vertexShader: `
      attribute float size; attribute float tile; attribute vec3 rgb; attribute float share;
      uniform float scale;
      varying vec3 vRgb; varying float vTile; varying float vShare;
      void main() {
        vec4 mv = modelViewMatrix * vec4(position, 1.0);
        gl_Position = projectionMatrix * mv;
        gl_PointSize = max(3.0, 2.0 * size * scale / -mv.z);
        vRgb = rgb; vTile = tile; vShare = share;
      }`,
    fragmentShader: `
      uniform sampler2D atlas; uniform vec2 atlasSize; uniform vec2 tileSize; uniform float cols; uniform float ghost;
      varying vec3 vRgb; varying float vTile; varying float vShare;
      void main() {
        vec2 pc = gl_PointCoord;
        if (vTile < 0.0) {  // a sphere: shaded towards its rim, its own colour at the centre
          vec2 d = pc * 2.0 - 1.0;
          float r2 = dot(d, d);
          if (r2 > 1.0) discard;
          gl_FragColor = vec4(vRgb * (0.7 + 0.3 * sqrt(1.0 - r2)), 1.0);
          return;
        }
        vec2 px = pc * (tileSize + 2.0);  // the field with a one-pixel frame in the neuron's colour
        if (px.x < 1.0 || px.y < 1.0 || px.x >= tileSize.x + 1.0 || px.y >= tileSize.y + 1.0) {
          gl_FragColor = vec4(vRgb, 1.0);
          return;
        }
        float row = floor(vTile / cols), col = vTile - row * cols;
        vec2 texel = vec2(col, row) * tileSize + floor(px - 1.0) + 0.5;
        vec3 c = texture2D(atlas, texel / atlasSize).rgb;
        float keep = ghost + (1.0 - ghost) * vShare;
        gl_FragColor = vec4(1.0 - keep * (1.0 - c), 1.0);
      }`,
  });
  const points = new THREE.Points(geometry, material);
  points.frustumCulled = false;
  scene.add(points);

  let edgeLines = null;
  if (edges.length) {
    const E = edges.length / 2;
    const edgeGeometry = new THREE.BufferGeometry();
    edgeGeometry.setAttribute('position', new THREE.BufferAttribute(new Float32Array(E * 6), 3));
    const colours = new Float32Array(E * 6);
    for (let e = 0; e < E; e++) {
      const c = hexRgb(data.edge_colors[edgeSign[e] > 0 ? 'positive' : 'negative']).map((v) => v / 255);
      colours.set([...c, ...c], e * 6);
    }
    edgeGeometry.setAttribute('color', new THREE.BufferAttribute(colours, 3));
    edgeLines = new THREE.LineSegments(edgeGeometry, new THREE.LineBasicMaterial({
      vertexColors: true, transparent: true, opacity: 0.35 }));
    edgeLines.frustumCulled = false;
    scene.add(edgeLines);
  }

  function placeEdges() {
    if (!edgeLines) return;
    const out = edgeLines.geometry.attributes.position;
    for (let e = 0; e < edges.length; e++) out.array.set(positions.subarray(edges[e] * 3, edges[e] * 3 + 3), e * 3);
    out.needsUpdate = true;
  }

  // An oblique view of the final layout, far enough to fit it from every side (render/scene.py's frame_camera).
  function frameCamera() {
    setPositions(stored - 1);
    const centre = new THREE.Vector3();
    for (let p = 0; p < P; p++) centre.add(new THREE.Vector3(positions[3 * p], positions[3 * p + 1], positions[3 * p + 2]));
    centre.divideScalar(Math.max(P, 1));
    let r = 0;
    for (let p = 0; p < P; p++) {
      r = Math.max(r, centre.distanceTo(new THREE.Vector3(positions[3 * p], positions[3 * p + 1], positions[3 * p + 2])));
    }
    r = r || 1;
    const direction = new THREE.Vector3(1, 1, 0.8).normalize();
    const distance = (1.1 * r) / Math.sin((camera.fov * Math.PI) / 360);
    camera.position.copy(centre).addScaledVector(direction, distance);
    camera.near = distance / 100;
    camera.far = distance * 10;
    camera.lookAt(centre);
    return centre;
  }
  const controls = new THREE.OrbitControls(camera, renderer.domElement);
  controls.target.copy(frameCamera());
  controls.update();

  function resize() {
    const w = view.clientWidth || window.innerWidth, h = view.clientHeight || window.innerHeight;
    renderer.setSize(w, h, false);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
    uniforms.scale.value = (h * renderer.getPixelRatio()) / (2 * Math.tan((camera.fov * Math.PI) / 360));
  }
  window.addEventListener('resize', resize);
  resize();

  // ---- anchors' labels, projection, picking ----
  const labels = [];
  for (let p = 0; p < P; p++) {
    if (!isAnchor[p]) continue;
    const label = el('span', names[group[p]]);
    $('labels').appendChild(label);
    labels.push([p, label]);
  }

  const v = new THREE.Vector3();
  function project(p) { // [x, y] in CSS pixels of the page, and the depth in normalised device coordinates
    v.set(positions[3 * p], positions[3 * p + 1], positions[3 * p + 2]).project(camera);
    const box = renderer.domElement.getBoundingClientRect();
    return [box.left + ((v.x + 1) / 2) * box.width, box.top + ((1 - v.y) / 2) * box.height, v.z];
  }

  function placeLabels() {
    for (const [p, label] of labels) {
      const [x, y, z] = project(p);
      label.hidden = z > 1;
      label.style.transform = `translate(${Math.round(x + 6)}px, ${Math.round(y - 8)}px)`;
    }
  }

  function pixelRadius(p) {
    v.set(positions[3 * p], positions[3 * p + 1], positions[3 * p + 2]).applyMatrix4(camera.matrixWorldInverse);
    return (size[p] * uniforms.scale.value) / renderer.getPixelRatio() / Math.max(-v.z, 1e-9);
  }

  function pick(x, y) { // the neuron drawn at page pixel (x, y): nearest the camera among those it touches
    let best = null, bestDepth = Infinity;
    for (let i = 0; i < n; i++) {
      const [sx, sy, z] = project(i);
      if (z > 1) continue;
      const reach = Math.max(PICK_PX, pixelRadius(i));
      const square = tileOf[i] >= 0; // a glyph covers its square, a sphere its disc
      const hit = square ? Math.abs(sx - x) <= reach && Math.abs(sy - y) <= reach : Math.hypot(sx - x, sy - y) <= reach;
      if (hit && z < bestDepth) {
        best = i;
        bestDepth = z;
      }
    }
    return best;
  }

  // ---- frames and playback ----
  const slider = $('slider');
  slider.max = String(stored - 1);
  let t = stored - 1, playing = false, last = null, hold = 0;
  const PLAY_SECONDS = Math.max(4, stored / 30); // the whole trajectory, however many frames were kept
  let coloring = 0, which = 0;

  function showFrame() {
    setPositions(t);
    positionAttribute.needsUpdate = true;
    placeEdges();
    slider.value = String(t);
    const k = Math.round(t);
    const g = colorings[coloring];
    const caption = g.captions.length > 1 || g.name !== 'dominant class' ? '   ' + g.captions[which] : '';
    $('frame-label').textContent = `frame ${frames.stored[k] + 1} of ${frames.count}: ${frames.labels[k]}${caption}`;
  }

  function setPlaying(on) {
    playing = on;
    if (on && t >= stored - 1) t = 0;
    last = null;
    $('play').textContent = on ? 'pause' : 'play';
  }

  function step(now) {
    if (!playing) return;
    if (last !== null) {
      const dt = (now - last) / 1000;
      if (t >= stored - 1) { // hold the last frame a second, then start again
        hold += dt;
        if (hold > 1) { t = 0; hold = 0; }
      } else {
        t = Math.min(stored - 1, t + (dt / PLAY_SECONDS) * Math.max(stored - 1, 1));
      }
    }
    last = now;
    showFrame();
  }

  $('play').addEventListener('click', () => setPlaying(!playing));
  slider.addEventListener('input', () => {
    setPlaying(false);
    t = Number(slider.value);
    showFrame();
  });
  window.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type !== 'range' || e.target instanceof HTMLSelectElement) return;
    if (e.key === ' ') {
      setPlaying(!playing);
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
      setPlaying(false);
      t = Math.max(0, Math.min(stored - 1, Math.round(t) + (e.key === 'ArrowLeft' ? -1 : 1)));
      showFrame();
    } else {
      return;
    }
    e.preventDefault();
  });

  // ---- colourings and the legend ----
  const select = $('coloring'), whichSelect = $('which');
  colorings.forEach((g, k) => select.appendChild(el('option', g.name)).setAttribute('value', String(k)));

  function fillWhich() {
    whichSelect.replaceChildren();
    const g = colorings[coloring];
    const short = g.name === 'mean activation per class' ? names : g.captions;
    short.forEach((c, k) => whichSelect.appendChild(el('option', c)).setAttribute('value', String(k)));
    whichSelect.hidden = g.captions.length < 2;
  }

  function applyColoring() {
    const g = colorings[coloring];
    rgb.set(g.rgb.subarray(which * n * 3, (which + 1) * n * 3), 0);
    share.set(g.share.subarray(which * n, (which + 1) * n), 0);
    rgbAttribute.needsUpdate = true;
    shareAttribute.needsUpdate = true;
    drawLegend(g);
    drawProbe(g);
    showFrame();
  }

  function drawLegend(g) {
    const legend = $('legend');
    legend.replaceChildren();
    if (!g.scale) {
      names.forEach((name, c) => {
        const row = legend.appendChild(el('div', undefined, 'row'));
        const swatch = row.appendChild(el('span', undefined, 'swatch'));
        swatch.style.background = data.class_colors[c % data.class_colors.length];
        row.appendChild(el('span', name));
      });
      return;
    }
    legend.appendChild(el('div', g.scale.quantity));
    const ramp = legend.appendChild(el('div', undefined, 'ramp'));
    ramp.style.background = `linear-gradient(to right, ${data.activation_colors[0]}, ${data.activation_colors[1]})`;
    const ends = legend.appendChild(el('div', undefined, 'row'));
    ends.appendChild(el('span', g.scale.low.toPrecision(3)));
    ends.appendChild(el('span', g.scale.high.toPrecision(3)));
    ends.style.justifyContent = 'space-between';
  }

  const probePixels = new Map();
  function drawProbe(g) {
    const canvas = $('probe');
    canvas.hidden = !g.images || !probePixels.has(g);
    if (!canvas.hidden) tileCanvas(g.images, probePixels.get(g), which, g.images.channels === 1, canvas);
  }

  select.addEventListener('change', () => {
    coloring = Number(select.value);
    which = 0;
    fillWhich();
    applyColoring();
  });
  whichSelect.addEventListener('change', () => {
    which = Number(whichSelect.value);
    applyColoring();
  });

  // ---- hover, click, search: the details panel ----
  const tooltip = $('tooltip');
  function describe(i) {
    return `neuron ${i}: layer ${neurons.layer[i]}, drives ${names[neurons.dominant[i]]}`;
  }

  let down = null;
  renderer.domElement.addEventListener('pointerdown', (e) => { down = [e.clientX, e.clientY]; });
  renderer.domElement.addEventListener('pointermove', (e) => {
    const i = pick(e.clientX, e.clientY);
    tooltip.hidden = i === null;
    if (i !== null) {
      tooltip.textContent = describe(i);
      tooltip.style.left = `${e.clientX + 12}px`;
      tooltip.style.top = `${e.clientY + 12}px`;
    }
  });
  renderer.domElement.addEventListener('pointerup', (e) => {
    if (!down || Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 4) return; // a drag turns the view
    const i = pick(e.clientX, e.clientY);
    if (i !== null) openPanel(i);
  });
  $('close').addEventListener('click', () => {
    $('panel').hidden = true;
    document.body.classList.remove('panel-open');
  });
  $('search').addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    const text = e.target.value.trim();
    const i = Number(text);
    const ok = text !== '' && Number.isInteger(i) && i >= 0 && i < n;
    $('search-note').textContent = ok ? '' : `no neuron "${text}": ids run from 0 to ${n - 1}`;
    if (ok) openPanel(i);
  });

  function bars(target, values, signed) {
    target.replaceChildren();
    let top = 0;
    for (const x of values) top = Math.max(top, Math.abs(x));
    top = top || 1;
    values.forEach((x, c) => {
      const row = target.appendChild(el('div', undefined, 'row'));
      row.appendChild(el('span', names[c], 'name'));
      const fill = row.appendChild(el('div', undefined, 'track')).appendChild(el('div', undefined, 'fill'));
      const width = (Math.abs(x) / top) * (signed ? 50 : 100); // percent of the track
      fill.style.width = `${width}%`;
      fill.style.left = signed ? (x >= 0 ? '50%' : `${50 - width}%`) : '0';
      fill.style.background = signed ? data.edge_colors[x >= 0 ? 'positive' : 'negative'] : data.activation_colors[1];
      row.appendChild(el('span', x.toPrecision(3), 'value'));
    });
  }

  let fieldPixels = null, examplePixels = null, shown = null;
  function openPanel(i) {
    shown = i;
    $('panel').hidden = false;
    document.body.classList.add('panel-open');
    $('panel-title').textContent = `neuron ${i}`;
    const layerName = data.layer_names[String(neurons.layer[i])];
    const plain = `layer ${neurons.layer[i]}`; // names such as "layer 4 (dense)" already say it
    const layer = !layerName || layerName.startsWith(plain) ? layerName || plain : `${plain} (${layerName})`;
    const lines = [`${layer}, index ${neurons.index[i]}`,
      `drives hardest: ${names[neurons.dominant[i]]}`, `most active for: ${names[neurons.activation_dominant[i]]}`];
    if (neurons.selectivity) {
      lines.push(`selectivity ${fmt(neurons.selectivity[i], 3)}, effective classes ${fmt(neurons.effective_classes[i], 2)}`);
    }
    $('panel-text').textContent = lines.join('\n');
    const field = $('field');
    $('panel-field').hidden = !fieldPixels || tileOf[i] < 0;
    $('no-field').hidden = !fieldPixels || tileOf[i] >= 0;
    if (!$('panel-field').hidden) {
      tileCanvas(data.fields, fieldPixels, tileOf[i], false, field);
      const zoom = Math.max(1, Math.floor(224 / Math.max(data.fields.width, data.fields.height)));
      field.style.width = `${data.fields.width * zoom}px`;
    }
    bars($('weights'), Array.from(neurons.output_vectors.subarray(i * C, (i + 1) * C)), true);
    bars($('activation'), Array.from(neurons.class_activation.subarray(i * C, (i + 1) * C)), false);
    for (const side of ['top', 'bottom']) {
      const target = $(side);
      target.replaceChildren();
      $(`${side}-title`).hidden = !examplePixels;
      if (!examplePixels) continue;
      const ex = data.examples, k = ex[side].shape[1];
      for (let j = 0; j < k; j++) {
        const slot = ex.places[side][i * k + j];
        const canvas = target.appendChild(tileCanvas(ex, examplePixels, slot, ex.channels === 1));
        canvas.title = `test image ${ex.places.test[slot]}`;
      }
    }
  }

  function fmt(x, digits) {
    return Number.isFinite(x) ? x.toFixed(digits) : 'n/a';
  }

  // ---- the verdicts ----
  function fillVerdicts() {
    const list = $('verdict-list');
    if (!data.verdicts.length) list.appendChild(el('li', 'structure tests were off for this run (structure.enabled)'));
    for (const line of data.verdicts) list.appendChild(el('li', line));
    const table = $('figures');
    if (data.figures.length) table.appendChild(el('caption', 'faithfulness of the layout'));
    for (const [name, value] of data.figures) {
      const row = table.appendChild(el('tr'));
      row.appendChild(el('td', name));
      row.appendChild(el('td', value === null ? 'n/a' : typeof value === 'number' ? value.toPrecision(3) : String(value)));
    }
  }

  // ---- start ----
  let rendered = 0;
  function animate(now) {
    step(now);
    controls.update();
    renderer.render(scene, camera);
    placeLabels();
    rendered++;
    requestAnimationFrame(animate);
  }

  async function start() {
    $('title').textContent = data.name;
    document.title = `${data.name}: neuron layout`;
    if (data.fields) {
      fieldPixels = await decodePng(data.fields.png);
      const texture = new THREE.DataTexture(new Uint8Array(fieldPixels.data.buffer), fieldPixels.width,
        fieldPixels.height, THREE.RGBAFormat, THREE.UnsignedByteType);
      texture.magFilter = texture.minFilter = THREE.NearestFilter;
      texture.generateMipmaps = false;
      texture.colorSpace = THREE.NoColorSpace;
      texture.needsUpdate = true;
      uniforms.atlas.value = texture;
      uniforms.atlasSize.value = [fieldPixels.width, fieldPixels.height];
      uniforms.tileSize.value = [data.fields.width, data.fields.height];
      uniforms.cols.value = data.fields.cols;
    }
    if (data.examples) {
      examplePixels = await decodePng(data.examples.png);
      data.examples.places = { top: unpack(data.examples.top), bottom: unpack(data.examples.bottom),
        test: unpack(data.examples.test_index) };
    }
    for (const g of colorings) if (g.images) probePixels.set(g, await decodePng(g.images.png));
    fillWhich();
    applyColoring();
    fillVerdicts();
    requestAnimationFrame(animate);
    window.neuronLayout.ready = true;
  }

  window.neuronLayout = {
    ready: false,
    get rendered() { return rendered; },
    get frame() { return t; },
    get shown() { return shown; },
    get storedFrames() { return stored; },
    project: (i) => project(i).slice(0, 2),
    pixelRadius: (i) => pixelRadius(i),
    pick,
    play: (on) => setPlaying(on !== false),
    setFrame: (x) => { setPlaying(false); t = x; showFrame(); },
  };
  start().catch((error) => { $('frame-label').textContent = String(error.message || error); throw error; });
})();
