const data = JSON.parse(document.getElementById('kiln-data').textContent);
const $ = (id) => document.getElementById(id);
const fmt = (v, digits) => v === null || v === undefined ? '' : (typeof v === 'number' ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-2) ? v.toExponential(digits) : v.toFixed(digits)) : String(v));

function passTable() {
  const columns = [['#', r => r.index], ['pass', r => r.name, 'text'], ['stage', r => r.stage, 'text'],
    ['time (ms)', r => r.seconds * 1e3], ['rewrites', r => r.changes], ['nodes', r => r.stats && r.stats.nodes],
    ['params', r => r.stats && r.stats.params], ['bytes', r => r.stats && r.stats.param_bytes],
    ['FLOPs', r => r.stats && r.stats.flops], ['max |Δ|', r => r.drift && r.drift.max_abs],
    ['cosine', r => r.drift && r.drift.cosine], ['note', r => r.note, 'text']];
  const table = $('passes');
  const head = table.createTHead().insertRow();
  let rows = data.passes.slice(), sortedBy = 0, ascending = true;
  columns.forEach(([name, , kind], i) => {
    const th = document.createElement('th'); th.textContent = name; if (kind) th.className = kind;
    th.onclick = () => { ascending = sortedBy === i ? !ascending : true; sortedBy = i; fill(); };
    head.appendChild(th);
  });
  const body = table.createTBody();
  function fill() {
    const key = columns[sortedBy][1];
    rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (ascending ? 1 : -1); });
    body.innerHTML = '';
    for (const r of rows) {
      const tr = body.insertRow(); tr.className = 'pass-row' + (r.index === data.first_over ? ' over-tolerance' : '');
      tr.dataset.index = r.index;
      columns.forEach(([, value, kind], i) => {
        const td = tr.insertCell(); const v = value(r);
        td.textContent = i === 3 ? fmt(v, 1) : i >= 9 && i <= 10 ? fmt(v, i === 10 ? 6 : 2) : (v === null || v === undefined ? '' : String(v));
        if (kind) td.className = kind;
      });
      tr.onclick = () => {
        const next = tr.nextSibling;
        if (next && next.classList.contains('detail')) { next.remove(); return; }
        const detail = body.insertRow(tr.sectionRowIndex + 1); detail.className = 'detail';
        const td = detail.insertCell(); td.colSpan = columns.length;
        const layers = Object.entries(r.layers || {});
        td.textContent = layers.length ? layers.map(([k, v]) => k + ': ' + v).join('\n') : 'no per-layer lines';
        td.style.whiteSpace = 'pre';
        const chart = keptChart(layers, r);
        if (chart) td.appendChild(chart);
        if (data.graphs[r.index]) showGraph(r.index);
      };
    }
  }
  fill();
}

function keptChart(layers, row) {
  // compression passes: what each layer kept ("64 → 32 channels", "0.45× params"), and the drift it cost
  const kept = layers.map(([name, line]) => {
    const counts = /(\d+) → (\d+)/.exec(line), params = /([\d.]+)× params/.exec(line);
    return [name, params ? +params[1] : counts ? counts[2] / counts[1] : null];
  }).filter(([, k]) => k !== null && isFinite(k));
  if (!kept.length) return null;
  const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg'), bar = 14, W = 640, L = 260;
  svg.setAttribute('width', W); svg.setAttribute('height', kept.length * bar + 24); svg.classList.add('kept-chart');
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text) e.textContent = text; svg.appendChild(e); return e; };
  kept.forEach(([name, k], i) => {
    add('text', {x: L - 6, y: i * bar + 11, 'text-anchor': 'end', 'font-size': 10}, name.length > 40 ? name.slice(0, 39) + '…' : name);
    add('rect', {class: 'layer-bar', x: L, y: i * bar + 2, width: Math.max(1, Math.min(k, 1) * (W - L - 60)), height: bar - 4, fill: '#69c'});
    add('text', {x: L + Math.min(k, 1) * (W - L - 60) + 4, y: i * bar + 11, 'font-size': 10}, (k * 100).toFixed(0) + '% kept');
  });
  const cost = row.drift ? `drift after this pass: max|Δ|/scale ${row.drift.max_rel.toExponential(2)}, cosine ${row.drift.cosine.toFixed(6)}` : '';
  add('text', {x: 0, y: kept.length * bar + 18, 'font-size': 11}, cost);
  return svg;
}

function panZoom(svg) {
  const box = svg.viewBox.baseVal; let drag = null;
  svg.addEventListener('wheel', e => { e.preventDefault(); const k = e.deltaY > 0 ? 1.15 : 1 / 1.15;
    const r = svg.getBoundingClientRect(); const px = box.x + (e.clientX - r.left) / r.width * box.width, py = box.y + (e.clientY - r.top) / r.height * box.height;
    box.x = px - (px - box.x) * k; box.y = py - (py - box.y) * k; box.width *= k; box.height *= k; });
  svg.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY]; });
  window.addEventListener('mouseup', () => { drag = null; });
  svg.addEventListener('mousemove', e => { if (!drag) return; const r = svg.getBoundingClientRect();
    box.x -= (e.clientX - drag[0]) / r.width * box.width; box.y -= (e.clientY - drag[1]) / r.height * box.height; drag = [e.clientX, e.clientY]; });
}

function place(container, index, collapsed) {
  const drawing = collapsed && data.collapsed[index] ? data.collapsed[index] : data.graphs[index];
  container.innerHTML = drawing || '<p class="note">no graph kept for this pass</p>';
  const svg = container.querySelector('svg');
  if (svg) { svg.removeAttribute('width'); svg.removeAttribute('height'); panZoom(svg); }
  return svg;
}

function graphChoices(select, only) {
  for (const r of data.passes) if (data.graphs[r.index] && (!only || only(r))) {
    const option = document.createElement('option'); option.value = r.index; option.textContent = r.index + ' ' + r.name; select.appendChild(option);
  }
}

function showGraph(index) {
  $('graph-pass').value = index;
  $('collapse-label').hidden = !data.collapsed[index];
  zoomed(place($('graph-view'), index, $('collapse').checked)); search();
}

function zoomed(svg) {  // #zoom=K: the top of the graph, K times closer
  const k = +(new URLSearchParams(location.hash.slice(1)).get('zoom') || 1);
  if (svg && k > 1) { const box = svg.viewBox.baseVal; box.width /= k; box.height /= k; box.x += box.width * (k - 1) / 2; }
  return svg;
}

function search() {
  const text = $('node-search').value.trim().toLowerCase(); let first = null;
  for (const g of $('graph-view').querySelectorAll('g.node')) {
    const hit = text && g.querySelector('title').textContent.toLowerCase().includes(text);
    g.classList.toggle('match', !!hit); if (hit && !first) first = g;
  }
  if (first) first.scrollIntoView({block: 'center'});
}

function showDiff(index) {
  $('diff-pass').value = index;
  const previous = data.passes.filter(r => data.graphs[r.index] && r.index < index).map(r => r.index).pop();
  const change = data.diffs[index] || {removed: [], added: [], changed: []};
  const before = zoomed(place($('diff-before'), previous)), after = zoomed(place($('diff-after'), index));
  const mark = (svg, ids, cls) => { if (svg) for (const id of ids) { const g = svg.querySelector('[id="node-' + CSS.escape(id) + '"]'); if (g) g.classList.add(cls); } };
  mark(before, change.removed, 'removed'); mark(before, change.changed, 'changed');
  mark(after, change.added, 'added'); mark(after, change.changed, 'changed');
  $('diff-summary').textContent = `${change.removed.length} removed, ${change.added.length} added, ${change.changed.length} changed`;
}

function driftPlot() {
  const points = data.passes.filter(r => r.drift);
  const W = 760, H = 260, L = 60, B = 60, T = 10, R = 10;
  const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`); svg.setAttribute('width', W); svg.setAttribute('height', H);
  const floor = 1e-12, values = points.map(r => Math.max(r.drift.max_rel, floor)).concat([data.tolerance]);
  const lo = Math.floor(Math.log10(Math.min(...values))), hi = Math.ceil(Math.log10(Math.max(...values))) + (values.length ? 0 : 1);
  const x = i => L + (points.length > 1 ? i / (points.length - 1) : 0.5) * (W - L - R);
  const y = v => T + (hi - Math.log10(Math.max(v, floor))) / Math.max(hi - lo, 1) * (H - T - B);
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text) e.textContent = text; svg.appendChild(e); return e; };
  for (let p = lo; p <= hi; p++) { add('line', {x1: L, x2: W - R, y1: y(10 ** p), y2: y(10 ** p), stroke: '#eee'}); add('text', {x: L - 6, y: y(10 ** p) + 4, 'text-anchor': 'end', 'font-size': 10}, '1e' + p); }
  add('line', {class: 'tolerance', x1: L, x2: W - R, y1: y(data.tolerance), y2: y(data.tolerance), stroke: '#c00', 'stroke-dasharray': '4 3'});
  add('text', {x: W - R, y: y(data.tolerance) - 4, 'text-anchor': 'end', 'font-size': 10, fill: '#c00'}, 'tolerance ' + data.tolerance);
  add('polyline', {points: points.map((r, i) => x(i) + ',' + y(r.drift.max_rel)).join(' '), fill: 'none', stroke: '#36c'});
  points.forEach((r, i) => {
    const over = r.index === data.first_over;
    const c = add('circle', {class: 'drift-point' + (over ? ' over-tolerance' : ''), 'data-pass': r.name, cx: x(i), cy: y(r.drift.max_rel), r: over ? 6 : 3.5, fill: over ? '#c00' : '#36c'});
    c.appendChild(Object.assign(document.createElementNS(ns, 'title'), {textContent: `${r.name}: ${r.drift.max_rel.toExponential(2)} (cosine ${r.drift.cosine.toFixed(6)})`}));
    const label = add('text', {x: x(i), y: H - B + 12, 'font-size': 9, transform: `rotate(40 ${x(i)} ${H - B + 12})`}, r.name);
    if (over) { label.setAttribute('fill', '#c00'); add('text', {class: 'first-over', x: x(i) + 8, y: y(r.drift.max_rel) - 8, 'font-size': 11, fill: '#c00'}, 'first over: ' + r.name); }
  });
  $('drift-plot').appendChild(svg);
}

function profileTable() {
  const p = data.profile;
  if (!p) { $('profile').insertAdjacentHTML('afterend', '<p class="note">no profile: the module was not run here</p>'); return; }
  const table = $('profile'), head = table.createTHead().insertRow();
  for (const name of ['kernel', 'calls', 'ms', 'share', 'GFLOP/s', 'of fp32 peak', 'schedule', 'instructions', 'Kiln nodes']) { const th = document.createElement('th'); th.textContent = name; head.appendChild(th); }
  const body = table.createTBody();
  for (const k of p.kernels) {
    const tr = body.insertRow(); tr.className = 'kernel-row';
    tr.onclick = () => { if (data.kernel_graph === undefined) return; showGraph(data.kernel_graph);
      for (const id of (data.kernel_boxes[k.kernel] || [])) { const g = $('graph-view').querySelector('[id="node-' + CSS.escape(id) + '"]'); if (g) { g.classList.add('match'); g.scrollIntoView({block: 'center'}); } } };
    [k.kernel, k.calls, k.ms.toFixed(3), (k.share * 100).toFixed(1) + '%', k.gflops === null ? '' : k.gflops.toFixed(1),
     k.of_peak === null || k.of_peak === undefined ? '' : (k.of_peak * 100).toFixed(1) + '%', k.rule || 'tuning record or TVM', k.instructions,
     (k.sources || []).join(', ') || '(layout or TVM\'s own)'].forEach((v, i) => {
      const td = tr.insertCell(); td.textContent = v; if (i === 0 || i >= 6) td.className = 'text'; });
  }
  $('profile-total').textContent = `kernels ${p.kernels_ms.toFixed(3)} ms of the module's ${p.latency_ms.toFixed(3)} ms (median of ${p.runs} runs)` +
    (p.peak_gflops ? `; the cores' fp32 FMA peak, measured: ${p.peak_gflops.toFixed(0)} GFLOP/s` : '');
}

passTable(); driftPlot(); profileTable();
graphChoices($('graph-pass')); graphChoices($('diff-pass'), r => data.diffs[r.index]);
$('graph-pass').onchange = e => showGraph(+e.target.value);
$('diff-pass').onchange = e => showDiff(+e.target.value);
$('node-search').oninput = search;
$('collapse').onchange = () => showGraph(+$('graph-pass').value);
const wanted = new URLSearchParams(location.hash.slice(1));
if (wanted.has('collapse')) $('collapse').checked = true;
const firstGraph = Object.keys(data.graphs).map(Number).sort((a, b) => a - b);
if (firstGraph.length) showGraph(wanted.has('graph') ? +wanted.get('graph') : firstGraph[firstGraph.length - 1]);
else $('graph-view').innerHTML = '<p class="note">no graph kept for any pass: compile with debug_dir= for them</p>';
const diffs = Object.keys(data.diffs).map(Number).sort((a, b) => a - b);
if (diffs.length) showDiff(wanted.has('diff') ? +wanted.get('diff') : diffs[0]);
if (wanted.has('open')) { const tr = document.querySelector(`tr.pass-row[data-index="${+wanted.get('open')}"]`); if (tr) tr.onclick(); }
if (wanted.has('focus'))  // one view alone (the README's pictures)
  for (const section of document.querySelectorAll('section')) section.hidden = section.id !== wanted.get('focus') + '-section';
document.body.dataset.renderMs = Math.round(performance.now());  // navigation start to every view built
document.body.dataset.rendered = 'yes';
