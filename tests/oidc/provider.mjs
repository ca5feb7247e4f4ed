// A real OpenID Connect provider (the npm package oidc-provider) for llmcloud's login tests.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG.json holds {"port": N, "clients": [...], "accounts": {"LOGIN": {"password": "...",
// "claims": {...}}}, "claimsInUserinfoOnly": false} and optionally the faults below. The
// provider listens on 127.0.0.1 only, shows its own plain login form at /interaction/UID, and
// grants consent by itself once an account has logged in.
//
// The ID-token tests configure faults through the provider's own settings or its
// post-middleware (provider.use). Every token is still issued and signed by oidc-provider.
//   "idTokenTtlSeconds": N        the IdToken TTL (oidc-provider's ttl.IdToken, default 3600)
//   "clockOffsetSeconds": N       the provider's clock runs N seconds ahead (negative: behind)
//   "discoveryIssuer": "URL"      the issuer that the discovery document names instead of the
//                                 real one; a path is taken relative to the provider's URL
//   "jwksWithoutSigningKey": true the JWKS contains other keys under the signing keys' kids
//   "idTokenAudienceClient": "ID" the token response carries an ID token that the provider
//                                 issued to that other registered client
//   "withoutIdToken": true        the token response carries no ID token
//   "userinfoSubject": "SUB"      the userinfo response names this `sub` instead of the real one
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;

// The accounts are read again on each use, so that a test can change someone's claims (such as
// their groups) between two log-ins by rewriting CONFIG.json.
function readAccounts() {
  return JSON.parse(fs.readFileSync(process.argv[2], 'utf8')).accounts;
}

if (config.clockOffsetSeconds) {
  // oidc-provider reads the time through Date.now (its epochTime helper).
  const realNow = Date.now;
  Date.now = () => realNow() + config.clockOffsetSeconds * 1000;
}

const ttl = config.idTokenTtlSeconds ? { ttl: { IdToken: config.idTokenTtlSeconds } } : {};

const provider = new Provider(issuer, {
  clients: config.clients,
  findAccount: async (ctx, id) => {
    if (!readAccounts()[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...readAccounts()[id].claims }) };
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
  ...ttl,
});

// Post-middleware: it runs after oidc-provider has built a route's response.
provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'discovery' && config.discoveryIssuer) {
    ctx.body.issuer = new URL(config.discoveryIssuer, issuer).href;
  } else if (route === 'jwks' && config.jwksWithoutSigningKey) {
    ctx.body.keys = ctx.body.keys.map(substituteKey);
  } else if (route === 'token' && config.idTokenAudienceClient && ctx.body?.id_token) {
    ctx.body.id_token = await reissueIdToken(ctx, ctx.body.id_token, config.idTokenAudienceClient);
  } else if (route === 'token' && config.withoutIdToken && ctx.body) {
    delete ctx.body.id_token;
  } else if (route === 'userinfo' && config.userinfoSubject && ctx.body) {
    ctx.body.sub = config.userinfoSubject;
  }
});

// A public RSA key that signed nothing, published under the kid of a real signing key.
function substituteKey(key) {
  const { publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...publicKey.export({ format: 'jwk' }), kid: key.kid, use: 'sig', alg: 'RS256' };
}

// Issue an ID token with the same claims to another registered client, so its `aud` differs.
async function reissueIdToken(ctx, idToken, clientId) {
  const client = await provider.Client.find(clientId);
  const payload = JSON.parse(Buffer.from(idToken.split('.')[1], 'base64url').toString('utf8'));
  const token = new provider.IdToken({ sub: payload.sub }, { ctx, client });
  token.scope = 'openid';
  const reserved = new Set(['aud', 'azp', 'exp', 'iat', 'iss', 'sub', 'at_hash', 'c_hash']);
  for (const [claim, value] of Object.entries(payload)) {
    if (!reserved.has(claim)) token.set(claim, value);
  }
  return token.issue({ use: 'idtoken' });
}

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
  const accounts = readAccounts();
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
