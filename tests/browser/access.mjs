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
// Prints what it does; exits 0 when every step passed, 1 otherwise (see harness.mjs).

import { harness } from './harness.mjs';

const h = harness('node access.mjs CONFIG.json', 80_000);
const { base } = h;

// Submits a form made in the page (same origin), as a person could with the browser's tools.
async function forgePost(action, fields) {
  await Promise.all([
    h.page.waitForNavigation({ waitUntil: 'load' }),
    h.page.evaluate(([action, fields]) => {
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
  const browser = await h.launch();
  const bob = h.config.requester;
  const alice = h.config.approver;
  let requestId = '';

  const asBob = await h.openAs(browser, bob);
  await h.step(`${bob.user}: /db is denied, with a Request access form`, async () => {
    await h.page.goto(`${base}/db`);
    await h.expectLoginForm('bob first visit');
    await h.signIn(bob, (u) => u.pathname === '/db');
    h.check(h.lastStatus() === 403, `expected 403, got ${h.lastStatus()}`);
    const body = await h.text();
    h.check(/access denied/i.test(body), 'the page does not say "access denied"');
    h.check(await h.page.locator('#request-access').isVisible(), 'no Request access button');
  });

  await h.step(`${bob.user}: asks for access with a reason`, async () => {
    await h.page.fill('#reason', 'INC-4211: read the orders table');
    await Promise.all([
      h.page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      h.page.click('#request-access'),
    ]);
    const mine = h.page.locator('.own-request');
    h.check((await mine.count()) === 1, `expected one own request, got ${await mine.count()}`);
    h.check((await mine.first().innerText()).includes('waiting for approval'), 'the request is not waiting for approval');
    requestId = (await mine.first().getAttribute('id')).replace('own-', '');
    const again = await h.page.goto(`${base}/db`);
    h.check(again.status() === 403, `before approval /db: expected 403, got ${again.status()}`);
  });

  const asAlice = await h.openAs(browser, alice);
  await h.step(`${alice.user}: signs in through Vigil and sees the request on /.vigil/access`, async () => {
    await h.page.goto(`${base}/.vigil/access`);
    await h.expectLoginForm('alice first visit');
    await h.signIn(alice, (u) => u.pathname === '/.vigil/access');
    h.check(h.lastStatus() === 200, `expected 200, got ${h.lastStatus()}`);
    const row = h.page.locator(`#request-${requestId}`);
    h.check(await row.isVisible(), `no row for request ${requestId}`);
    h.check((await row.innerText()).includes(bob.email), `the row does not name ${bob.email}`);
    h.check((await row.innerText()).includes('INC-4211'), 'the row does not show the reason');
  });

  await h.step(`${alice.user}: an approval posted from another site is refused`, async () => {
    const token = await h.page.locator('input[name=csrf]').first().getAttribute('value');
    await asAlice.context.route('https://evil.test/**', (route) => route.fulfill({
      status: 200,
      contentType: 'text/html',
      body: `<!doctype html><form id=f method=post action="${base}/.vigil/access/decide">` +
        `<input name=csrf value="${token}"><input name=id value="${requestId}">` +
        `<input name=decision value=approve></form>`,
    }));
    await h.page.goto('https://evil.test/approve');
    const [response] = await Promise.all([
      h.page.waitForResponse((r) => r.url() === `${base}/.vigil/access/decide`),
      h.page.evaluate(() => document.getElementById('f').submit()),
    ]);
    h.check(response.status() === 403, `cross-site approval: expected 403, got ${response.status()}`);
    await h.page.waitForURL(`${base}/.vigil/access/decide`, { waitUntil: 'load' });
    h.check(/cross-site request refused/i.test(await h.text()), 'the refusal does not say why');
    await h.page.goto(`${base}/.vigil/access`);
    h.check(await h.page.locator(`#approve-${requestId}`).isVisible(), 'the request is no longer pending');
  });

  await h.step(`${alice.user}: cannot approve her own request`, async () => {
    await h.page.goto(`${base}/vault`);
    h.check(await h.page.locator('#request-access').isVisible(), 'no Request access button on /vault');
    await h.page.fill('#reason', 'rotate the root key');
    await Promise.all([
      h.page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      h.page.click('#request-access'),
    ]);
    const own = (await h.page.locator('.own-request').first().getAttribute('id')).replace('own-', '');
    h.check((await h.page.locator(`#request-${own}`).innerText()).includes('your own request'), 'her own request offers to be approved');
    h.check((await h.page.locator(`#approve-${own}`).count()) === 0, 'an Approve button for her own request');
    const token = await h.page.locator('input[name=csrf]').first().getAttribute('value');
    await forgePost('/.vigil/access/decide', { csrf: token, id: own, decision: 'approve' });
    h.check(h.lastStatus() === 403, `self-approval: expected 403, got ${h.lastStatus()}`);
    h.check((await h.text()).includes('nobody approves their own access request'), 'the page does not say why');
  });

  await h.step(`${alice.user}: approves ${bob.user}'s request`, async () => {
    await h.page.goto(`${base}/.vigil/access`);
    await Promise.all([
      h.page.waitForURL(`${base}/.vigil/access`, { waitUntil: 'load' }),
      h.page.click(`#approve-${requestId}`),
    ]);
    h.check((await h.page.locator(`#approve-${requestId}`).count()) === 0, 'the request is still pending');
  });
  await asAlice.context.close();

  h.page = asBob.page;
  await h.step(`${bob.user}: gets through now, and opens a WebSocket`, async () => {
    const response = await h.page.goto(`${base}/db`);
    h.check(response.status() === 200, `after approval /db: expected 200, got ${response.status()}`);
    h.check((await h.text()).includes(`x-vigil-email: ${bob.email}`), 'the upstream page does not name bob');
    const echoed = await h.page.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      window.vigilSocket = ws;
      window.vigilClosed = new Promise((done) => ws.addEventListener('close', () => done(Date.now())));
      ws.addEventListener('open', () => ws.send('ping'));
      ws.addEventListener('message', (m) => resolve(String(m.data)));
      ws.addEventListener('error', () => resolve('error'));
      setTimeout(() => resolve('timeout'), 5000);
    }), `${base.replace('https://', 'wss://')}/db/socket`);
    h.check(echoed === 'ping', `the WebSocket did not echo: ${echoed}`);
  });

  await h.step(`${bob.user}: the grant expires: the WebSocket is cut and /db is denied`, async () => {
    const closedAt = await h.page.evaluate(() => Promise.race([
      window.vigilClosed,
      new Promise((resolve) => setTimeout(() => resolve(0), 30_000)),
    ]));
    h.check(closedAt > 0, 'the WebSocket was not cut within 30 s');
    const response = await h.page.goto(`${base}/db`);
    h.check(response.status() === 403, `after expiry /db: expected 403, got ${response.status()}`);
    h.check(await h.page.locator('#request-access').isVisible(), 'no Request access form after expiry');
  });
  await asBob.context.close();
  await browser.close();
}

await h.run(main);
