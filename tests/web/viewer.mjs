// Drives headless Chromium through the collector's web viewer; run by tests/web_viewer.rs,
// which starts the collector and the writers and passes one JSON argument:
//
// { base, chromium, shots, live: { list, path, go1, go2, phase1, phase2, last },
//   big: { path, lines } }
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
