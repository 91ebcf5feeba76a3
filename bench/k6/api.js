// The API flow of a user, through the gateway: register → login → me →
// refresh → logout, with a check on every step.
//
//   k6 run bench/k6/api.js                           # against ./dev.sh
//   BASE_URL=https://galion.app HOST=galion.app SPREAD=0 VUS=5 DURATION=1m k6 run bench/k6/api.js
//
// Environment: BASE_URL (default http://127.0.0.1:8080), HOST, SPREAD (lib.js),
// VUS (default 5), DURATION (default 30s), P99_MS (default 2000: registration
// and login hash passwords with Argon2id on purpose).
//
// Fails (non-zero exit) when a check fails, more than 1% of requests fail, or
// the p(99) budget is exceeded. ./test.sh runs it for a few seconds against a
// test stack (tests/tests/load.rs) and asserts that every check passed.
import http from 'k6/http';
import { check, group } from 'k6';
import exec from 'k6/execution';
import { BASE_URL, json, params } from './lib.js';

const P99 = parseInt(__ENV.P99_MS || '2000', 10);

export const options = {
  vus: parseInt(__ENV.VUS || '5', 10),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99}`],
    'http_req_duration{step:me}': [`p(99)<${P99}`],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

const PASSWORD = 'correct horse battery staple';

export default function () {
  const email = `k6-${exec.vu.idInTest}-${exec.vu.iterationInScenario}-${Date.now()}@example.com`;
  let tokens;
  group('register', () => {
    const r = http.post(
      `${BASE_URL}/api/v1/auth/register`,
      JSON.stringify({ email, password: PASSWORD, name: 'k6' }),
      json({ tags: { step: 'register' } }),
    );
    check(r, {
      'register 201': (x) => x.status === 201,
      'register returns no hash': (x) => !x.body.includes('argon2'),
    });
  });
  group('login', () => {
    const r = http.post(
      `${BASE_URL}/api/v1/auth/login`,
      JSON.stringify({ email, password: PASSWORD }),
      json({ tags: { step: 'login' } }),
    );
    check(r, {
      'login 200': (x) => x.status === 200,
      'login gives tokens': (x) => x.status === 200 && !!x.json('access_token') && !!x.json('refresh_token'),
    });
    if (r.status === 200) tokens = r.json();
  });
  if (!tokens) return;
  group('me', () => {
    const r = http.get(
      `${BASE_URL}/api/v1/auth/me`,
      params({ headers: { Authorization: `Bearer ${tokens.access_token}` }, tags: { step: 'me' } }),
    );
    check(r, {
      'me 200': (x) => x.status === 200,
      'me is the user': (x) => x.status === 200 && x.json('email') === email,
    });
  });
  group('refresh', () => {
    const r = http.post(
      `${BASE_URL}/api/v1/auth/refresh`,
      JSON.stringify({ refresh_token: tokens.refresh_token }),
      json({ tags: { step: 'refresh' } }),
    );
    check(r, {
      'refresh 200': (x) => x.status === 200,
      'refresh rotates the token': (x) => x.status === 200 && x.json('refresh_token') !== tokens.refresh_token,
    });
    if (r.status === 200) tokens = r.json();
  });
  group('logout', () => {
    const r = http.post(
      `${BASE_URL}/api/v1/auth/logout`,
      JSON.stringify({ refresh_token: tokens.refresh_token }),
      json({ headers: { Authorization: `Bearer ${tokens.access_token}` }, tags: { step: 'logout' } }),
    );
    check(r, { 'logout 204': (x) => x.status === 204 });
  });
}
