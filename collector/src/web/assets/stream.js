// One stream: its rows (a text stream's lines, a datagram stream's datagrams) with numbers,
// times and ANSI colours, followed live while the stream is open.
//
// The page holds a window of at most MAX rows, [lo, hi), and fetches PAGE more as the reader
// nears either edge, dropping rows at the other; so a log of any size is never rendered (or
// fetched) whole. While the stream is open, an event stream delivers new rows; its event ids
// are row numbers, so after a reconnect the browser resumes where it was (Last-Event-ID).
'use strict';

(() => {
  const { el, encodePath, bytes, dateTime, time, getJSON, crumbs, showError, tags } = logdog;
  const PAGE = 500;
  const MAX = 3000;
  const EDGE = 600;

  const path = decodeURIComponent(location.pathname.replace(/^\/s\//, '')).replace(/\/+$/, '');
  const enc = encodePath(path);
  const logBox = document.getElementById('log');
  const body = document.getElementById('rows');
  const stateEl = document.getElementById('state');
  const status = document.getElementById('status');

  let lo = 0; // first row in the page
  let hi = 0; // one past the last row in the page
  let total = 0; // rows known to exist
  let live = null; // the EventSource while the stream is not complete
  let liveNext = 0; // the next row the event stream will deliver
  let stick = false; // keep the view at the end as rows arrive
  let busy = false; // a page fetch is in flight
  let gen = 0; // bumped by each jump, so that stale fetches are dropped
  let complete = false;
  let kind = 'text';
  let unit = 'lines';

  function renderRow(r) {
    const row = el('div', r.p ? 'row partial' : 'row');
    row.dataset.n = r.n;
    const ln = el('a', 'ln', r.n + 1);
    ln.href = `#L${r.n + 1}`;
    const ts = el('span', 'ts', time(r.t));
    ts.title = new Date(r.t).toISOString();
    const tx = el('span', r.hex ? 'tx hex' : 'tx');
    for (const s of r.s) {
      if (!s[1] && s.length < 3) {
        tx.append(document.createTextNode(s[0]));
        continue;
      }
      const sp = el('span', s[1], s[0]);
      if (s[2]) sp.style.color = s[2];
      if (s[3]) sp.style.backgroundColor = s[3];
      tx.append(sp);
    }
    if (r.cut) tx.append(el('span', 'cut', ` … (${bytes(r.size)})`));
    row.append(ln, ts, tx);
    return row;
  }

  /** Adds rows at the end of the page, replacing rows it already holds (rows that grew). */
  function upsert(rows) {
    let frag = document.createDocumentFragment();
    for (const r of rows) {
      if (r.n < lo) continue;
      if (r.n < hi) {
        body.append(frag);
        frag = document.createDocumentFragment();
        const old = body.children[r.n - lo];
        if (old) old.replaceWith(renderRow(r));
        continue;
      }
      if (r.n > hi) break; // a gap: the rest comes with a later fetch
      frag.append(renderRow(r));
      hi = r.n + 1;
    }
    body.append(frag);
    total = Math.max(total, hi);
  }

  /** Adds rows (ending at lo - 1) at the top, keeping the view where it is. */
  function prepend(rows) {
    const fresh = rows.filter((r) => r.n < lo);
    if (!fresh.length) return;
    const frag = document.createDocumentFragment();
    for (const r of fresh) frag.append(renderRow(r));
    const before = logBox.scrollHeight;
    body.prepend(frag);
    lo = fresh[0].n;
    logBox.scrollTop += logBox.scrollHeight - before;
  }

  function trimTop() {
    const extra = body.children.length - MAX;
    if (extra <= 0) return;
    const before = logBox.scrollHeight;
    for (let i = 0; i < extra; i++) body.firstElementChild.remove();
    lo += extra;
    logBox.scrollTop -= before - logBox.scrollHeight;
  }

  function trimBottom() {
    const extra = body.children.length - MAX;
    if (extra <= 0) return;
    for (let i = 0; i < extra; i++) body.lastElementChild.remove();
    hi -= extra;
  }

  function toEnd() {
    logBox.scrollTop = logBox.scrollHeight;
    stick = true;
  }

  function nearBottom(px) {
    return logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < px;
  }

  function showCount() {
    // Line numbers get as wide as the largest one needs.
    document.documentElement.style.setProperty('--ln', `${String(total).length + 1}ch`);
    const shown = hi > lo ? `; showing ${lo + 1}–${hi}` : '';
    document.getElementById('count').textContent = `${total} ${unit}${shown}`;
  }

  function setStatus(text) {
    status.textContent = text;
  }

  function showStream(s) {
    kind = s.kind;
    unit = kind === 'datagram' ? 'datagrams' : 'lines';
    complete = s.complete;
    stateEl.textContent = s.state === 'open' ? 'running' : s.state;
    stateEl.className = `state ${s.state}`;
    stateEl.dataset.state = s.state;
    document.getElementById('kind').textContent = kind;
    document.getElementById('size').textContent = bytes(s.bytes);
    document.getElementById('started').textContent = dateTime(s.started_ms || s.created_ms);
    document.getElementById('started').title = 'started';
    tags(document.getElementById('tags'), s.tags);
    document.getElementById('binary-size').textContent = bytes(s.bytes);
    showCount();
  }

  /** Replaces the page with rows around a place: {from: n} or {last: true}. */
  async function jump(start, target) {
    const my = ++gen;
    busy = true;
    const q = start.last ? `last=${PAGE}` : `from=${start.from}&count=${PAGE}`;
    let page;
    try {
      page = await getJSON(`/api/rows/${enc}?${q}`);
    } catch (e) {
      if (my === gen) busy = false;
      showError(`Cannot read rows: ${e.message}`);
      return;
    }
    if (my !== gen) return;
    showError('');
    total = page.total;
    const first = page.rows.length ? page.rows[0].n : Math.min(start.last ? total : start.from, total);
    body.replaceChildren();
    lo = first;
    hi = first;
    upsert(page.rows);
    showStream(page.stream);
    busy = false;
    if (start.last) {
      toEnd();
    } else {
      stick = false;
      logBox.scrollTop = 0;
      if (target !== undefined) reveal(target);
    }
    showCount();
    maybeLoad();
  }

  /** Scrolls row n into view and marks it; fetches around it if it is not in the page. */
  function reveal(n) {
    for (const old of body.querySelectorAll('.row.target')) old.classList.remove('target');
    if (n < lo || n >= hi) {
      jump({ from: Math.max(0, n - 50) }, n);
      return;
    }
    const row = body.children[n - lo];
    if (!row) return;
    row.classList.add('target');
    logBox.scrollTop = row.offsetTop - logBox.clientHeight / 3;
    stick = false;
  }

  async function loadBefore() {
    const my = gen;
    busy = true;
    const from = Math.max(0, lo - PAGE);
    try {
      const page = await getJSON(`/api/rows/${enc}?from=${from}&count=${lo - from}`);
      if (my !== gen) return;
      prepend(page.rows);
      trimBottom();
      stick = false;
    } catch (e) {
      showError(`Cannot read rows: ${e.message}`);
    } finally {
      if (my === gen) busy = false;
    }
    showCount();
  }

  async function loadAfter() {
    const my = gen;
    busy = true;
    try {
      const page = await getJSON(`/api/rows/${enc}?from=${hi}&count=${PAGE}`);
      if (my !== gen) return;
      total = Math.max(total, page.total);
      upsert(page.rows);
      trimTop();
    } catch (e) {
      showError(`Cannot read rows: ${e.message}`);
    } finally {
      if (my === gen) busy = false;
    }
    showCount();
  }

  function maybeLoad() {
    if (busy) return;
    if (logBox.scrollTop < EDGE && lo > 0) loadBefore();
    else if (nearBottom(EDGE) && hi < total) loadAfter();
  }

  /** Follows new rows from row `from` until the stream is complete. */
  function follow(from) {
    liveNext = from;
    live = new EventSource(`/api/events/${enc}?from=${from}`);
    live.addEventListener('open', () => setStatus(complete ? 'complete' : 'following new rows'));
    live.addEventListener('rows', (ev) => {
      const d = JSON.parse(ev.data);
      const first = d.rows.length ? d.rows[0].n : d.next;
      if (d.rows.length) total = Math.max(total, d.rows[d.rows.length - 1].n + 1);
      total = Math.max(total, d.next);
      if (hi >= first && !busy) {
        upsert(d.rows);
        if (stick) {
          trimTop();
          toEnd();
        } else {
          trimBottom();
        }
      }
      liveNext = d.next;
      showCount();
    });
    live.addEventListener('state', (ev) => showStream(JSON.parse(ev.data)));
    live.addEventListener('end', () => {
      live.close();
      live = null;
      complete = true;
      setStatus('complete');
      maybeLoad();
    });
    live.addEventListener('error', () => {
      if (!live) return;
      if (live.readyState === EventSource.CLOSED) {
        // The server refused the reconnection: start over from where it was, a bit later.
        setStatus('disconnected; retrying');
        live = null;
        setTimeout(() => follow(liveNext), 3000);
      } else {
        setStatus('reconnecting');
      }
    });
  }

  async function main() {
    const plus = path.indexOf('/+/');
    const slash = path.indexOf('/');
    const project = path.slice(0, slash);
    const prefix = plus > slash ? path.slice(slash + 1, plus) : '';
    const name = plus >= 0 ? path.slice(plus + 3) : '';
    crumbs(document.getElementById('crumbs'), project, prefix, name);
    document.title = `${name} - ${prefix} - logdog`;
    document.getElementById('raw').href = `/raw/${enc}`;
    document.getElementById('download').href = `/raw/${enc}?download=1`;
    document.getElementById('binary-download').href = `/raw/${enc}?download=1`;
    let info;
    try {
      info = await getJSON(`/api/stream/${enc}`);
    } catch (e) {
      stateEl.textContent = e.status === 404 ? 'not found' : 'error';
      showError(e.message);
      return;
    }
    total = info.rows;
    showStream(info.stream);
    if (kind === 'binary') {
      document.getElementById('binary').hidden = false;
      logBox.hidden = true;
      if (!complete) follow(0);
      else setStatus('complete');
      return;
    }
    const m = /^#L(\d+)$/.exec(location.hash);
    if (m) await jump({ from: Math.max(0, Number(m[1]) - 51) }, Number(m[1]) - 1);
    else if (complete) await jump({ from: 0 });
    else await jump({ last: true });
    if (!complete) follow(Math.max(0, total - 1));
    else setStatus('complete');
  }

  logBox.addEventListener('scroll', () => {
    stick = nearBottom(4) && hi >= total;
    maybeLoad();
  });
  document.getElementById('top').addEventListener('click', () => jump({ from: 0 }));
  document.getElementById('end').addEventListener('click', () => jump({ last: true }));
  document.getElementById('goto').addEventListener('change', (ev) => {
    const n = Number(ev.target.value);
    if (n >= 1) reveal(n - 1);
  });
  document.getElementById('show-times').addEventListener('change', (ev) => {
    document.body.classList.toggle('no-times', !ev.target.checked);
  });
  window.addEventListener('hashchange', () => {
    const m = /^#L(\d+)$/.exec(location.hash);
    if (m) reveal(Number(m[1]) - 1);
  });

  main();
})();
