// The projects page and the stream list of a project under a prefix.
'use strict';

(() => {
  const { el, link, encodePath, bytes, dateTime, getJSON, crumbs, showError, tags, stateBadge } = logdog;
  const REFRESH_MS = 3000;

  async function index() {
    const list = document.getElementById('projects');
    try {
      const { projects } = await getJSON('/api/projects');
      list.replaceChildren(...projects.map((p) => {
        const li = el('li');
        li.append(link('/p/' + encodePath(p), p));
        return li;
      }));
    } catch (e) {
      showError(`Cannot list projects: ${e.message}`);
    }
    document.getElementById('open-project').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new FormData(ev.target).get('project');
      if (p) location.href = '/p/' + encodePath(String(p).trim());
    });
  }

  async function streams() {
    const scope = decodeURIComponent(location.pathname.replace(/^\/p\//, '')).replace(/\/+$/, '');
    const slash = scope.indexOf('/');
    const project = slash < 0 ? scope : scope.slice(0, slash);
    const prefix = slash < 0 ? '' : scope.slice(slash + 1);
    crumbs(document.getElementById('crumbs'), project, prefix);
    document.title = `${scope} - logdog`;
    const tbody = document.querySelector('#streams tbody');
    const filter = document.getElementById('filter');
    const summary = document.getElementById('summary');
    let last = null;

    function render() {
      if (!last) return;
      const needle = filter.value.trim().toLowerCase();
      const shown = last.streams.filter((s) => !needle ||
        s.path.toLowerCase().includes(needle) ||
        Object.entries(s.tags).some(([k, v]) => `${k}=${v}`.toLowerCase().includes(needle)));
      // Group by prefix, the most recently started prefix first.
      const groups = new Map();
      for (const s of shown) {
        if (!groups.has(s.prefix)) groups.set(s.prefix, []);
        groups.get(s.prefix).push(s);
      }
      const order = [...groups.entries()].sort((a, b) =>
        Math.max(...b[1].map((s) => s.started_ms)) - Math.max(...a[1].map((s) => s.started_ms)));
      const rows = [];
      for (const [pfx, list] of order) {
        const head = el('tr', 'group');
        const th = el('th');
        th.colSpan = 7;
        th.append(link('/p/' + encodePath(`${project}/${pfx}`), pfx || '(no prefix)'));
        if (pfx) {
          const all = link('/c/' + encodePath(`${project}/${pfx}`), 'all streams, interleaved', 'combined');
          all.title = 'The text streams of this prefix, line by line in the order they were written';
          th.append(all);
        }
        const open = list.filter((s) => s.state === 'open').length;
        th.append(el('span', 'group-summary',
          ` ${list.length} stream${list.length === 1 ? '' : 's'}` + (open ? `, ${open} running` : '')));
        head.append(th);
        rows.push(head);
        for (const s of list) {
          const tr = el('tr', 'stream');
          tr.dataset.state = s.state;
          const name = el('td', 'name');
          name.append(link('/s/' + encodePath(s.path), s.name));
          const state = el('td');
          state.append(stateBadge(s.state));
          const tagCell = el('td', 'tags');
          tags(tagCell, s.tags);
          const started = el('td', 'started', dateTime(s.started_ms || s.created_ms));
          tr.append(name, el('td', 'kind', s.kind), state, el('td', 'num', bytes(s.bytes)),
            el('td', 'num', s.entries), tagCell, started);
          rows.push(tr);
        }
      }
      tbody.replaceChildren(...rows);
      const open = last.streams.filter((s) => s.state === 'open').length;
      summary.textContent = `${last.streams.length} stream${last.streams.length === 1 ? '' : 's'}` +
        (open ? `, ${open} running` : '') + (last.truncated ? ' (list cut short)' : '') +
        (needle ? `; ${shown.length} shown` : '');
    }

    async function refresh() {
      try {
        last = await getJSON('/api/streams/' + encodePath(scope));
        showError('');
        render();
      } catch (e) {
        showError(`Cannot list streams: ${e.message}`);
      }
      if (!last || last.streams.some((s) => s.state === 'open')) {
        setTimeout(refresh, REFRESH_MS);
      }
    }

    filter.addEventListener('input', render);
    await refresh();
  }

  if (document.body.dataset.page === 'index') index();
  else streams();
})();
