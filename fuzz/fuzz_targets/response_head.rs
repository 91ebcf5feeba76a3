//! Any bytes as an upstream's response head on the fast path: parsed into the
//! client's head and a framing, refused as invalid, or partial — never a panic.
#![no_main]

use galion_gateway::config::SecurityHeaders;
use galion_gateway::fast::response::{parse, Decorations, Parsed};
use galion_gateway::fields::{Edit, Edits};
use http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, head)) = data.split_first() else {
        return;
    };
    let rid = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let security = SecurityHeaders {
        always: vec![
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("x-frame-options"),
                HeaderValue::from_static("DENY"),
            ),
        ],
        hsts: Some(HeaderValue::from_static("max-age=31536000")),
        override_upstream: first & 32 != 0,
    };
    // The first byte picks the edits.
    let mut edits = Edits::new();
    if first & 1 != 0 {
        edits.push(Edit::Set(HeaderName::from_static("x-request-id"), rid));
    }
    if first & 2 != 0 {
        galion_gateway::security_headers::edits(&security, first & 4 != 0, &mut edits);
    }
    if first & 64 != 0 {
        edits.push(Edit::Append(
            HeaderName::from_static("vary"),
            HeaderValue::from_static("Origin"),
        ));
        edits.push(Edit::Remove(HeaderName::from_static(
            "access-control-allow-origin",
        )));
    }
    let deco = Decorations {
        edits: &edits,
        keepalive: first & 8 != 0,
        head_request: first & 16 != 0,
    };
    let mut out = Vec::new();
    if let Parsed::Ready(_) = parse(head, &deco, &mut out) {
        assert!(
            out.starts_with(b"HTTP/1.1 "),
            "client head does not start with a status line"
        );
    }
});
