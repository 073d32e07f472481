//! `rbee-agent --config FILE`: arbitrary TOML through `AgentConfig::from_toml`, as the agent loads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbee_proto::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    // `AgentConfig::load` reads the file with `read_to_string`, so only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match AgentConfig::from_toml("fuzz.toml".as_ref(), text) {
        Ok(cfg) => {
            // An accepted config passed validation; writing it back gives the same config.
            assert!(cfg.validate().is_ok());
            if let Ok(again) = toml::to_string(&cfg) {
                let back = AgentConfig::from_toml("again.toml".as_ref(), &again).expect("re-serialized config loads");
                assert_eq!(back, cfg);
            }
        }
        Err(e) => {
            // Errors are one line naming the file.
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "{msg}");
        }
    }
});
