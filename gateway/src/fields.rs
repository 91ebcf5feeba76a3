//! A request's header fields as the pipeline reads them, whatever parsed
//! them: pingora's `HeaderMap` or the fast path's httparse slice. And the
//! header edits the pipeline decides ([`Edit`]), which each transport
//! renders on its own head type.
//!
//! At the bottom of the house: domain modules (auth, CORS, limits) read
//! requests through [`Fields`] and describe responses with [`Edit`]s, so
//! neither they nor the pipeline above them know which transport runs.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Read access to a request's header fields; `name` is lowercase.
pub trait Fields {
    /// Every value of `name`, in the order the client sent them.
    fn all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]>;

    /// The first value of `name`.
    fn get<'s>(&'s self, name: &'s str) -> Option<&'s [u8]> {
        self.all(name).next()
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl Fields for HeaderMap {
    fn all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]> {
        let values = match well_known(name) {
            Some(n) => self.get_all(n),
            None => self.get_all(name),
        };
        values.iter().map(HeaderValue::as_bytes)
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The names the pipeline reads on every request, as ready `HeaderName`s: a
/// `HeaderMap` lookup by `&str` first parses and lower-cases the name, which
/// cost more than the lookup itself, several times per request.
fn well_known(name: &str) -> Option<&'static HeaderName> {
    use http::header;
    Some(match name {
        "host" => &header::HOST,
        "content-length" => &header::CONTENT_LENGTH,
        "transfer-encoding" => &header::TRANSFER_ENCODING,
        "authorization" => &header::AUTHORIZATION,
        "cookie" => &header::COOKIE,
        "origin" => &header::ORIGIN,
        "access-control-request-method" => &header::ACCESS_CONTROL_REQUEST_METHOD,
        "access-control-request-headers" => &header::ACCESS_CONTROL_REQUEST_HEADERS,
        "range" => &header::RANGE,
        "if-range" => &header::IF_RANGE,
        "if-match" => &header::IF_MATCH,
        "if-none-match" => &header::IF_NONE_MATCH,
        "if-modified-since" => &header::IF_MODIFIED_SINCE,
        "if-unmodified-since" => &header::IF_UNMODIFIED_SINCE,
        "x-request-id" => &X_REQUEST_ID,
        "x-forwarded-for" => &X_FORWARDED_FOR,
        "x-forwarded-proto" => &X_FORWARDED_PROTO,
        "x-forwarded-host" => &X_FORWARDED_HOST,
        "cf-connecting-ip" => &CF_CONNECTING_IP,
        "true-client-ip" => &TRUE_CLIENT_IP,
        "x-api-key" => &X_API_KEY,
        "user-agent" => &header::USER_AGENT,
        "referer" => &header::REFERER,
        _ => return None,
    })
}

/// The fast path's parsed head.
pub struct Parsed<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl Fields for Parsed<'_, '_> {
    fn all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// One change to a head's fields, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Replaces every value of the name.
    Set(HeaderName, HeaderValue),
    /// Sets the name only if the head has none (an upstream's own value wins).
    Default(HeaderName, HeaderValue),
    /// Adds a value after the existing ones.
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl Edit {
    pub fn name(&self) -> &HeaderName {
        match self {
            Edit::Set(n, _) | Edit::Default(n, _) | Edit::Append(n, _) | Edit::Remove(n) => n,
        }
    }

    /// Whether every one of `edits` adds a field and none replaces, removes or
    /// yields to another: then every field of the head is kept and every edit
    /// written, in order ([`resolve`] would say so after comparing each name).
    pub fn only_adds(edits: &[Edit]) -> bool {
        edits.iter().all(|e| matches!(e, Edit::Append(..)))
    }
}

/// The edits of one head; most fit inline.
pub type Edits = smallvec::SmallVec<[Edit; 12]>;

/// Applies `edits` in order to a header map (pingora's transport), leaving
/// `edits` empty: names and values move into the map, not cloned and dropped,
/// and the inline list is not copied on the way (it is most of a kilobyte).
pub fn apply(map: &mut HeaderMap, edits: &mut Edits) -> pingora::Result<()> {
    for e in edits.drain(..) {
        match e {
            Edit::Set(n, v) => crate::head::set(map, n, v)?,
            Edit::Default(n, v) => crate::head::set_default(map, n, v)?,
            Edit::Append(n, v) => crate::head::add(map, n, v)?,
            Edit::Remove(n) => {
                map.remove(&n);
            }
        }
    }
    Ok(())
}

/// Which fields of a head survive `edits` and which edits are written
/// (for a transport that writes the head as bytes): `keep[i]` for the head's
/// own field `i` (named `names[i]`), `live[k]` for `edits[k]`. The same
/// outcome as [`apply`] on a map holding those fields. `keep` and `live` are
/// as long as `names` and `edits`.
pub fn resolve<N: AsRef<[u8]>>(names: &[N], edits: &[Edit], keep: &mut [bool], live: &mut [bool]) {
    keep.fill(true);
    live.fill(false);
    // The lengths the head's names and the live edits' names have (bit
    // `len % 64`): a name of another length matches none of them, whatever
    // its case, and most edits name a field the head does not have (security
    // headers, CORS, RateLimit), so most scans below are skipped. A bit stays
    // set when its field is dropped: a superset only costs a scan.
    let len_bit = |n: &[u8]| 1u64 << (n.len() % 64);
    let in_head = names.iter().fold(0, |m, n| m | len_bit(n.as_ref()));
    let mut in_edits = 0u64;
    for (k, e) in edits.iter().enumerate() {
        let n = e.name().as_str().as_bytes();
        let bit = len_bit(n);
        let drop_all = |keep: &mut [bool], live: &mut [bool]| {
            if in_head & bit != 0 {
                for (i, name) in names.iter().enumerate() {
                    if keep[i] && name.as_ref().eq_ignore_ascii_case(n) {
                        keep[i] = false;
                    }
                }
            }
            if in_edits & bit != 0 {
                for j in 0..k {
                    if live[j] && edits[j].name() == e.name() {
                        live[j] = false;
                    }
                }
            }
        };
        match e {
            Edit::Set(..) => {
                drop_all(keep, live);
                live[k] = true;
            }
            Edit::Remove(_) => drop_all(keep, live),
            Edit::Append(..) => live[k] = true,
            Edit::Default(..) => {
                let present = (in_head & bit != 0
                    && names
                        .iter()
                        .zip(keep.iter())
                        .any(|(name, &kept)| kept && name.as_ref().eq_ignore_ascii_case(n)))
                    || (in_edits & bit != 0
                        && (0..k).any(|j| live[j] && edits[j].name() == e.name()));
                live[k] = !present;
            }
        }
        if live[k] {
            in_edits |= bit;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }
    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    /// A well-known name is the very name asked for: a typo in the table
    /// would read another field.
    #[test]
    fn well_known_names_are_themselves() {
        for name in [
            "user-agent",
            "referer",
            "host",
            "content-length",
            "transfer-encoding",
            "authorization",
            "cookie",
            "origin",
            "access-control-request-method",
            "access-control-request-headers",
            "range",
            "if-range",
            "if-match",
            "if-none-match",
            "if-modified-since",
            "if-unmodified-since",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "cf-connecting-ip",
            "true-client-ip",
            "x-api-key",
        ] {
            assert_eq!(well_known(name).map(HeaderName::as_str), Some(name));
        }
        assert!(well_known("x-other").is_none());
        let mut map = HeaderMap::new();
        map.append("x-forwarded-for", v("1.1.1.1"));
        map.append("x-forwarded-for", v("2.2.2.2"));
        map.append("x-other", v("o"));
        let all: Vec<_> = map.all("x-forwarded-for").collect();
        assert_eq!(all, [&b"1.1.1.1"[..], b"2.2.2.2"]);
        assert_eq!(Fields::get(&map, "x-other"), Some(&b"o"[..]));
    }

    /// The fields a head of `own` has after `edits`, as the byte transport
    /// resolves them and as the map transport applies them (sorted).
    fn both_ways(own: &[(&str, &str)], edits: &[Edit]) -> [Vec<(String, String)>; 2] {
        let mut map = HeaderMap::new();
        for (k, val) in own {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(val).unwrap(),
            );
        }
        apply(&mut map, &mut edits.iter().cloned().collect()).unwrap();
        let names: Vec<&str> = own.iter().map(|(k, _)| *k).collect();
        let (mut keep, mut live) = (vec![true; names.len()], vec![false; edits.len()]);
        resolve(&names, edits, &mut keep, &mut live);
        let mut bytes: Vec<(String, String)> = own
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|((k, val), _)| (k.to_ascii_lowercase(), val.to_string()))
            .collect();
        for (e, l) in edits.iter().zip(&live) {
            if let (true, Edit::Set(k, val) | Edit::Default(k, val) | Edit::Append(k, val)) =
                (*l, e)
            {
                bytes.push((k.to_string(), val.to_str().unwrap().to_owned()));
            }
        }
        let mut from_map: Vec<(String, String)> = map
            .iter()
            .map(|(k, val)| (k.to_string(), val.to_str().unwrap().to_owned()))
            .collect();
        bytes.sort();
        from_map.sort();
        [bytes, from_map]
    }

    /// The byte transport's resolution gives the same fields as the map's.
    #[test]
    fn resolve_agrees_with_apply() {
        let own = [
            ("vary", "accept"),
            ("x-frame-options", "SAMEORIGIN"),
            ("x-a", "1"),
        ];
        let edits = [
            Edit::Default(n("x-frame-options"), v("DENY")),
            Edit::Default(n("x-content-type-options"), v("nosniff")),
            Edit::Append(n("vary"), v("Origin")),
            Edit::Set(n("x-a"), v("2")),
            Edit::Remove(n("x-b")),
            Edit::Append(n("x-b"), v("3")),
            Edit::Default(n("x-b"), v("4")),
            Edit::Set(n("x-c"), v("5")),
            Edit::Remove(n("x-c")),
        ];
        let [bytes, from_map] = both_ways(&own, &edits);
        assert_eq!(bytes, from_map);
    }

    proptest::proptest! {
        /// Any head and any edits: the same fields both ways. The names share
        /// lengths (`x-a`/`x-b`, `date`/`vary`, `x-frame-options`/
        /// `referrer-policy`) and differ in case, so the length filter in
        /// `resolve` is tried where it must scan and where it may skip.
        #[test]
        fn resolve_agrees_with_apply_on_any_head(
            own in proptest::collection::vec((0usize..8, 0usize..3), 0..10),
            edits in proptest::collection::vec((0usize..4, 0usize..8, 0usize..3), 0..12),
        ) {
            const NAMES: [&str; 8] = [
                "x-a", "X-B", "date", "Vary", "x-frame-options", "Referrer-Policy",
                "x-content-type-options", "x-request-id",
            ];
            const VALUES: [&str; 3] = ["1", "2", "3"];
            let own: Vec<(String, &str)> = own
                .into_iter()
                .map(|(k, val)| (NAMES[k].to_owned(), VALUES[val]))
                .collect();
            let own: Vec<(&str, &str)> = own.iter().map(|(k, val)| (k.as_str(), *val)).collect();
            let edits: Vec<Edit> = edits
                .into_iter()
                .map(|(kind, k, val)| {
                    let name = HeaderName::from_bytes(NAMES[k].as_bytes()).unwrap();
                    let value = HeaderValue::from_static(VALUES[val]);
                    match kind {
                        0 => Edit::Set(name, value),
                        1 => Edit::Default(name, value),
                        2 => Edit::Append(name, value),
                        _ => Edit::Remove(name),
                    }
                })
                .collect();
            let [bytes, from_map] = both_ways(&own, &edits);
            proptest::prop_assert_eq!(bytes, from_map);
        }
    }
}
