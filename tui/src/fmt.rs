//! Text shaping the dashboard and the subcommands share and nobody else needs: short model names,
//! GiB figures, text bars, wrapping, plain-text tables. Sizes, rates and ages are
//! `rbee_proto::fmt`'s, so every program of rbee writes them the same way.

/// The file name of a model reference, without directories.
pub fn short_model(reference: &str) -> &str {
    reference
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(reference)
}

/// `hf:ORG/REPO:FILE` shortened to what identifies it on one line: the file, else the repo.
pub fn short_ref(model: &str) -> &str {
    let rest = model.strip_prefix("hf:").unwrap_or(model);
    rest.rsplit_once(':')
        .map(|(_, f)| f)
        .or_else(|| rest.rsplit_once('/').map(|(_, r)| r))
        .unwrap_or(rest)
}

/// Why a node has no GPU, said once even when the agent's reason already starts with "no GPU".
pub fn no_gpu_text(status: &str) -> String {
    if status.is_empty() {
        "no GPU".into()
    } else if status.to_lowercase().starts_with("no gpu") {
        status.to_string()
    } else {
        format!("no GPU: {status}")
    }
}

/// `▮▮▮▯▯▯`: a gauge that fits in a table cell.
pub fn text_bar(r: f64, width: usize) -> String {
    let filled = (r.clamp(0.0, 1.0) * width as f64).round() as usize;
    "▮".repeat(filled) + &"▯".repeat(width - filled)
}

const GIB: f64 = (1u64 << 30) as f64;

/// `7.9`: bytes in GiB, the number only (for `used/total` pairs).
pub fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / GIB)
}

/// `7.9G`: bytes in GiB with the unit.
pub fn gib_unit(b: u64) -> String {
    format!("{:.1}G", b as f64 / GIB)
}

/// `used` over `total`, clamped to 0..=1 (0 when the total is unknown).
pub fn ratio(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// The last `NN%` (or `NN.N%`) in a detail string, as a ratio.
pub fn progress(detail: &str) -> Option<f64> {
    let end = detail.rfind('%')?;
    let start = detail[..end]
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| i + 1)
        .unwrap_or(0);
    let v: f64 = detail[start..end].parse().ok()?;
    Some((v / 100.0).clamp(0.0, 1.0))
}

/// At most `max` characters, the last one `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else if max == 0 {
        String::new()
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Wrap at `width` characters, breaking after a space where there is one, keeping explicit
/// newlines. Counts characters, not display columns: good enough for model output.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    if text.is_empty() {
        return out;
    }
    for line in text.split('\n') {
        let mut rest: Vec<char> = line.chars().collect();
        if rest.is_empty() {
            out.push(String::new());
        }
        while !rest.is_empty() {
            if rest.len() <= width {
                out.push(rest.drain(..).collect());
                break;
            }
            let cut = rest[..width]
                .iter()
                .rposition(|c| *c == ' ')
                .map(|i| i + 1)
                .filter(|&i| i > width / 3)
                .unwrap_or(width);
            let piece: String = rest.drain(..cut).collect();
            out.push(piece.trim_end().to_string());
        }
    }
    out
}

/// Columns padded to the widest cell; the last column is not padded.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    // Cells hold agent- and user-supplied names: control characters (terminal escapes that set
    // the title or clear the screen) are shown escaped, never sent to the terminal.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| rbee_proto::fmt::printable(c).into_owned())
                .collect()
        })
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_parses_last_percentage() {
        assert_eq!(progress("loading weights 45%"), Some(0.45));
        assert_eq!(progress("step 2/3: 12.5%"), Some(0.125));
        assert_eq!(progress("no number"), None);
        assert_eq!(progress("%"), None);
    }

    #[test]
    fn formats() {
        assert_eq!(text_bar(0.5, 4), "▮▮▯▯");
        assert_eq!(wrap("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(wrap("hello big world", 10), vec!["hello big", "world"]);
        assert_eq!(wrap("a\n\nb", 10), vec!["a", "", "b"]);
        assert!(wrap("", 10).is_empty());
        assert_eq!(
            no_gpu_text("no GPU: driver missing"),
            "no GPU: driver missing"
        );
        assert_eq!(no_gpu_text("driver missing"), "no GPU: driver missing");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(short_model("/m/dir/x.gguf"), "x.gguf");
        assert_eq!(short_ref("hf:org/repo:file.gguf"), "file.gguf");
        assert_eq!(short_ref("hf:org/repo"), "repo");
    }

    #[test]
    fn text_table_aligns() {
        let t = text_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn text_table_escapes_control_characters() {
        let evil = "m\x1b]0;owned\x07\x1b[2J\nx".to_string();
        let t = text_table(&["NAME", "REF"], &[vec![evil, "r".into()]]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t:?}");
    }
}
