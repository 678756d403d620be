// A real OpenID Connect provider on loopback for fedhub's identity tests (panva/oidc-provider).
// Usage: node provider.mjs CONFIG.json  — CONFIG: {clients: [...], accounts: {sub: {claims}}}
// It listens on a free loopback port and prints one JSON line {"issuer": ...}; then it reads one
// JSON line from stdin, {"redirect_uris": [...]} for the clients (the hub's port is picked only
// after ours is bound, so the two can never collide), and starts answering.
// Logins go through oidc-provider's devInteractions (any account id, no password) — test only.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import readline from 'node:readline';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  console.log(JSON.stringify({ issuer }));
  const rl = readline.createInterface({ input: process.stdin });
  rl.once('line', (line) => start(issuer, JSON.parse(line).redirect_uris));
});

function start(issuer, redirectUris) {
  for (const client of config.clients) client.redirect_uris = redirectUris;
  const provider = new Provider(issuer, {
    clients: config.clients,
    // eduPerson entitlements travel as their own scope/claim, as at EGI Check-in
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
      eduperson_entitlement: ['eduperson_entitlement'],
    },
    scopes: ['openid', 'profile', 'email', 'eduperson_entitlement', 'offline_access'],
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => false },
    async findAccount(ctx, sub) {
      const claims = config.accounts[sub];
      if (!claims) return undefined;
      return { accountId: sub, async claims() { return { sub, ...claims }; } };
    },
  });
  provider.proxy = false;
  server.on('request', provider.callback());
  console.log(JSON.stringify({ ready: true }));
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));
