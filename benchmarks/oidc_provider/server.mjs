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
//   with private_key_jwt (PS256 among the accepted algorithms, jti replay detection on),
//   tls_client_auth or client_secret_basic;
// * mutual TLS behind a TLS-terminating proxy (features.mTLS, RFC 8705): the proxy (wrk, in
//   the benchmarks) passes the client certificate URL-escaped in X-SSL-Client-Cert, as
//   nginx's $ssl_client_escaped_cert and as the flask-obdcr bank reads it; the header is
//   honoured from loopback only (the proxy's address). tls_client_auth matches the
//   registered tls_client_auth_subject_dn; clients registered with
//   tls_client_certificate_bound_access_tokens get tokens bound to the certificate
//   (cnf x5t#S256), whatever their auth method;
// * POST /token/introspection (features.introspection): lets the benchmark check once, before
//   the load, that a token really is bound (its cnf); not used under load.
//
// The provider's own signing keys are generated at start-up (RSA 2048 and P-256), so no
// "development-only keys" are used. NODE_ENV=production is recommended (the benchmark sets it).
// Once listening it prints "listening <url>" on stdout (and writes <url> to --ready-file).
// It stops on SIGTERM/SIGINT, or by itself after --max-seconds (default 3600), so a crashed
// benchmark never leaves it running.

import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
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
// where the TLS-terminating proxy puts the client certificate (lower case: Koa's ctx.get)
const CERT_HEADER = 'x-ssl-client-cert';
const PROXIES = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);
// one parse per request: the provider asks for the certificate more than once (client
// authentication, then the token's binding)
const certificates = new WeakMap();

function certificateOf(ctx) {
  if (!certificates.has(ctx)) {
    const escaped = PROXIES.has(ctx.socket.remoteAddress) ? ctx.get(CERT_HEADER) : '';
    let pem;
    if (escaped) {
      try {
        pem = decodeURIComponent(escaped);
      } catch {
        pem = undefined; // a malformed escape: as if no certificate came
      }
    }
    certificates.set(ctx, { pem, x509: undefined });
  }
  return certificates.get(ctx);
}

// RFC 4514 order (most specific first), as flask-obdcr and the Directory write the DN;
// node prints the subject one attribute per line, least specific first
function subjectDn(ctx) {
  const entry = certificateOf(ctx);
  if (entry.x509 === undefined) {
    try {
      entry.x509 = new X509Certificate(entry.pem);
    } catch {
      entry.x509 = null; // not a certificate: it matches no subject
    }
  }
  return entry.x509 ? entry.x509.subject.split('\n').reverse().join(',') : undefined;
}
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
    introspection: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      // the PEM (oidc-provider hashes it for cnf x5t#S256), or undefined without one
      getCertificate: (ctx) => certificateOf(ctx).pem,
      // the proxy verified the chain against the transport CAs before passing the header (as
      // nginx's ssl_verify_client does); flask-obdcr checks the chain again itself
      certificateAuthorized: (ctx) => Boolean(certificateOf(ctx).pem),
      certificateSubjectMatches: (ctx, property, expected) => (
        property === 'tls_client_auth_subject_dn' && subjectDn(ctx) === expected
      ),
    },
  },
  scopes: ['openid', 'offline_access', 'accounts', 'payments'],
  clientAuthMethods: [
    'private_key_jwt', 'tls_client_auth', 'client_secret_basic', 'client_secret_post',
  ],
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
for (const event of [
  'registration_create.error', 'grant.error', 'introspection.error', 'server_error',
]) {
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
