// Spike: a quiet baseline, a sudden jump to many users (a launch, a link on
// a busy site), then back: requests must keep succeeding through the jump
// and latency must come back down after it.
//
//   k6 run bench/k6/spike.js
//   SPIKE_VUS=1000 k6 run bench/k6/spike.js
//
// Environment: BASE_URL, HOST, SPREAD (lib.js); BASE_VUS (default 5),
// SPIKE_VUS (default 300), HOLD (default 30s), P99_MS (default 500).
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, params } from './lib.js';

const BASE = parseInt(__ENV.BASE_VUS || '5', 10);
const SPIKE = parseInt(__ENV.SPIKE_VUS || '300', 10);
const HOLD = __ENV.HOLD || '30s';
const P99 = parseInt(__ENV.P99_MS || '500', 10);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: BASE,
      stages: [
        { duration: '10s', target: BASE },
        { duration: '5s', target: SPIKE },
        { duration: HOLD, target: SPIKE },
        { duration: '5s', target: BASE },
        { duration: '10s', target: BASE },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99}`],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const r = http.get(`${BASE_URL}/.well-known/jwks.json`, params());
  check(r, { 'jwks 200': (x) => x.status === 200, 'has a request id': (x) => !!x.headers['X-Request-Id'] });
}
