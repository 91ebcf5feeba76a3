//! Any bytes as the gateway's YAML file: loading must end in a config or in
//! located errors, never a panic; every error must format.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match galion_gateway::config::load_str(text, Path::new("fuzz.yaml")) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = format!("{}: {}", w.path, w.message);
            }
        }
        Err(errors) => {
            for e in &errors.0 {
                let _ = e.to_string();
            }
        }
    }
});
