// One stream: its rows (a text stream's lines, a datagram stream's datagrams) with numbers,
// times and ANSI colours, followed live while the stream is open.
//
// The page holds a window of at most MAX rows, [lo, hi), and fetches PAGE more as the reader
// nears either edge, dropping rows at the other; so a log of any size is never rendered (or
// fetched) whole. While the stream is open, an event stream delivers new rows; its event ids
// are row numbers, so after a reconnect the browser resumes where it was (Last-Event-ID).
//
// The search runs on the server over the whole log (`/api/search`), a bounded page of matches
// at a time; next/previous walk the matches, fetching further ones when needed. Sections of
// CI systems (GitHub Actions groups, GitLab sections, Buildkite `---`/`+++`/`~~~` lines) come
// from `/api/sections` as markers; rows inside a collapsed section stay in the window but
// are hidden, and the window keeps fetching while what it fetched is all hidden.
'use strict';

(() => {
  const {
    el, encodePath, bytes, dateTime, time, getJSON, crumbs, showError, tags, duration, runHeader,
    appendSpans,
  } = logdog;
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
  let sections = []; // {start, end, name, style, ms, running, collapsed}, by start
  let sectionAt = new Map(); // start row -> section
  const search = { key: '', matches: [], next: null, idx: -1, busy: false };
  let hits = new Set(); // rows that match the search

  function renderRow(r) {
    const row = el('div', r.p ? 'row partial' : 'row');
    row.dataset.n = r.n;
    const ln = el('a', 'ln', r.n + 1);
    ln.href = `#L${r.n + 1}`;
    const ts = el('span', 'ts', time(r.t));
    ts.title = new Date(r.t).toISOString();
    const tx = el('span', r.hex ? 'tx hex' : 'tx');
    appendSpans(tx, r.s);
    if (r.cut) tx.append(el('span', 'cut', ` … (${bytes(r.size)})`));
    row.append(ln, ts, tx);
    return row;
  }

  /** Pairs section markers (in row order) into sections. */
  function buildSections(markers, lastT, lastRow) {
    const out = [];
    const stack = [];
    let bk = null;
    const close = (s, n, t, ts) => { s.end = n; s.endT = t; s.endTs = ts; };
    for (const m of markers) {
      const fresh = () => ({
        start: m.n, end: null, name: m.name, style: m.style, t: m.t, ts: m.ts ?? null,
        collapsed: m.collapsed,
      });
      if (m.style === 'buildkite') {
        // Each Buildkite line starts a section, ending the one before.
        if (bk && bk.end === null) close(bk, m.n - 1, m.t, null);
        bk = fresh();
        out.push(bk);
      } else if (m.kind === 'start') {
        const s = fresh();
        out.push(s);
        stack.push(s);
      } else {
        // The innermost open section of its kind (and, for GitLab, of its name).
        for (let i = stack.length - 1; i >= 0; i--) {
          const s = stack[i];
          if (s.style === m.style && (m.style !== 'gitlab' || s.name === m.name)) {
            close(s, m.n, m.t, m.ts ?? null);
            stack.splice(i);
            break;
          }
        }
      }
    }
    for (const s of out) {
      if (s.end === null) {
        s.end = Math.max(s.start, lastRow);
        s.endT = lastT;
        s.endTs = null;
        s.running = !complete;
      }
      // A GitLab section carries its own times; the others use the lines' times.
      s.ms = s.ts !== null && s.endTs !== null ? s.endTs - s.ts : Math.max(0, s.endT - s.t);
    }
    return out;
  }

  /** Fetches the section markers of the whole log, a bounded page at a time; again from
   * where it got to when called again (a live stream grows). */
  const markerScan = { markers: [], from: 0, lastT: 0, lastRow: 0, busy: false, timer: null };
  async function loadSections() {
    if (kind !== 'text' || markerScan.busy) return;
    markerScan.busy = true;
    const ms = markerScan;
    // The last line may have been unfinished: read it again.
    ms.markers = ms.markers.filter((m) => m.n < ms.from);
    for (let pages = 0; pages < 16; pages++) {
      let d;
      try {
        d = await getJSON(`/api/sections/${enc}?from=${ms.from}`);
      } catch (_) {
        break;
      }
      ms.markers.push(...d.markers.filter((m) => m.n >= ms.from));
      ms.lastT = d.last_t || ms.lastT;
      ms.lastRow = Math.max(0, d.total - 1);
      if (d.next === null || d.next === undefined) {
        ms.from = Math.max(ms.from, d.total - 1);
        break;
      }
      ms.from = d.next;
    }
    markerScan.busy = false;
    const old = new Map(sections.map((s) => [s.start, s.collapsed]));
    sections = buildSections(ms.markers, ms.lastT, ms.lastRow);
    for (const s of sections) if (old.has(s.start)) s.collapsed = old.get(s.start);
    sectionAt = new Map(sections.map((s) => [s.start, s]));
    document.body.dataset.sections = String(sections.length);
    decorate();
  }

  /** Reads the new section markers of a live stream, at most every few seconds. */
  function sectionsLater() {
    if (markerScan.timer) return;
    markerScan.timer = setTimeout(() => {
      markerScan.timer = null;
      loadSections();
    }, 3000);
  }

  /** The section head on a row: a fold button, the name's line, the duration. */
  function sectionHead(row, s) {
    row.classList.add('sec-head');
    row.classList.toggle('collapsed', s.collapsed);
    let btn = row.querySelector('.fold');
    if (!btn) {
      btn = el('button', 'fold');
      btn.type = 'button';
      btn.addEventListener('click', () => {
        // The sections are rebuilt as a live stream grows: look this one up again.
        const cur = sectionAt.get(Number(row.dataset.n));
        if (!cur) return;
        cur.collapsed = !cur.collapsed;
        decorate();
        maybeLoad();
      });
      row.querySelector('.tx').before(btn);
    }
    btn.textContent = s.collapsed ? '▸' : '▾';
    btn.title = `${s.collapsed ? 'Expand' : 'Collapse'} ${s.name} (lines ${s.start + 1}–${s.end + 1})`;
    btn.setAttribute('aria-expanded', String(!s.collapsed));
    let dur = row.querySelector('.sec-dur');
    if (!dur) {
      dur = el('span', 'sec-dur');
      row.append(dur);
    }
    dur.textContent = s.running ? `${duration(s.ms)} so far` : duration(s.ms);
    dur.title = `section ${s.name}: ${s.end - s.start + 1} lines`;
  }

  /** Marks section heads, hides rows of collapsed sections, and marks search hits. */
  function decorate() {
    const folded = sections.filter((s) => s.collapsed && s.end > s.start && s.end >= lo && s.start < hi);
    const rows = body.children;
    let f = 0;
    let hideTo = -1; // rows up to this one are hidden
    for (let i = 0; i < rows.length; i++) {
      const n = lo + i;
      while (f < folded.length && folded[f].start < n) {
        hideTo = Math.max(hideTo, folded[f].end);
        f++;
      }
      const row = rows[i];
      row.classList.toggle('folded', n <= hideTo);
      row.classList.toggle('hit', hits.has(n));
      const s = sectionAt.get(n);
      if (s) sectionHead(row, s);
    }
  }

  /** Expands the collapsed sections hiding row n. */
  function unfold(n) {
    let changed = false;
    for (const s of sections) {
      if (s.collapsed && s.start < n && n <= s.end) {
        s.collapsed = false;
        changed = true;
      }
    }
    if (changed) decorate();
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
    decorate();
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
    decorate();
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
    unfold(n);
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
      if (my === gen) busy = false;
      return;
    }
    if (my === gen) busy = false;
    showCount();
    // Rows of a collapsed section take no room: keep going until the view is filled.
    if (my === gen) setTimeout(maybeLoad, 0);
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
      if (my === gen) busy = false;
      return;
    }
    if (my === gen) busy = false;
    showCount();
    if (my === gen) setTimeout(maybeLoad, 0);
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
      if (d.rows.length) sectionsLater();
    });
    live.addEventListener('state', (ev) => showStream(JSON.parse(ev.data)));
    live.addEventListener('end', () => {
      live.close();
      live = null;
      complete = true;
      sectionsLater();
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
    if (prefix) {
      const c = document.getElementById('combined');
      c.href = `/c/${encodePath(project)}/${encodePath(prefix)}`;
      c.hidden = false;
    }
    runHeader(project, prefix);
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
    if (kind !== 'text' && kind !== 'datagram') document.getElementById('search').hidden = true;
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
    loadSections();
    if (!complete) follow(Math.max(0, total - 1));
    else setStatus('complete');
  }

  // The search.
  const sq = document.getElementById('search-q');
  const sRegex = document.getElementById('search-regex');
  const sCase = document.getElementById('search-case');
  const sCount = document.getElementById('search-count');
  const sMore = document.getElementById('search-more');
  const results = document.getElementById('results');

  function searchKey() {
    return JSON.stringify([sq.value, sRegex.checked, sCase.checked]);
  }

  function showSearch() {
    const n = search.matches.length;
    const more = search.next !== null;
    let text = '';
    if (search.key) {
      text = n ? `${search.idx >= 0 ? `${search.idx + 1} of ` : ''}${n}${more ? '+' : ''} match${n === 1 && !more ? '' : 'es'}`
        : more ? 'no matches yet' : 'no matches';
    }
    sCount.textContent = text;
    sMore.hidden = !more;
    document.getElementById('search-prev').disabled = !n;
    document.getElementById('search-next').disabled = !n && !more;
    for (const li of results.querySelectorAll('li.current')) li.classList.remove('current');
    const cur = results.children[search.idx];
    if (cur) {
      cur.classList.add('current');
      cur.scrollIntoView({ block: 'nearest' });
    }
  }

  function resultItem(m, i) {
    const li = el('li');
    const a = el('a', 'result');
    a.href = `#L${m.n + 1}`;
    a.append(el('span', 'ln', m.n + 1));
    const tx = el('span', 'tx');
    if (m.at) {
      tx.append(document.createTextNode(m.text.slice(0, m.at[0])));
      tx.append(el('mark', null, m.text.slice(m.at[0], m.at[1])));
      tx.append(document.createTextNode(m.text.slice(m.at[1])));
    } else {
      tx.textContent = m.text;
    }
    a.append(tx);
    a.addEventListener('click', (ev) => {
      ev.preventDefault();
      goTo(i);
    });
    li.append(a);
    return li;
  }

  /** Fetches the next page of matches (from the start when `fresh`). */
  async function fetchMatches(fresh) {
    if (search.busy) return false;
    search.busy = true;
    if (fresh) {
      search.key = searchKey();
      search.matches = [];
      search.next = 0;
      search.idx = -1;
      hits = new Set();
      results.replaceChildren();
      sCount.textContent = 'searching…';
    }
    const q = new URLSearchParams({ q: sq.value, from: String(search.next), max: '200' });
    if (sRegex.checked) q.set('regex', '1');
    if (sCase.checked) q.set('case', '1');
    try {
      const d = await getJSON(`/api/search/${enc}?${q}`);
      const start = search.matches.length;
      search.matches.push(...d.matches);
      search.next = d.next;
      const frag = document.createDocumentFragment();
      d.matches.forEach((m, i) => {
        hits.add(m.n);
        frag.append(resultItem(m, start + i));
      });
      results.append(frag);
      results.hidden = !search.matches.length;
      showError('');
    } catch (e) {
      search.next = null;
      if (fresh) search.key = '';
      showError(`Search: ${e.message}`);
    } finally {
      search.busy = false;
    }
    decorate();
    showSearch();
    return true;
  }

  function goTo(i) {
    if (i < 0 || i >= search.matches.length) return;
    search.idx = i;
    showSearch();
    const n = search.matches[i].n;
    history.replaceState(null, '', `#L${n + 1}`);
    reveal(n);
  }

  async function step(delta) {
    if (search.key !== searchKey() || !sq.value) {
      if (!sq.value) return;
      await fetchMatches(true);
      if (search.matches.length) goTo(0);
      return;
    }
    let i = search.idx + delta;
    if (i >= search.matches.length && search.next !== null) {
      await fetchMatches(false);
    }
    if (!search.matches.length) return;
    // Wrap around at either end once everything has been searched.
    if (i >= search.matches.length) i = search.next === null ? 0 : search.matches.length - 1;
    if (i < 0) i = search.matches.length - 1;
    goTo(i);
  }

  document.getElementById('search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    step(1);
  });
  sq.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && ev.shiftKey) {
      ev.preventDefault();
      step(-1);
    }
  });
  document.getElementById('search-next').addEventListener('click', () => step(1));
  document.getElementById('search-prev').addEventListener('click', () => step(-1));
  sMore.addEventListener('click', () => fetchMatches(false));

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
