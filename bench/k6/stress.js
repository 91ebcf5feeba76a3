// Stress: ramp virtual users up in steps until the gateway breaks (errors
// or latency past the budget), to find the breaking point of a read route
// and an authenticated one. Not a pass/fail test of the gateway: the run
// aborts once the thresholds are crossed, and the summary says at how many
// users that was (bench/load.sh prints requests/s, p99 and errors).
//
//   k6 run bench/k6/stress.js
//   MAX_VUS=2000 STEP=30s k6 run bench/k6/stress.js
//
// Environment: BASE_URL, HOST, SPREAD (lib.js); MAX_VUS (default 400), STEP
// (duration of each of the 5 steps, default 20s), P99_MS (default 250).
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, json, params } from './lib.js';

const MAX = parseInt(__ENV.MAX_VUS || '400', 10);
const STEP = __ENV.STEP || '20s';
const P99 = parseInt(__ENV.P99_MS || '250', 10);

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: [0.1, 0.25, 0.5, 0.75, 1].map((f) => ({ duration: STEP, target: Math.max(1, Math.round(MAX * f)) })),
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    http_req_failed: [{ threshold: 'rate<0.05', abortOnFail: true, delayAbortEval: '10s' }],
    http_req_duration: [{ threshold: `p(99)<${P99}`, abortOnFail: true, delayAbortEval: '10s' }],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

// One account for the authenticated route (registration hashes a password:
// not what a stress test of the gateway should measure).
export function setup() {
  const email = `k6-stress-${Date.now()}@example.com`;
  const password = 'correct horse battery staple';
  http.post(`${BASE_URL}/api/v1/auth/register`, JSON.stringify({ email, password, name: 'k6' }), json());
  const r = http.post(`${BASE_URL}/api/v1/auth/login`, JSON.stringify({ email, password }), json());
  return { token: r.status === 200 ? r.json('access_token') : '' };
}

export default function (data) {
  const jwks = http.get(`${BASE_URL}/.well-known/jwks.json`, params({ tags: { route: 'jwks' } }));
  check(jwks, { 'jwks 200': (x) => x.status === 200 });
  if (data.token) {
    const me = http.get(
      `${BASE_URL}/api/v1/auth/me`,
      params({ headers: { Authorization: `Bearer ${data.token}` }, tags: { route: 'me' } }),
    );
    check(me, { 'me 200': (x) => x.status === 200 });
  }
}
