//! How rbee writes sizes, rates and ages for people: one spelling in the dashboard, the CLI and
//! the agent's error messages, so `98 MiB` in a refusal matches `98 MiB` on the screen.

/// `512 B`, `98.0 MiB`, `7.9 GiB`, `512 MiB` (binary units; one decimal below 100).
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `98M`, `7.9G`, `—` for zero: [`bytes`] for narrow columns.
pub fn bytes_short(b: u64) -> String {
    if b == 0 {
        return "—".into();
    }
    bytes(b)
        .replace(" KiB", "K")
        .replace(" MiB", "M")
        .replace(" GiB", "G")
        .replace(" TiB", "T")
        .replace(" B", "B")
}

/// `45.2`, `0`, `1234`: a per-second rate.
pub fn rate(r: f64) -> String {
    if r <= 0.0 || r.is_nan() {
        "0".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// `0s`, `12s`, `3m`, `2h`, `4d`: an age or uptime in milliseconds, coarsest unit only.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// `text` safe to put on a terminal: control characters (escape sequences, carriage returns,
/// bells, C1 controls) become visible escapes such as `\x1b`, so a hostile model name or log
/// line can neither move the cursor nor set the window title. Tabs become spaces.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => {
                use std::fmt::Write;
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A log line as a terminal may show it: colour and cursor sequences (`ESC [ … final`, as
/// loggers write them when they think they are on a terminal) are removed, and every other
/// control character is made visible as [`printable`] does.
pub fn log_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\x1b') && !text.contains('\u{9b}') {
        return printable(text);
    }
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let csi = match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                true
            }
            '\u{9b}' => true,
            _ => false,
        };
        if !csi {
            plain.push(c);
            continue;
        }
        // Parameters and intermediates (0x20–0x3f), then one final byte (0x40–0x7e).
        for p in chars.by_ref() {
            if ('\x40'..='\x7e').contains(&p) || !('\x20'..='\x3f').contains(&p) {
                break;
            }
        }
    }
    std::borrow::Cow::Owned(printable(&plain).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pick_the_unit_and_precision() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(98 * 1024 * 1024), "98.0 MiB");
        assert_eq!(bytes(512 * 1024 * 1024), "512 MiB");
        assert_eq!(bytes(u64::MAX), "16777216 TiB");
        assert_eq!(bytes_short(0), "—");
        assert_eq!(bytes_short(7_900_000_000), "7.4G");
    }

    #[test]
    fn rates_and_ages() {
        assert_eq!(rate(-1.0), "0");
        assert_eq!(rate(f64::NAN), "0");
        assert_eq!(rate(45.25), "45.2");
        assert_eq!(rate(1234.4), "1234");
        assert_eq!(age(850), "0s");
        assert_eq!(age(3 * 60_000), "3m");
        assert_eq!(age(2 * 3_600_000), "2h");
        assert_eq!(age(4 * 86_400_000), "4d");
    }

    #[test]
    fn log_lines_lose_their_colours_and_keep_no_control() {
        assert_eq!(
            log_line("\x1b[2m2026-11-30\x1b[0m \x1b[32m INFO\x1b[0m loaded"),
            "2026-11-30  INFO loaded"
        );
        assert_eq!(log_line("\x1b]0;title\x07x\r"), "\\x1b]0;title\\x07x\\x0d");
        assert_eq!(log_line("\u{9b}2Jok"), "ok");
        assert_eq!(log_line("plain"), "plain");
        assert_eq!(log_line("cut \x1b["), "cut ");
    }

    #[test]
    fn printable_defuses_terminal_controls() {
        assert_eq!(printable("plain name.gguf"), "plain name.gguf");
        assert!(matches!(printable("ok"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("\x1b]0;pwned\x07x"), "\\x1b]0;pwned\\x07x");
        assert_eq!(printable("a\tb\r\n"), "a b\\x0d\\x0a");
        assert_eq!(printable("\u{9b}2J"), "\\x9b2J");
        assert_eq!(printable("héllo ✓"), "héllo ✓");
    }
}
