// Just-in-time access in a real browser: Debian's chromium driven by playwright-core.
//
//   node tests/browser/access.mjs CONFIG.json
//
// CONFIG.json (written by tests/browser.rs): base_url, issuer, chromium, and two people,
// "requester" (bob, not an approver) and "approver" (alice, in the approvers' group), each
// with user, password, email and device certificate (cert, key).
//
// Bob is denied /db and asks for access from the denial page; alice, signed in through Vigil,
// sees the request on /.vigil/access; a cross-site approval is refused; alice cannot approve
// her own request (for /vault); she approves bob's; bob gets /db and opens a WebSocket on it;
// the grant expires: the WebSocket is cut and /db is denied again.
//
// Prints what it does; exits 0 when every step passed, 1 otherwise (with the failing step, the
// navigations that led there and the text of the page).

import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const WATCHDOG_MS = 80_000;
const STEP_MS = 15_000;
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const base = config.base_url;
const issuer = config.issuer;
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
setTimeout(() => {
  console.error(`FAIL: watchdog: not finished within ${WATCHDOG_MS} ms (step: ${current})`);
  process.exit(1);
}, WATCHDOG_MS);

class StepFailure extends Error {}
let current = 'start';
let page = null;
let trace = [];

function check(condition, message) {
  if (!condition) throw new StepFailure(message);
}

async function step(name, body) {
  current = name;
  const t = Date.now();
  await body();
  console.log(`ok   ${name} (${Date.now() - t} ms)`);
}

async function text() {
  try {
    return (await page.locator('body').innerText({ timeout: 2_000 })).trim();
  } catch (e) {
    return `(no page text: ${e.message.split('\n')[0]})`;
  }
}

async function openAs(browser, who) {
  const context = await browser.newContext({
    clientCertificates: [{ origin: base, certPath: who.cert, keyPath: who.key }],
  });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  page = await context.newPage();
  trace = [];
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
      trace.push(`${r.request().method()} ${r.status()} ${r.url()}`);
    }
  });
  return { context, page };
}

function lastStatus() {
  return Number((trace[trace.length - 1] ?? '').split(' ')[1]);
}

// From a page that sent the browser to the provider: signs in and waits to be back at `path`.
async function signInTo(who, path) {
  check(page.url().startsWith(`${issuer}/interaction/`), `expected the provider's login form, got ${page.url()}`);
  await page.fill('#username', who.user);
  await page.fill('#password', who.password);
  await Promise.all([
    page.waitForURL((u) => u.origin === base && u.pathname === path, { waitUntil: 'load' }),
    page.click('#submit'),
  ]);
}

// Submits a form made in the page (same origin), as a person could with the browser's tools.
async function forgePost(action, fields) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.evaluate(([action, fields]) => {
      const form = document.createElement('form');
      form.method = 'post';
      form.action = action;
      for (const [name, value] of Object.entries(fields)) {
        const input = document.createElement('input');
        input.type = 'hidden';
        input.name = name;
        input.value = value;
        form.appendChild(input);
      }
      document.body.appendChild(form);
      form.submit();
    }, [action, fields]),
  ]);
}

async function main() {
  const browser = await chromium.launch({ executablePath: config.chromium, headless: true, args: FLAGS, timeout: STEP_MS });
  const bob = config.requester;
  const alice = config.approver;
  let requestId = '';

  const asBob = await openAs(browser, bob);
  await step(`${bob.user}: /db is denied, with a Request access form`, async () => {
    await page.goto(`${base}/db`);
    await signInTo(bob, '/db');
    check(lastStatus() === 403, `expected 403, got ${lastStatus()}`);
    const body = await text();
    check(/access denied/i.test(body), 'the page does not say "access denied"');
    check(await page.locator('#request-access').isVisible(), 'no Request access button');
  });

  await step(`${bob.user}: asks for access with a reason`, async () => {
    await page.fill('#reason', 'INC-4211: read the orders table');
    await Promise.all([
      page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      page.click('#request-access'),
    ]);
    const mine = page.locator('.own-request');
    check((await mine.count()) === 1, `expected one own request, got ${await mine.count()}`);
    check((await mine.first().innerText()).includes('waiting for approval'), 'the request is not waiting for approval');
    requestId = (await mine.first().getAttribute('id')).replace('own-', '');
    const again = await page.goto(`${base}/db`);
    check(again.status() === 403, `before approval /db: expected 403, got ${again.status()}`);
  });

  const asAlice = await openAs(browser, alice);
  await step(`${alice.user}: signs in through Vigil and sees the request on /.vigil/access`, async () => {
    await page.goto(`${base}/.vigil/access`);
    await signInTo(alice, '/.vigil/access');
    check(lastStatus() === 200, `expected 200, got ${lastStatus()}`);
    const row = page.locator(`#request-${requestId}`);
    check(await row.isVisible(), `no row for request ${requestId}`);
    check((await row.innerText()).includes(bob.email), `the row does not name ${bob.email}`);
    check((await row.innerText()).includes('INC-4211'), 'the row does not show the reason');
  });

  await step(`${alice.user}: an approval posted from another site is refused`, async () => {
    const token = await page.locator('input[name=csrf]').first().getAttribute('value');
    await asAlice.context.route('https://evil.test/**', (route) => route.fulfill({
      status: 200,
      contentType: 'text/html',
      body: `<!doctype html><form id=f method=post action="${base}/.vigil/access/decide">` +
        `<input name=csrf value="${token}"><input name=id value="${requestId}">` +
        `<input name=decision value=approve></form>`,
    }));
    await page.goto('https://evil.test/approve');
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/.vigil/access/decide`),
      page.evaluate(() => document.getElementById('f').submit()),
    ]);
    check(response.status() === 403, `cross-site approval: expected 403, got ${response.status()}`);
    await page.waitForURL(`${base}/.vigil/access/decide`, { waitUntil: 'load' });
    check(/cross-site request refused/i.test(await text()), 'the refusal does not say why');
    await page.goto(`${base}/.vigil/access`);
    check(await page.locator(`#approve-${requestId}`).isVisible(), 'the request is no longer pending');
  });

  await step(`${alice.user}: cannot approve her own request`, async () => {
    await page.goto(`${base}/vault`);
    check(await page.locator('#request-access').isVisible(), 'no Request access button on /vault');
    await page.fill('#reason', 'rotate the root key');
    await Promise.all([
      page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      page.click('#request-access'),
    ]);
    const own = (await page.locator('.own-request').first().getAttribute('id')).replace('own-', '');
    check((await page.locator(`#request-${own}`).innerText()).includes('your own request'), 'her own request offers to be approved');
    check((await page.locator(`#approve-${own}`).count()) === 0, 'an Approve button for her own request');
    const token = await page.locator('input[name=csrf]').first().getAttribute('value');
    await forgePost('/.vigil/access/decide', { csrf: token, id: own, decision: 'approve' });
    check(lastStatus() === 403, `self-approval: expected 403, got ${lastStatus()}`);
    check((await text()).includes('nobody approves their own access request'), 'the page does not say why');
  });

  await step(`${alice.user}: approves ${bob.user}'s request`, async () => {
    await page.goto(`${base}/.vigil/access`);
    await Promise.all([
      page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      page.click(`#approve-${requestId}`),
    ]);
    check((await page.locator(`#approve-${requestId}`).count()) === 0, 'the request is still pending');
  });
  await asAlice.context.close();

  page = asBob.page;
  await step(`${bob.user}: gets through now, and opens a WebSocket`, async () => {
    const response = await page.goto(`${base}/db`);
    check(response.status() === 200, `after approval /db: expected 200, got ${response.status()}`);
    check((await text()).includes(`x-vigil-email: ${bob.email}`), 'the upstream page does not name bob');
    const echoed = await page.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      window.vigilSocket = ws;
      window.vigilClosed = new Promise((done) => ws.addEventListener('close', () => done(Date.now())));
      ws.addEventListener('open', () => ws.send('ping'));
      ws.addEventListener('message', (m) => resolve(String(m.data)));
      ws.addEventListener('error', () => resolve('error'));
      setTimeout(() => resolve('timeout'), 5000);
    }), `${base.replace('https://', 'wss://')}/db/socket`);
    check(echoed === 'ping', `the WebSocket did not echo: ${echoed}`);
  });

  await step(`${bob.user}: the grant expires: the WebSocket is cut and /db is denied`, async () => {
    const closedAt = await page.evaluate(() => Promise.race([
      window.vigilClosed,
      new Promise((resolve) => setTimeout(() => resolve(0), 30_000)),
    ]));
    check(closedAt > 0, 'the WebSocket was not cut within 30 s');
    const response = await page.goto(`${base}/db`);
    check(response.status() === 403, `after expiry /db: expected 403, got ${response.status()}`);
    check(await page.locator('#request-access').isVisible(), 'no Request access form after expiry');
  });
  await asBob.context.close();
  await browser.close();
}

let code = 0;
try {
  await main();
  console.log(`PASS: every access step passed in ${elapsed()}`);
} catch (e) {
  code = 1;
  console.error(`FAIL at step "${current}" after ${elapsed()}: ${e instanceof StepFailure ? e.message : e.stack}`);
  if (page) {
    console.error(`page url: ${page.url()}`);
    console.error(`navigations:\n  ${trace.join('\n  ') || '(none)'}`);
    console.error(`page text:\n${await text()}`);
  }
}
process.exit(code);
