// A real OpenID Connect provider (the npm package oidc-provider) for llmcloud's login tests.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG.json holds {"port": N, "clients": [...], "accounts": {"LOGIN": {"password": "...",
// "claims": {...}}}, "claimsInUserinfoOnly": false}. The provider listens on 127.0.0.1 only,
// shows its own plain login form at /interaction/UID, and grants consent by itself once an
// account has logged in.
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const accounts = config.accounts;

const provider = new Provider(issuer, {
  clients: config.clients,
  findAccount: async (ctx, id) => {
    if (!accounts[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...accounts[id].claims }) };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // By default the requested claims go into the ID token. "claimsInUserinfoOnly": true keeps
  // them in the userinfo response only, as oidc-provider's conformIdTokenClaims does.
  conformIdTokenClaims: Boolean(config.claimsInUserinfoOnly),
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['llmcloud-test-cookie-key'] },
});

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function sendLoginForm(res, uid, error, status = 200) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>Test provider log-in</title>
<h1>Test provider log-in</h1>
${error ? `<p id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Login <input name="login" id="login" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function grantConsent(req, res, details) {
  const { params, session, prompt, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const newGrantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId: newGrantId } });
}

async function interaction(req, res, isLoginPost) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name !== 'login') return grantConsent(req, res, details);
  if (!isLoginPost) return sendLoginForm(res, details.uid, '');
  const form = await readForm(req);
  const login = form.get('login') || '';
  if (!accounts[login] || accounts[login].password !== form.get('password')) {
    return sendLoginForm(res, details.uid, 'Invalid login or password', 401);
  }
  await provider.interactionFinished(req, res, { login: { accountId: login } }, {
    mergeWithLastSubmission: false,
  });
}

const handleProvider = provider.callback();
const server = http.createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  const match = path.match(/^\/interaction\/[^/]+(\/login)?$/);
  if (!match) return handleProvider(req, res);
  interaction(req, res, match[1] === '/login' && req.method === 'POST').catch((err) => {
    res.writeHead(400, { 'Content-Type': 'text/plain' });
    res.end(`interaction failed: ${err.message}`);
  });
});
server.listen(config.port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
