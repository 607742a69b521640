//! Configuration text, as an operator (or anything else) could write it, must load or fail
//! with an error: never panic. Non-UTF-8 input is not text `Config::load` could return.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sni_user::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A relative path: certificate and key paths are resolved against its directory.
    for path in ["fuzz/sni.toml", "/etc/sni/sni.toml"] {
        if let Ok(config) = Config::parse(text, Path::new(path)) {
            // Parse validated it; validating again (as the CLI does after its overrides)
            // must agree, and every configured name must make a map key.
            assert!(config.validate().is_ok(), "{text:?}");
            let keys: usize = config.hosts.iter().map(|h| h.patterns().count()).sum();
            let names: usize = config.hosts.iter().map(|h| h.names.len()).sum();
            assert_eq!(keys, names, "a validated name with no key: {text:?}");
        }
    }
});
