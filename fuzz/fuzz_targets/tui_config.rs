//! The dashboard's config file: arbitrary TOML through `TuiConfig::from_toml`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbee_proto::config::TuiConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match TuiConfig::from_toml("fuzz.toml".as_ref(), text) {
        Ok(cfg) => {
            // The dashboard writes its config back with `to_toml` (`nodes add`): that must load again.
            let again = cfg.to_toml();
            let back = TuiConfig::from_toml("again.toml".as_ref(), &again).expect("written config loads");
            assert_eq!(back, cfg);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "{msg}");
        }
    }
});
