// Shared by the k6 scenarios: base URL, Host header, and the client address
// each request claims.
//
// Against ./dev.sh the gateway trusts 127.0.0.1 as a proxy (conf/dev.yaml's
// trusted_proxies), so X-Forwarded-For picks the client: SPREAD=1 (default)
// gives every virtual user and iteration its own address, and the per-client
// rate limits and jails see many clients, as in production. Against a
// production gateway, which does not trust the load generator, set SPREAD=0
// and list the generator in `rate_limits.exempt` (README: load testing);
// bans and jails still apply to it.
import exec from 'k6/execution';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const HOST = __ENV.HOST || '';
const SPREAD = (__ENV.SPREAD || '1') !== '0';

// 10.x.y.z from the VU and iteration numbers: distinct for 16.7M requests.
function clientAddress() {
  const n = (exec.vu.idInTest * 100003 + exec.vu.iterationInScenario) % 16777216;
  return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
}

export function params(extra) {
  const headers = Object.assign({}, (extra && extra.headers) || {});
  if (HOST) headers.Host = HOST;
  if (SPREAD) headers['X-Forwarded-For'] = clientAddress();
  return Object.assign({ redirects: 0 }, extra || {}, { headers });
}

export function json(extra) {
  const p = params(extra);
  p.headers['Content-Type'] = 'application/json';
  return p;
}
