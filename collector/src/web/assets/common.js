// Helpers shared by the viewer's pages. Everything a stream's writer chose (names, tags, log
// text) reaches the page as DOM text (textContent), never as HTML.
'use strict';

const logdog = (() => {
  /** Creates an element with a class and text. */
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  /** A link with text. */
  function link(href, text, cls) {
    const a = el('a', cls, text);
    a.href = href;
    return a;
  }

  /**
   * Appends a row's text spans to `tx`: `[text]` as plain text, `[text, class, colour,
   * background]` (ANSI styles) as a styled span.
   */
  function appendSpans(tx, spans) {
    for (const s of spans) {
      if (!s[1] && s.length < 3) {
        tx.append(document.createTextNode(s[0]));
        continue;
      }
      const sp = el('span', s[1], s[0]);
      if (s[2]) sp.style.color = s[2];
      if (s[3]) sp.style.backgroundColor = s[3];
      tx.append(sp);
    }
  }

  /** Encodes each segment of a path for a URL (keeping `+` and `:`, which are fine there). */
  function encodePath(path) {
    return path
      .split('/')
      .map((s) => encodeURIComponent(s).replace(/%2B/g, '+').replace(/%3A/gi, ':'))
      .join('/');
  }

  /** `1.5 MiB`. */
  function bytes(n) {
    const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  /** Local date and time, to the second. */
  function dateTime(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  /** Local time of day, to the millisecond. */
  function time(ms) {
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  /** Fetches JSON; throws an Error with the server's message on failure. */
  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: 'application/json' } });
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (resp.status === 401) {
      // No token, or the login cookie expired: log in and come back here.
      window.location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash));
    }
    if (!resp.ok) {
      const e = new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
      e.status = resp.status;
      throw e;
    }
    return body;
  }

  /** Fills the breadcrumb bar: logdog / project / prefix segments [/ + / name]. */
  function crumbs(nav, project, prefix, name) {
    nav.replaceChildren(link('/', 'logdog'));
    const sep = () => nav.append(el('span', 'sep', '/'));
    if (!project) return;
    sep();
    nav.append(link('/p/' + encodePath(project), project));
    let acc = project;
    for (const seg of (prefix ? prefix.split('/') : [])) {
      acc += '/' + seg;
      sep();
      nav.append(link('/p/' + encodePath(acc), seg));
    }
    if (name) {
      nav.append(el('span', 'sep', '/+/'));
      nav.append(el('strong', 'name', name));
    }
  }

  /** Shows an error message in #error. */
  function showError(msg) {
    const e = document.getElementById('error');
    if (!e) return;
    e.textContent = msg;
    e.hidden = !msg;
  }

  /** Tag chips. */
  function tags(container, tagMap) {
    container.replaceChildren();
    for (const [k, v] of Object.entries(tagMap || {})) {
      container.append(el('span', 'tag', `${k}=${v}`));
    }
  }

  /** A state badge. */
  function stateBadge(state) {
    return el('span', `state ${state}`, state === 'open' ? 'running' : state);
  }

  /** `45ms`, `12.3s`, `3m 05s`, `1h 02m`. */
  function duration(ms) {
    if (!(ms >= 0)) return '';
    if (ms < 1000) return `${Math.round(ms)}ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)}s`;
    const p = (n) => String(n).padStart(2, '0');
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${p(Math.floor(s % 60))}s`;
    return `${Math.floor(m / 60)}h ${p(m % 60)}m`;
  }

  /** A command line as a shell would take it: arguments quoted when needed. */
  function shellLine(argv) {
    return argv.map((a) => {
      const s = String(a);
      return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
    }).join(' ');
  }

  /**
   * Fills the run header (#run) from the run record of a prefix (`/api/run`): the command,
   * its exit status and how long it ran. Stays hidden when the prefix has no run record.
   */
  async function runHeader(project, prefix) {
    const box = document.getElementById('run');
    if (!box || !prefix) return;
    let run;
    try {
      ({ run } = await getJSON(`/api/run/${encodePath(project)}/${encodePath(prefix)}`));
    } catch (_) {
      return;
    }
    if (!run || !run.start) return;
    const { start, end, state } = run;
    const cmd = el('code', 'run-command', Array.isArray(start.command) ? shellLine(start.command) : '');
    cmd.title = 'command';
    let exit;
    if (end && end.exit_code !== null && end.exit_code !== undefined) {
      exit = el('span', `run-exit ${end.exit_code === 0 ? 'ok' : 'fail'}`, `exit ${end.exit_code}`);
    } else if (end && end.signal) {
      exit = el('span', 'run-exit fail', `killed by ${end.signal}`);
    } else if (end) {
      exit = el('span', 'run-exit fail', 'ended');
    } else {
      const label = state === 'open' ? 'running' : state === 'complete' ? 'no exit status' : state;
      exit = el('span', `run-exit ${state === 'open' ? 'running' : state}`, label);
    }
    exit.dataset.state = end ? 'ended' : state;
    const started = Date.parse(start.start);
    let took = '';
    if (end && typeof end.duration_secs === 'number') took = duration(end.duration_secs * 1000);
    else if (end && end.end && started) took = duration(Date.parse(end.end) - started);
    else if (state === 'open' && started) took = `${duration(Date.now() - started)} so far`;
    const dur = el('span', 'run-duration', took);
    dur.title = 'duration';
    const when = el('span', 'run-started', started ? dateTime(started) : '');
    when.title = `started${start.host ? ` on ${start.host}` : ''}`;
    box.replaceChildren(el('span', 'run-label', 'run'), cmd, exit, dur, when);
    box.hidden = false;
  }

  return {
    el, link, encodePath, bytes, dateTime, time, getJSON, crumbs, showError, tags, stateBadge,
    duration, runHeader, appendSpans,
  };
})();
