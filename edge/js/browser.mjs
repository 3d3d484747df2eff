// Drives the page written by `distillery web` in headless Chromium (Debian's /usr/bin/chromium,
// no browser download): types each text, reads the label and probabilities from the page.
//   node browser.mjs URL TEXTS.json [SCREENSHOT.png]
// prints {"load_ms", "cold_start_ms", "page_cold_start_ms" (navigation start to the first
// prediction, from the page's own clock), "results": [{text, label, probabilities, ms}] as typed,
// "in_page": the same texts classified again by the page's script alone, "blocked", "errors"}.
// Any request that leaves the page's own origin is blocked and listed: the page must work offline.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [url, textsFile, screenshot] = process.argv.slice(2);
const texts = JSON.parse(readFileSync(textsFile, 'utf8'));
const origin = new URL(url).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
try {
  const page = await browser.newPage();
  const blocked = [];
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
  await page.route('**/*', (route) => {
    const target = route.request().url();
    if (new URL(target).origin === origin) return route.continue();
    blocked.push(target);
    return route.abort();
  });
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector('#status[data-state="ready"]', { timeout: 120_000 }).catch((error) => {
    throw new Error(`the page did not get ready: ${errors.join('; ') || error}`);
  });
  const loadMs = Date.now() - started;
  const results = [];
  let coldStartMs = null;
  for (const text of texts) {
    const begun = Date.now();
    await page.fill('#text', text);
    await page.click('#classify');
    await page.waitForSelector('#status[data-state="done"]', { timeout: 60_000 }).catch((error) => {
      throw new Error(`no result for ${JSON.stringify(text)}: ${errors.join('; ') || error}`);
    });
    const ms = Date.now() - begun;
    coldStartMs ??= Date.now() - started;
    const rows = await page.$$eval('#result tbody tr', (trs) =>
      trs.map((tr) => [tr.dataset.label, Number(tr.querySelector('.probability').textContent)]));
    const label = await page.$eval('#result', (table) => table.dataset.label);
    results.push({ text, label, probabilities: Object.fromEntries(rows), ms });
  }
  // Latency inside the page (no typing or DOM round trips), for the benchmark.
  const inPage = await page.evaluate(async (all) => {
    const out = [];
    for (const text of all) out.push(await window.distillery.classify(text));
    return out;
  }, texts);
  const pageColdStartMs = await page.evaluate(() => window.distillery.firstResultMs?.() ?? null);
  const [threads, isolated, pipelineMs] = await page.evaluate(
    () => [window.distillery.threads ?? 1, self.crossOriginIsolated, window.distillery.loadMs]);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    load_ms: loadMs,
    cold_start_ms: coldStartMs,
    page_cold_start_ms: pageColdStartMs,
    pipeline_ms: pipelineMs,
    threads,
    isolated,
    results,
    in_page: inPage,
    blocked,
    errors,
  }));
} finally {
  await browser.close();
}
