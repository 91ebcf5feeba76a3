// k6 smoke test for a running galion-gateway (operators' tool; not run by CI).
//
//   k6 run bench/k6/smoke.js
//   BASE_URL=https://galion.app PATHS=/health,/.well-known/jwks.json VUS=20 DURATION=1m k6 run bench/k6/smoke.js
//
// Environment:
//   BASE_URL   gateway address (default http://127.0.0.1:8080)
//   PATHS      comma-separated GET paths, picked round-robin (default /)
//   HOST       optional Host header (to hit a named site through a bare IP)
//   SPREAD     1 (default): each VU and iteration claims its own client address
//              through X-Forwarded-For, which ./dev.sh's gateway believes from
//              127.0.0.1 (one load generator is otherwise one client for the
//              per-IP rate limit: 429s); 0 against production, with the
//              generator in `rate_limits.exempt` (lib.js)
//   VUS        virtual users (default 10); DURATION (default 30s)
//   P99_MS     p(99) latency budget in ms (default 50)
//   STATUS     comma-separated statuses that count as success (default 200,204,301,302,304)
//
// Fails (non-zero exit) when more than 1% of requests fail, a check fails or the
// p(99) budget is exceeded. Every response must carry X-Request-Id (the gateway
// sets it on every answer, proxied or local).
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, params } from './lib.js';

const PATHS = (__ENV.PATHS || '/').split(',').map((p) => p.trim()).filter((p) => p.length > 0);
const OK = (__ENV.STATUS || '200,204,301,302,304').split(',').map((s) => parseInt(s, 10));
const P99 = parseInt(__ENV.P99_MS || '50', 10);

http.setResponseCallback(http.expectedStatuses(...OK));

export const options = {
  vus: parseInt(__ENV.VUS || '10', 10),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99}`],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};


export default function () {
  const path = PATHS[(__VU + __ITER) % PATHS.length];
  const res = http.get(`${BASE_URL}${path}`, params({ tags: { path } }));
  check(res, {
    'expected status': (r) => OK.includes(r.status),
    'has X-Request-Id': (r) => (r.headers['X-Request-Id'] || '').length > 0,
  });
}
