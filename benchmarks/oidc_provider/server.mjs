// node-oidc-provider as the peer in flask-obdcr's HTTP benchmarks.
//
//   node benchmarks/oidc_provider/server.mjs --port 3000 [--host 127.0.0.1] [--ready-file F]
//
// Plain HTTP on loopback, one process, oidc-provider's own in-memory adapter (its default),
// and only what the benchmarks exercise:
//
// * POST /reg: dynamic client registration (RFC 7591) with JSON metadata, no initial access
//   token (features.registration { enabled: true, initialAccessToken: false });
// * POST /token: client_credentials (features.clientCredentials), clients authenticating
//   with private_key_jwt (PS256 among the accepted algorithms, jti replay detection on).
//
// The provider's own signing keys are generated at start-up (RSA 2048 and P-256), so no
// "development-only keys" are used. NODE_ENV=production is recommended (the benchmark sets it).
// Once listening it prints "listening <url>" on stdout (and writes <url> to --ready-file).
// It stops on SIGTERM/SIGINT, or by itself after --max-seconds (default 3600), so a crashed
// benchmark never leaves it running.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import * as oidc from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '3000' },
    host: { type: 'string', default: '127.0.0.1' },
    'ready-file': { type: 'string' },
    'max-seconds': { type: 'string', default: '3600' },
  },
});

function privateJwk(type, options, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig' };
}

const port = Number(args.port);
const issuer = `http://${args.host}:${port}`;

const provider = new oidc.Provider(issuer, {
  jwks: {
    keys: [
      privateJwk('rsa', { modulusLength: 2048 }, 'rsa-1'),
      privateJwk('ec', { namedCurve: 'P-256' }, 'ec-1'),
    ],
  },
  features: {
    registration: { enabled: true, initialAccessToken: false },
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
  },
  scopes: ['openid', 'offline_access', 'accounts', 'payments'],
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['PS256', 'ES256'],
    idTokenSigningAlgValues: ['PS256', 'ES256'],
    requestObjectSigningAlgValues: ['PS256', 'ES256'],
  },
  responseTypes: ['code id_token', 'code'],
  // the same lifetime as the example bank's tokens
  ttl: { ClientCredentials: 3600 },
  // no cookies are set on these endpoints, but the provider wants keys for them
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

// errors are expected in a benchmark only when it is broken: say so, once per kind
const seen = new Set();
for (const event of ['registration_create.error', 'grant.error', 'server_error']) {
  provider.on(event, (ctx, error) => {
    const key = `${event}:${error && error.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      console.error(`${event}: ${error && error.message}${error && error.error_description ? ` (${error.error_description})` : ''}`);
    }
  });
}

const server = provider.listen(port, args.host, () => {
  console.log(`listening ${issuer}`);
  if (args['ready-file']) {
    writeFileSync(args['ready-file'], `${issuer}\n`);
  }
});

function stop() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setTimeout(stop, Number(args['max-seconds']) * 1000).unref();
