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

  return { el, link, encodePath, bytes, dateTime, time, getJSON, crumbs, showError, tags, stateBadge };
})();
