// The text streams of a prefix, interleaved in the order the butler took their lines in
// (`prefix_index`), each line marked with its stream and linked to its place there.
//
// Pages come from `/api/interleave` with a cursor (`next`); the page holds at most MAX rows,
// dropping the oldest as more are fetched at the end; while some stream is still being
// written, new lines are asked for every POLL_MS once the end is reached.
'use strict';

(() => {
  const { el, encodePath, time, getJSON, crumbs, showError, runHeader, appendSpans } = logdog;
  const PAGE = 500;
  const MAX = 3000;
  const EDGE = 600;
  const POLL_MS = 2000;

  const scope = decodeURIComponent(location.pathname.replace(/^\/c\//, '')).replace(/\/+$/, '');
  const slash = scope.indexOf('/');
  const project = slash < 0 ? scope : scope.slice(0, slash);
  const prefix = slash < 0 ? '' : scope.slice(slash + 1);
  const logBox = document.getElementById('log');
  const body = document.getElementById('rows');
  const status = document.getElementById('status');

  let next = { from: 0, row: 0 };
  let done = false;
  let busy = false;
  let gen = 0;
  let shown = 0; // rows fetched since the top
  let names = [];
  let timer = null;

  function renderRow(r) {
    const name = names[r.st] || '?';
    const row = el('div', 'row');
    row.dataset.stream = name;
    row.dataset.n = r.n;
    const mark = el('span', `mark m${r.st % 8}`, name);
    mark.title = name;
    const ln = el('a', 'ln', r.n + 1);
    ln.href = `/s/${encodePath(`${project}/${prefix}/+/${name}`)}#L${r.n + 1}`;
    ln.title = `line ${r.n + 1} of ${name}`;
    const ts = el('span', 'ts', time(r.t));
    ts.title = new Date(r.t).toISOString();
    const tx = el('span', 'tx');
    appendSpans(tx, r.s);
    row.append(mark, ln, ts, tx);
    return row;
  }

  function legend() {
    const box = document.getElementById('legend');
    box.replaceChildren(...names.map((n, i) => {
      const a = el('a', `mark m${i % 8}`, n);
      a.href = `/s/${encodePath(`${project}/${prefix}/+/${n}`)}`;
      return a;
    }));
    const widest = Math.min(24, Math.max(6, ...names.map((n) => n.length)));
    document.documentElement.style.setProperty('--mark', `${widest + 1}ch`);
  }

  function nearBottom(px) {
    return logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < px;
  }

  async function more() {
    if (busy) return;
    const my = gen;
    busy = true;
    let d;
    try {
      d = await getJSON(`/api/interleave/${encodePath(project)}/${encodePath(prefix)}` +
        `?from=${next.from}&row=${next.row}&count=${PAGE}`);
    } catch (e) {
      if (my === gen) busy = false;
      showError(`Cannot read lines: ${e.message}`);
      return;
    }
    if (my !== gen) return;
    showError('');
    if (d.streams.join('\n') !== names.join('\n')) {
      names = d.streams;
      legend();
    }
    const frag = document.createDocumentFragment();
    for (const r of d.rows) frag.append(renderRow(r));
    body.append(frag);
    shown += d.rows.length;
    const extra = body.children.length - MAX;
    if (extra > 0) {
      const before = logBox.scrollHeight;
      for (let i = 0; i < extra; i++) body.firstElementChild.remove();
      logBox.scrollTop -= before - logBox.scrollHeight;
    }
    next = d.next;
    done = d.done;
    busy = false;
    const left = d.left_out ? ` (${d.left_out} more streams left out)` : '';
    document.getElementById('count').textContent =
      `${names.length} streams${left}; ${shown} lines read` +
      (shown > body.children.length ? `, the last ${body.children.length} shown` : '');
    document.body.dataset.done = String(done);
    if (d.rows.length === PAGE && nearBottom(EDGE)) {
      setTimeout(more, 0);
    } else if (d.rows.length < PAGE) {
      status.textContent = done ? 'complete' : 'waiting for new lines';
      if (!done) timer = setTimeout(more, POLL_MS);
    }
  }

  function restart() {
    gen++;
    busy = false;
    clearTimeout(timer);
    next = { from: 0, row: 0 };
    shown = 0;
    body.replaceChildren();
    logBox.scrollTop = 0;
    more();
  }

  logBox.addEventListener('scroll', () => {
    if (nearBottom(EDGE) && !busy) {
      clearTimeout(timer);
      more();
    }
  });
  document.getElementById('top').addEventListener('click', restart);
  document.getElementById('show-times').addEventListener('change', (ev) => {
    document.body.classList.toggle('no-times', !ev.target.checked);
  });

  crumbs(document.getElementById('crumbs'), project, prefix);
  document.getElementById('crumbs').append(el('span', 'sep', '/+/'), el('strong', 'name', '(all streams)'));
  document.title = `${prefix} - all streams - logdog`;
  if (!prefix) {
    showError('The interleaved view needs a prefix: /c/PROJECT/PREFIX');
  } else {
    runHeader(project, prefix);
    more();
  }
})();
