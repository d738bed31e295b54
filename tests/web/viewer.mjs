// Drives headless Chromium through the collector's web viewer; run by tests/web_viewer.rs,
// which starts the collector and the writers and passes one JSON argument:
//
// { base, chromium, shots, live: { list, path, go1, go2, phase1, phase2, last },
//   big: { path, lines }, ci: { scope, build, interleaved, command, exit_code, duration_secs } }
//
// `live.phase1`, `live.phase2` and `live.last` are the plain texts of the live stream's lines
// (without escape sequences): phase 1 is stored before this script starts; the writer waits
// for the file `go1` before phase 2 and for `go2` before its last line. Screenshots go to
// `shots`. Prints one JSON line of measurements; exits 1 on the first failed check.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const MAX_ROWS = 3000; // the page's window (stream.js)
const measured = {};
let page;
let browser;
const dialogs = [];
const pageErrors = [];

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

async function shot(name) {
  await page.screenshot({ path: path.join(cfg.shots, `${name}.png`) });
}

/** The line numbers and plain texts of the rows in the page. */
async function rows() {
  return page.evaluate(() => [...document.querySelectorAll('#rows .row')].map((r) => ({
    n: Number(r.querySelector('.ln').textContent),
    ts: r.querySelector('.ts').textContent,
    text: r.querySelector('.tx').textContent,
  })));
}

async function waitForRows(n) {
  await page.waitForFunction((k) => document.querySelectorAll('#rows .row').length >= k, n);
}

function checkRows(got, want, from) {
  check(got.length === want.length, `${got.length} rows shown, want ${want.length}`);
  got.forEach((r, i) => {
    check(r.n === from + i, `row ${i} is numbered ${r.n}, want ${from + i}`);
    check(r.text === want[i], `line ${r.n} shows ${JSON.stringify(r.text)}, want ${JSON.stringify(want[i])}`);
    check(/^\d\d:\d\d:\d\d\.\d\d\d$/.test(r.ts), `line ${r.n} has no time: ${JSON.stringify(r.ts)}`);
  });
}

async function liveStream() {
  const live = cfg.live;
  // The project list, then the stream list.
  await page.goto(`${cfg.base}/`);
  await page.locator('#projects a', { hasText: /^default$/ }).click();
  await page.waitForURL('**/p/default');
  const row = page.locator('tr.stream', {
    has: page.locator('td.name a', { hasText: /^stdout$/ }),
  }).filter({ has: page.locator('a[href$="/web/+/stdout"]') });
  await row.waitFor();
  check((await row.getAttribute('data-state')) === 'open', 'the list shows the stream as open');
  check((await row.locator('.state').textContent()) === 'running', 'the list says running');
  const tagText = await page.locator('tr.stream .tag', { hasText: 'note=' }).first().textContent();
  check(tagText === 'note=<img src=x onerror=alert(3)>', `tag shown as ${JSON.stringify(tagText)}`);
  const combined = await page.locator('tr.group a.combined[href="/c/default/web"]').count();
  check(combined === 1, 'the prefix has no link to its interleaved view');
  await shot('1-list');

  // The stream, while its writer waits.
  await row.locator('td.name a').click();
  await page.waitForURL(`**/s/${live.path}`);
  await page.waitForSelector('#state[data-state="open"]');
  await waitForRows(live.phase1.length);
  checkRows(await rows(), live.phase1, 1);
  // ANSI colours are styles, not text.
  const styles = await page.evaluate(() => {
    const spans = [...document.querySelector('#rows .row .tx').querySelectorAll('span')];
    const style = (text) => {
      const s = spans.find((e) => e.textContent === text);
      if (!s) return null;
      const cs = getComputedStyle(s);
      return { color: cs.color, weight: cs.fontWeight, decoration: cs.textDecorationLine };
    };
    return {
      error: style('ERROR'), green: style('green'), orange: style('orange'),
      truecolor: style('truecolor'), under: style('under'),
    };
  });
  check(styles.error && styles.error.color === 'rgb(224, 108, 117)', `ERROR is ${JSON.stringify(styles.error)}`);
  check(styles.error.weight === '700', `ERROR is not bold: ${JSON.stringify(styles.error)}`);
  check(styles.green && styles.green.color === 'rgb(152, 195, 121)', `green is ${JSON.stringify(styles.green)}`);
  check(styles.orange && styles.orange.color === 'rgb(255, 135, 0)', `orange is ${JSON.stringify(styles.orange)}`);
  check(styles.truecolor && styles.truecolor.color === 'rgb(10, 20, 200)', `truecolor is ${JSON.stringify(styles.truecolor)}`);
  check(styles.under && styles.under.decoration === 'underline', `under is ${JSON.stringify(styles.under)}`);
  measured.styles = styles;
  // Log text is text: no element came from it.
  check(await page.locator('#rows img, #rows script').count() === 0, 'log text became HTML');
  await page.evaluate(() => { window.notReloaded = true; });
  await shot('2-running');

  // New lines appear while the stream is still open, without a reload.
  fs.writeFileSync(live.go1, '');
  const t0 = Date.now();
  await waitForRows(live.phase1.length + live.phase2.length);
  measured.liveAppendMs = Date.now() - t0;
  check((await page.getAttribute('#state', 'data-state')) === 'open', 'still open after phase 2');
  checkRows(await rows(), [...live.phase1, ...live.phase2], 1);
  check(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
  await shot('3-live');

  // The writer ends: the last line comes and the stream is marked complete.
  fs.writeFileSync(live.go2, '');
  await page.waitForSelector('#state[data-state="complete"]');
  await waitForRows(live.phase1.length + live.phase2.length + live.last.length);
  checkRows(await rows(), [...live.phase1, ...live.phase2, ...live.last], 1);
  check(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
  check((await page.textContent('#state')) === 'complete', 'the state badge does not say complete');
  check((await page.textContent('#status')) === 'complete', 'the status line does not say complete');
  check(await page.locator('img, script:not([src])').count() === 0, 'writer text became HTML');
  const raw = await page.getAttribute('#raw', 'href');
  check(raw === `/raw/${live.path}`, `raw link is ${raw}`);
  await shot('4-complete');
}

async function bigStream() {
  const big = cfg.big;
  const t0 = Date.now();
  await page.goto(`${cfg.base}/s/${big.path}`);
  await page.waitForSelector('#state[data-state="complete"]');
  await page.waitForSelector('#rows .row');
  measured.bigFirstRowsMs = Date.now() - t0;
  const count = () => page.evaluate(() => document.querySelectorAll('#rows .row').length);
  const firstLast = () => page.evaluate(() => {
    const r = document.querySelectorAll('#rows .row .ln');
    return [Number(r[0].textContent), Number(r[r.length - 1].textContent)];
  });
  check(await count() <= MAX_ROWS, `the page holds ${await count()} rows`);
  check((await firstLast())[0] === 1, 'a complete stream opens at its first line');
  const counted = await page.textContent('#count');
  check(counted.startsWith(`${big.lines} lines`), `count says ${JSON.stringify(counted)}`);

  // The end, then a line in the middle, then scrolling up from there.
  let t = Date.now();
  await page.click('#end');
  await page.waitForFunction((n) => {
    const r = document.querySelectorAll('#rows .row .ln');
    return r.length && Number(r[r.length - 1].textContent) === n;
  }, big.lines);
  measured.bigEndMs = Date.now() - t;
  check(await count() <= MAX_ROWS, `the page holds ${await count()} rows at the end`);
  const mid = Math.floor(big.lines / 2);
  t = Date.now();
  await page.evaluate((n) => { location.hash = `#L${n}`; }, mid);
  await page.waitForFunction((n) => {
    const r = document.querySelector('#rows .row.target .ln');
    return r && Number(r.textContent) === n;
  }, mid);
  measured.bigJumpMs = Date.now() - t;
  const [before] = await firstLast();
  await page.evaluate(() => { document.getElementById('log').scrollTop = 0; });
  await page.waitForFunction((n) => {
    const r = document.querySelector('#rows .row .ln');
    return r && Number(r.textContent) < n;
  }, before);
  let [after, end] = await firstLast();
  check(after < before && end > after, `scrolling up fetched nothing: ${before} -> ${after}`);
  // Keep scrolling up: the window slides, it does not grow past its limit.
  for (let i = 0; i < 8 && after > 1; i++) {
    const top = after;
    await page.evaluate(() => { document.getElementById('log').scrollTop = 0; });
    await page.waitForFunction((n) => {
      const r = document.querySelector('#rows .row .ln');
      return r && Number(r.textContent) < n;
    }, top);
    [after, end] = await firstLast();
    check(await count() <= MAX_ROWS, `the page holds ${await count()} rows after scrolling`);
  }
  measured.bigRowsHeld = await count();
  await shot('5-big');
}

/** The CI-like run: run header, sections, search, the interleaved view. */
async function ciRun() {
  const ci = cfg.ci;
  const t0 = Date.now();
  await page.goto(`${cfg.base}/s/${ci.scope}/+/build`);
  await page.waitForSelector('#state[data-state="complete"]');
  await waitForRows(ci.build.length);

  // The header: command, exit status and duration from the run record.
  await page.waitForSelector('#run:not([hidden]) .run-command');
  const cmd = await page.textContent('#run .run-command');
  check(cmd === "make -j2 check 'NAME=it'\\''s'", `command shown as ${JSON.stringify(cmd)}`);
  const exit = await page.textContent('#run .run-exit');
  check(exit === `exit ${ci.exit_code}`, `exit status shown as ${JSON.stringify(exit)}`);
  check(await page.locator('#run .run-exit.fail').count() === 1, 'a failed run is not marked failed');
  const took = await page.textContent('#run .run-duration');
  check(took === '1m 23s', `duration shown as ${JSON.stringify(took)}`);
  await shot('6-run-header');
  // A stream the collector reports as abandoned gets its own badge, not a running one.
  const badges = await page.evaluate(() => {
    const a = logdog.stateBadge('abandoned');
    const o = logdog.stateBadge('open');
    document.body.append(a, o);
    const cs = (e) => getComputedStyle(e);
    const r = {
      text: a.textContent, bg: cs(a).backgroundColor, border: cs(a).borderTopStyle,
      runningBg: cs(o).backgroundColor,
    };
    a.remove();
    o.remove();
    return r;
  });
  check(badges.text === 'abandoned' && badges.bg !== badges.runningBg && badges.border === 'dashed',
    `the abandoned badge is ${JSON.stringify(badges)}`);

  // Sections: GitHub's group and GitLab's collapsed=true section start collapsed, with their
  // durations; Buildkite's `---` is collapsed, `+++` expanded.
  await page.waitForSelector('body[data-sections="4"]');
  measured.ciSectionsMs = Date.now() - t0;
  const row = (line) => page.locator(`#rows .row[data-n="${line - 1}"]`);
  const visible = async (line) => row(line).isVisible();
  const head = async (line) => ({
    collapsed: await row(line).evaluate((r) => r.classList.contains('collapsed')),
    expanded: await row(line).locator('.fold').getAttribute('aria-expanded'),
    dur: await row(line).locator('.sec-dur').textContent(),
  });
  // Lines (from 1): 2 ::group::, 5 ::endgroup::, 6 section_start, 9 section_end,
  // 10 --- Package, 12 +++ Tests.
  let h = await head(2);
  check(h.collapsed && h.expanded === 'false', `the group is not collapsed: ${JSON.stringify(h)}`);
  check(/^(\d+ms|\d+\.\ds)$/.test(h.dur), `the group's duration is ${JSON.stringify(h.dur)}`);
  for (const l of [3, 4, 5, 7, 8, 9, 11]) check(!(await visible(l)), `line ${l} is shown in a collapsed section`);
  for (const l of [1, 2, 6, 10, 12, 13, 14]) check(await visible(l), `line ${l} is hidden`);
  h = await head(6);
  check(h.collapsed, 'the GitLab section with collapsed=true is not collapsed');
  check(h.dur === '42.0s', `the GitLab section takes ${JSON.stringify(h.dur)}, its markers say 42s`);
  const compile = await row(6).locator('.tx').textContent();
  check(compile === 'Compiling the code', `the GitLab header shows ${JSON.stringify(compile)}`);
  h = await head(12);
  check(!h.collapsed && h.expanded === 'true', 'the +++ section is collapsed');
  check(/^(\d+ms|\d+\.\ds)$/.test(h.dur), `the +++ section's duration is ${JSON.stringify(h.dur)}`);
  check((await head(10)).collapsed, 'the --- section is expanded');
  await shot('7-sections-collapsed');
  await row(2).locator('.fold').click();
  await page.waitForFunction(() => {
    const r = document.querySelector('#rows .row[data-n="2"]');
    return r && !r.classList.contains('folded');
  });
  h = await head(2);
  check(!h.collapsed && h.expanded === 'true', 'the group did not expand');
  for (const l of [3, 4, 5]) check(await visible(l), `line ${l} is hidden in an expanded section`);
  check(!(await visible(7)), 'expanding one section expanded another');
  await shot('8-section-expanded');

  // Search over the whole log, on the server: Enter finds the first match, then next and
  // previous walk the matches and wrap around.
  const needles = ci.build.map((l, i) => [l, i + 1]).filter(([l]) => /needle/i.test(l)).map(([, n]) => n);
  const target = () => page.evaluate(() => {
    const r = document.querySelector('#rows .row.target .ln');
    return r ? Number(r.textContent) : null;
  });
  await page.fill('#search-q', 'needle');
  await page.press('#search-q', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#results li').length === n, needles.length);
  await page.waitForFunction((n) => {
    const r = document.querySelector('#rows .row.target .ln');
    return r && Number(r.textContent) === n;
  }, needles[0]);
  let count = await page.textContent('#search-count');
  check(count === `1 of ${needles.length} matches`, `search count says ${JSON.stringify(count)}`);
  await page.click('#search-next');
  check(await target() === needles[1], `next went to ${await target()}, want ${needles[1]}`);
  // The line gone to is in view, below the bars.
  const inView = await page.evaluate(() => {
    const r = document.querySelector('#rows .row.target').getBoundingClientRect();
    const box = document.getElementById('log').getBoundingClientRect();
    return r.top >= box.top && r.bottom <= box.bottom;
  });
  check(inView, 'the line gone to is not in view');
  await page.click('#search-next');
  check(await target() === needles[2], `next went to ${await target()}, want ${needles[2]}`);
  await page.click('#search-prev');
  check(await target() === needles[1], `previous went to ${await target()}, want ${needles[1]}`);
  await page.click('#search-prev');
  await page.click('#search-prev');
  check(await target() === needles[needles.length - 1], `previous did not wrap around: ${await target()}`);
  count = await page.textContent('#search-count');
  check(count === `${needles.length} of ${needles.length} matches`, `search count says ${JSON.stringify(count)}`);
  const hits = await page.locator('#rows .row.hit').count();
  check(hits === needles.length, `${hits} lines marked as matches, want ${needles.length}`);
  const mark = await page.locator('#results li.current mark').textContent();
  check(mark === 'needle', `the match is marked as ${JSON.stringify(mark)}`);
  // A result link goes to its line.
  await page.locator('#results li').nth(3).locator('a').click();
  check(await target() === needles[3], `the 4th result went to ${await target()}`);
  await shot('9-search');
  // A regex; and one the server refuses, with its reason.
  await page.check('#search-regex');
  await page.fill('#search-q', '^item [0-9]*7: needle');
  await page.press('#search-q', 'Enter');
  await page.waitForFunction(() => /^1 of 4 matches$/.test(document.getElementById('search-count').textContent));
  await page.fill('#search-q', '(unclosed');
  await page.press('#search-q', 'Enter');
  await page.waitForSelector('#error:not([hidden])');
  const err = await page.textContent('#error');
  check(err.startsWith('Search: invalid regex:'), `the refused regex shows ${JSON.stringify(err)}`);

  // The interleaved view of the prefix: every line of both streams, in the order written,
  // marked with its stream; the run header again.
  await page.click('#combined');
  await page.waitForURL(`**/c/${ci.scope}`);
  await page.waitForFunction((n) => document.querySelectorAll('#rows .row').length >= n, ci.interleaved.length);
  await page.waitForSelector('body[data-done="true"]');
  const got = await page.evaluate(() => [...document.querySelectorAll('#rows .row')].map((r) => [
    r.querySelector('.mark').textContent, Number(r.querySelector('.ln').textContent) - 1,
    r.querySelector('.tx').textContent,
  ]));
  check(got.length === ci.interleaved.length, `${got.length} interleaved lines, want ${ci.interleaved.length}`);
  got.forEach((g, i) => {
    const w = ci.interleaved[i];
    check(g[0] === w[0] && g[1] === w[1] && g[2] === w[2],
      `interleaved line ${i} is ${JSON.stringify(g)}, want ${JSON.stringify(w)}`);
  });
  const colours = await page.evaluate(() => {
    const c = (name) => getComputedStyle(document.querySelector(`#rows .row[data-stream="${name}"] .mark`)).color;
    return [c('build'), c('steps')];
  });
  check(colours[0] !== colours[1], `both streams are marked in ${colours[0]}`);
  await page.waitForSelector('#run:not([hidden]) .run-exit');
  check((await page.textContent('#run .run-exit')) === `exit ${ci.exit_code}`, 'no exit status on the interleaved view');
  const link = await page.getAttribute('#rows .row[data-stream="steps"] .ln', 'href');
  check(link === `/s/${ci.scope}/+/steps#L1`, `a steps line links to ${link}`);
  await shot('10-interleaved');
}

async function main() {
  fs.mkdirSync(cfg.shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(60_000);
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await liveStream();
  await bigStream();
  await ciRun();
  check(dialogs.length === 0, `a dialog opened (injected script ran): ${dialogs}`);
  check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  console.log(JSON.stringify(measured));
}

main().then(
  async () => {
    await browser.close();
    process.exit(0);
  },
  async (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    try {
      if (page) await shot('failure');
    } catch (_) {
      // no screenshot then
    }
    if (browser) await browser.close().catch(() => {});
    process.exit(1);
  },
);
