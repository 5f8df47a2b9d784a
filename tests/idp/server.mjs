// A real OpenID Provider (npm `oidc-provider`) for Vigil's integration tests.
//
// Loopback only, plain http, everything in memory (sessions, grants, keys, users), nothing
// fetched from the internet. See README.md beside this file for the arguments, the test users,
// the clients and the admin hook.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

// ---------------------------------------------------------------------------------------------
// Arguments

const { values: args } = parseArgs({
  strict: true,
  options: {
    port: { type: 'string', default: '0' },
    'issuer-host': { type: 'string', default: '127.0.0.1' },
    'client-id': { type: 'string', default: 'vigil' },
    'client-secret': { type: 'string', default: 'vigil-secret' },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
    'post-logout-redirect-uri': { type: 'string', multiple: true, default: [] },
    'backchannel-logout-uri': { type: 'string' },
    'service-client-id': { type: 'string', default: 'svc' },
    'service-client-secret': { type: 'string', default: 'svc-secret' },
    resource: { type: 'string', default: 'https://api.test' },
    'resource-scope': { type: 'string', default: 'orders:read orders:write' },
    'access-token-ttl': { type: 'string', default: '300' },
    'rotate-refresh-tokens': { type: 'boolean', default: false },
    'backchannel-ca': { type: 'string' },
    'backchannel-cert': { type: 'string' },
    'backchannel-key': { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});

if (args['redirect-uri'].length === 0) {
  process.stderr.write('idp: at least one --redirect-uri is required\n');
  process.exit(2);
}

const host = args['issuer-host'];
const accessTokenTtl = Number.parseInt(args['access-token-ttl'], 10);
const resource = args.resource;
const resourceScope = args['resource-scope'];
const log = (...parts) => process.stderr.write(`idp: ${parts.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// Users (in memory; the admin hook changes them)

const users = new Map([
  ['alice', {
    password: 'password',
    disabled: false,
    acr: 'urn:mfa',
    amr: ['pwd', 'otp'],
    claims: {
      email: 'alice@example.com',
      email_verified: true,
      name: 'Alice Example',
      groups: ['engineering', 'admins'],
      risk: 'low',
    },
  }],
  ['bob', {
    password: 'password',
    disabled: false,
    acr: 'urn:pwd',
    amr: ['pwd'],
    claims: {
      email: 'bob@example.com',
      email_verified: true,
      name: 'Bob Example',
      groups: ['sales'],
      risk: 'low',
    },
  }],
]);

function activeUser(id) {
  const user = users.get(id);
  return user && !user.disabled ? user : undefined;
}

// ---------------------------------------------------------------------------------------------
// Storage: a small in-memory adapter that the admin hook can enumerate (by accountId).

const store = new Map(); // `${model}:${id}` -> { payload, expiresAt (ms) | undefined }
const uidIndex = new Map(); // session uid -> session id
const userCodeIndex = new Map(); // user code -> id
const grantIndex = new Map(); // grantId -> Set of store keys

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, {
      payload,
      expiresAt: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined,
    });
    if (this.model === 'Session' && payload.uid) uidIndex.set(payload.uid, id);
    if (payload.userCode) userCodeIndex.set(payload.userCode, id);
    if (payload.grantId && this.model !== 'Grant') {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = uidIndex.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    revokeGrant(grantId);
  }
}

function revokeGrant(grantId) {
  for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
  grantIndex.delete(grantId);
  store.delete(`Grant:${grantId}`);
}

function stored(model) {
  const out = [];
  for (const key of store.keys()) {
    if (key.startsWith(`${model}:`)) {
      const payload = live(key);
      if (payload) out.push([key.slice(model.length + 1), payload]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Outgoing requests (back-channel logout): no SSRF block for loopback, optional TLS material.

let outgoingDispatcher;
if (args['backchannel-ca'] || args['backchannel-cert']) {
  // Node's fetch is undici; its Agent class is not exported by Node, but the global dispatcher
  // is one. Touching `Response` makes Node load undici and install that dispatcher.
  void Response;
  const global = globalThis[Symbol.for('undici.globalDispatcher.1')];
  const Agent = global?.constructor;
  if (!Agent) throw new Error('cannot find undici Agent for back-channel TLS options');
  const connect = {};
  if (args['backchannel-ca']) connect.ca = fs.readFileSync(args['backchannel-ca']);
  if (args['backchannel-cert']) connect.cert = fs.readFileSync(args['backchannel-cert']);
  if (args['backchannel-key']) connect.key = fs.readFileSync(args['backchannel-key']);
  outgoingDispatcher = new Agent({ connect });
}

function outgoingFetch(url, options) {
  // oidc-provider passes a dispatcher that destroys sockets to special-use addresses (127/8
  // among them). The tests' relying party is on loopback, so drop it.
  const { dispatcher: _ssrfGuard, ...rest } = options;
  if (outgoingDispatcher) rest.dispatcher = outgoingDispatcher;
  return globalThis.fetch(url, rest);
}

// ---------------------------------------------------------------------------------------------
// Plain HTML pages: nothing loaded from anywhere.

function esc(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, clientId, message) {
  return page('Sign in', `${message ? `<p id="error" role="alert">${esc(message)}</p>\n` : ''}<p>Sign in to continue to ${esc(clientId)}.</p>
<form id="login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>Username <input id="username" type="text" name="login" required autofocus></label><br>
<label>Password <input id="password" type="password" name="password" required></label><br>
<button id="submit" type="submit">Sign in</button>
</form>
<p><a id="abort" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, clientId, scopes) {
  return page('Authorize', `<p>${esc(clientId)} asks for: ${esc(scopes.join(' '))}</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
<button id="submit" type="submit">Continue</button>
</form>
<p><a id="abort" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

// ---------------------------------------------------------------------------------------------
// Keys (fresh per run)

function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}` };
}

const jwks = {
  keys: [
    signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
    signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
  ],
};

// ---------------------------------------------------------------------------------------------
// Grants: the first-party client never sees a consent prompt.

const OIDC_SCOPES = ['openid', 'email', 'profile', 'offline_access'];

function grantRequested(ctx, grant) {
  const { oidc } = ctx;
  const scopes = [...(oidc.requestParamScopes ?? [])];
  const openidScopes = scopes.filter((s) => OIDC_SCOPES.includes(s));
  if (openidScopes.length) grant.addOIDCScope(openidScopes.join(' '));
  const claims = [...(oidc.requestParamClaims ?? [])];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, rs] of Object.entries(oidc.resourceServers ?? {})) {
    const allowed = new Set((rs.scope ?? '').split(' ').filter(Boolean));
    const wanted = scopes.filter((s) => allowed.has(s));
    if (wanted.length) grant.addResourceScope(indicator, wanted.join(' '));
  }
}

// A browser that still has a provider session for a user who has since been disabled: the
// provider finds no account for the session, but its default login prompt only asks "is there a
// session?" and goes on to the consent checks, which fail without an account (500). Ask for a
// login instead; the login form then refuses the disabled user.
function interactionPolicyWithDisabledAccounts() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check(
    'account_unavailable',
    'the signed-in account is disabled or no longer exists',
    'login_required',
    (ctx) => (ctx.oidc.session.accountId && !ctx.oidc.account
      ? interactionPolicy.Check.REQUEST_PROMPT
      : interactionPolicy.Check.NO_NEED_TO_PROMPT),
  ));
  return policy;
}

async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  }
  grantRequested(ctx, grant);
  await grant.save();
  return grant;
}

// ---------------------------------------------------------------------------------------------
// The provider

// Listen first so that the issuer carries the real port when --port 0; requests are handled
// once the provider exists (nothing can know the port before the ready line anyway).
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number.parseInt(args.port, 10), host, resolve);
});
const { port } = server.address();

const issuer = `http://${host}:${port}`;

const vigilClient = {
  client_id: args['client-id'],
  client_secret: args['client-secret'],
  client_name: 'Vigil',
  redirect_uris: args['redirect-uri'],
  post_logout_redirect_uris: args['post-logout-redirect-uri'],
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: 'openid email profile offline_access',
};
if (args['backchannel-logout-uri']) {
  vigilClient.backchannel_logout_uri = args['backchannel-logout-uri'];
  vigilClient.backchannel_logout_session_required = true;
}

const serviceClient = {
  client_id: args['service-client-id'],
  client_secret: args['service-client-secret'],
  client_name: 'Service',
  redirect_uris: [],
  response_types: [],
  grant_types: ['client_credentials'],
  token_endpoint_auth_method: 'client_secret_basic',
  // No `scope` here: client metadata may only list the provider's OpenID scopes; the resource
  // server's scopes (--resource-scope) bound what a client-credentials token can carry.
};

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients: [vigilClient, serviceClient],
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  fetch: outgoingFetch,
  interactions: {
    policy: interactionPolicyWithDisabledAccounts(),
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  async findAccount(_ctx, id) {
    // Disabled or unknown users have no account: logins are refused and so are refresh-token
    // grants ("invalid_grant: refresh token invalid (referenced account not found)").
    if (!activeUser(id)) return undefined;
    return {
      accountId: id,
      async claims() {
        const user = activeUser(id);
        return user ? { sub: id, ...structuredClone(user.claims) } : { sub: id };
      },
    };
  },

  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    sid: null,
    openid: ['sub', 'acr', 'amr', 'auth_time', 'groups', 'risk'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  acrValues: ['urn:mfa', 'urn:pwd'],
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  scopes: OIDC_SCOPES,

  pkce: { required: () => true },

  async issueRefreshToken(_ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('openid');
  },
  rotateRefreshToken: args['rotate-refresh-tokens'],

  loadExistingGrant,

  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    ClientCredentials: accessTokenTtl,
    IdToken: accessTokenTtl,
    Interaction: 600,
    Grant: 86400,
    Session: 86400,
    RefreshToken: 86400,
  },

  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.type = 'html';
        ctx.body = page('Sign out', `${form}
<button id="logout" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="stay" type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
      },
    },
    resourceIndicators: {
      enabled: true,
      async defaultResource(_ctx, client, oneOf) {
        if (oneOf) return oneOf;
        return client.clientId === serviceClient.client_id ? resource : undefined;
      },
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(_ctx, indicator) {
        if (indicator !== resource) throw new errors.InvalidTarget();
        return {
          scope: resourceScope,
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: accessTokenTtl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },

  async renderError(ctx, out) {
    ctx.type = 'html';
    const rows = Object.entries(out)
      .map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span class="${esc(k)}">${esc(v)}</span></p>`)
      .join('\n');
    ctx.body = page('Error', rows);
  },
});

provider.on('server_error', (_ctx, err) => log('server_error', err?.stack ?? err));
provider.on('backchannel.error', (_ctx, err, client, accountId) => log('backchannel.error', client.clientId, accountId, err?.message));
provider.on('backchannel.success', (_ctx, client, accountId) => log('backchannel.success', client.clientId, accountId));

// ---------------------------------------------------------------------------------------------
// Interactions (login and, should it ever be asked for, consent)

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

const json = (res, status, value) => send(res, status, `${JSON.stringify(value)}\n`, 'application/json');

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, page('Error', `<p class="error">${esc(err.message)}</p>`));
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p class="error">interaction mismatch</p>'));
    return;
  }
  const { prompt, params } = details;

  if (action === undefined && req.method === 'GET') {
    if (prompt.name === 'login') {
      send(res, 200, loginPage(uid, params.client_id));
    } else {
      send(res, 200, consentPage(uid, params.client_id, String(params.scope ?? '').split(' ')));
    }
    return;
  }

  if (action === 'abort' && req.method === 'GET') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (action === 'login' && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') ?? '';
    const user = users.get(login);
    if (!user || !crypto.timingSafeEqual(
      crypto.createHash('sha256').update(form.get('password') ?? '').digest(),
      crypto.createHash('sha256').update(user.password).digest(),
    )) {
      send(res, 401, loginPage(uid, params.client_id, 'Invalid username or password.'));
      return;
    }
    if (user.disabled) {
      send(res, 403, loginPage(uid, params.client_id, 'This account is disabled.'));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: login, acr: user.acr, amr: [...user.amr], remember: true },
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (action === 'confirm' && req.method === 'POST') {
    await readBody(req);
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  send(res, 405, page('Error', '<p class="error">method not allowed</p>'));
}

// ---------------------------------------------------------------------------------------------
// Admin hook

async function revokeUser(id) {
  const result = { sessions: 0, grants: 0, backchannel: [] };
  const grantIds = new Set();
  const notices = [];

  for (const [sessionId, session] of stored('Session')) {
    if (session.accountId !== id) continue;
    for (const [clientId, authorization] of Object.entries(session.authorizations ?? {})) {
      if (authorization.grantId) grantIds.add(authorization.grantId);
      notices.push({ clientId, sid: authorization.sid });
    }
    store.delete(`Session:${sessionId}`);
    if (session.uid) uidIndex.delete(session.uid);
    result.sessions += 1;
  }
  for (const [grantId, grant] of stored('Grant')) {
    if (grant.accountId === id) grantIds.add(grantId);
  }
  for (const grantId of grantIds) {
    revokeGrant(grantId);
    result.grants += 1;
  }

  // Back-channel logout, one logout token per session and client, as an RP-initiated logout
  // would send.
  for (const { clientId, sid } of notices) {
    const client = await provider.Client.find(clientId);
    if (!client?.backchannelLogoutUri) continue;
    try {
      await client.backchannelLogout(id, sid);
      result.backchannel.push({ client_id: clientId, sid, ok: true });
      log('backchannel.success', clientId, id);
    } catch (err) {
      result.backchannel.push({ client_id: clientId, sid, ok: false, error: err.message, cause: err.cause?.message });
      log('backchannel.error', clientId, id, err.message, err.cause?.message ?? '');
    }
  }
  return result;
}

// Faults put on provider paths by the admin hook, to test how Vigil copes with a provider that
// hangs or drops connections: path -> 'hang' | 'reset'. Hung requests are held here, never
// answered, until the fault is lifted (then their sockets are destroyed).
const faults = new Map();
const held = new Set();

function applyFault(req, res, path) {
  const mode = faults.get(path);
  if (mode === 'hang') {
    held.add(res);
    res.on('close', () => held.delete(res));
    req.resume();
    return true;
  }
  if (mode === 'reset') {
    req.socket.destroy();
    return true;
  }
  return false;
}

async function admin(req, res, path) {
  if (path === '/__admin/fault' && req.method === 'POST') {
    let change;
    try {
      change = JSON.parse((await readBody(req)) || '{}');
    } catch (err) {
      json(res, 400, { error: `bad JSON: ${err.message}` });
      return;
    }
    if (typeof change.path !== 'string' || !change.path.startsWith('/')) {
      json(res, 400, { error: 'path must be an absolute path' });
      return;
    }
    if (change.mode === 'hang' || change.mode === 'reset') {
      faults.set(change.path, change.mode);
    } else if (change.mode === null || change.mode === undefined) {
      faults.delete(change.path);
      for (const r of held) r.destroy();
      held.clear();
    } else {
      json(res, 400, { error: 'mode must be "hang", "reset" or null' });
      return;
    }
    log('fault', change.path, String(change.mode ?? 'off'));
    json(res, 200, { ok: true, faults: Object.fromEntries(faults) });
    return;
  }
  if (path === '/__admin/health' && req.method === 'GET') {
    json(res, 200, { ok: true, issuer });
    return;
  }
  if (path === '/__admin/shutdown' && req.method === 'POST') {
    json(res, 200, { ok: true });
    setImmediate(() => process.exit(0));
    return;
  }
  const m = /^\/__admin\/users\/([^/]+)(\/revoke)?$/.exec(path);
  if (m) {
    const id = decodeURIComponent(m[1]);
    const user = users.get(id);
    if (!user) {
      json(res, 404, { error: 'no such user', user: id });
      return;
    }
    if (m[2] && req.method === 'POST') {
      json(res, 200, { ok: true, user: id, ...(await revokeUser(id)) });
      return;
    }
    if (!m[2] && req.method === 'GET') {
      json(res, 200, { user: id, ...user, password: undefined });
      return;
    }
    if (!m[2] && req.method === 'POST') {
      let change;
      try {
        change = JSON.parse((await readBody(req)) || '{}');
      } catch (err) {
        json(res, 400, { error: `bad JSON: ${err.message}` });
        return;
      }
      if (typeof change.disabled === 'boolean') user.disabled = change.disabled;
      if (change.claims && typeof change.claims === 'object') {
        for (const [k, v] of Object.entries(change.claims)) {
          if (k === 'sub') continue;
          if (v === null) delete user.claims[k];
          else user.claims[k] = v;
        }
      }
      if (Array.isArray(change.amr)) user.amr = change.amr.map(String);
      if (typeof change.acr === 'string') user.acr = change.acr;
      if (typeof change.password === 'string') user.password = change.password;
      json(res, 200, { ok: true, user: id, ...user, password: undefined });
      return;
    }
  }
  json(res, 404, { error: 'not found' });
}

// ---------------------------------------------------------------------------------------------
// Server

const oidc = provider.callback();

server.on('request', async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    if (path.startsWith('/__admin/')) {
      await admin(req, res, path);
      return;
    }
    if (applyFault(req, res, path)) return;
    const m = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/.exec(path);
    if (m) {
      await interaction(req, res, m[1], m[2]);
      return;
    }
    oidc(req, res);
  } catch (err) {
    log('error', err?.stack ?? err);
    if (!res.headersSent) send(res, 500, page('Error', `<p class="error">${esc(err.message)}</p>`));
    else res.destroy();
  }
});

process.stdout.write(`${JSON.stringify({
  issuer,
  port,
  client_id: vigilClient.client_id,
  service_client_id: serviceClient.client_id,
  service_client_secret: serviceClient.client_secret,
  resource,
})}\n`);

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
if (args['exit-with-stdin']) {
  // The harness holds our stdin: when it goes away (the test process died), so do we.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
