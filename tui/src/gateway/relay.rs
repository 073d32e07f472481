//! The cluster's one scrape target: every node's exposition (asked for over its session with
//! `Request::Metrics`) merged into one text, each series labelled `node="…"`, with
//! `rbee_node_up` for every configured node (0 when it could not be scraped, never silence) and
//! the gateway's own metrics after them.
//!
//! The merge works on Prometheus' text format (0.0.4) as the agents write it: a family's
//! `# HELP`/`# TYPE` lines are written once and the samples of every node follow them, so the
//! result is one well-formed exposition (`promtool check metrics` accepts it).
use std::collections::HashMap;
use std::fmt::Write as _;

/// What one node answered to the scrape.
#[derive(Debug, Clone)]
pub struct NodeScrape {
    /// The node's name, as the gateway's configuration calls it.
    pub node: String,
    /// Its exposition, or why there is none (session down, no answer in time, an error).
    pub text: Result<String, String>,
}

#[derive(Default)]
struct Family {
    name: String,
    help: Option<String>,
    kind: Option<String>,
    /// The samples of every node, one per line.
    samples: String,
}

/// Families in the order first seen, found by name.
#[derive(Default)]
struct Families {
    list: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Families {
    /// The family `name`, created when first seen.
    fn get(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.list.push(Family {
            name: name.to_string(),
            ..Family::default()
        });
        self.index.insert(name.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }
}

/// The merged exposition: `rbee_node_up`, every node's families labelled with `node`, then
/// `own` (the gateway's metrics, already in the text format) as it is.
pub fn render(nodes: &[NodeScrape], own: &str) -> String {
    let mut out = String::with_capacity(16 << 10);
    out.push_str("# HELP rbee_node_up Whether the node's agent answered this scrape over its session (1) or not (0).\n");
    out.push_str("# TYPE rbee_node_up gauge\n");
    for n in nodes {
        let up = u8::from(n.text.is_ok());
        let _ = writeln!(out, "rbee_node_up{{node=\"{}\"}} {up}", escape(&n.node));
    }
    let mut families = Families::default();
    for n in nodes {
        if let Ok(text) = &n.text {
            merge(text, &escape(&n.node), &mut families);
        }
    }
    for f in families.list.iter().filter(|f| !f.samples.is_empty()) {
        if let Some(h) = &f.help {
            let _ = writeln!(out, "# HELP {} {h}", f.name);
        }
        if let Some(k) = &f.kind {
            let _ = writeln!(out, "# TYPE {} {k}", f.name);
        }
        out.push_str(&f.samples);
    }
    out.push_str(own);
    out
}

/// Add one node's text to the families, its samples labelled `node`.
fn merge(text: &str, node: &str, families: &mut Families) {
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            if what != "HELP" && what != "TYPE" {
                continue;
            }
            let value = parts.next().unwrap_or("");
            let i = families.get(name);
            let f = &mut families.list[i];
            let slot = if what == "HELP" {
                &mut f.help
            } else {
                &mut f.kind
            };
            slot.get_or_insert_with(|| value.to_string());
            current = Some(i);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let i = match current {
            Some(c) if name.starts_with(families.list[c].name.as_str()) => c,
            _ => families.get(name),
        };
        let s = &mut families.list[i].samples;
        let rest = &line[name_end..];
        s.push_str(name);
        match rest.strip_prefix('{') {
            Some(r) => {
                s.push_str("{node=\"");
                s.push_str(node);
                s.push_str(if r.starts_with('}') { "\"" } else { "\"," });
                s.push_str(r);
            }
            None => {
                s.push_str("{node=\"");
                s.push_str(node);
                s.push_str("\"}");
                s.push_str(rest);
            }
        }
        s.push('\n');
    }
}

/// A label value as the text format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP rbee_errors_total Errors.\n# TYPE rbee_errors_total counter\nrbee_errors_total{kind=\"x\"} 2\n# HELP rbee_up_seconds Up.\n# TYPE rbee_up_seconds gauge\nrbee_up_seconds 5\n# HELP rbee_t_seconds T.\n# TYPE rbee_t_seconds histogram\nrbee_t_seconds_sum{model=\"m\"} 1.5\nrbee_t_seconds_count{model=\"m\"} 1\nrbee_t_seconds_bucket{le=\"+Inf\",model=\"m\"} 1\n";

    #[test]
    fn families_once_samples_of_every_node_labelled_and_down_nodes_at_zero() {
        let nodes = vec![
            NodeScrape {
                node: "a".into(),
                text: Ok(A.into()),
            },
            NodeScrape {
                node: "b\"2".into(),
                text: Ok(A.into()),
            },
            NodeScrape {
                node: "c".into(),
                text: Err("session down".into()),
            },
        ];
        let out = render(
            &nodes,
            "# TYPE rbee_gateway_waiting gauge\nrbee_gateway_waiting 0\n",
        );
        assert!(out.contains("rbee_node_up{node=\"a\"} 1\n"), "{out}");
        assert!(out.contains("rbee_node_up{node=\"b\\\"2\"} 1\n"), "{out}");
        assert!(out.contains("rbee_node_up{node=\"c\"} 0\n"), "{out}");
        assert_eq!(out.matches("# TYPE rbee_errors_total counter").count(), 1);
        assert_eq!(out.matches("# TYPE rbee_t_seconds histogram").count(), 1);
        assert!(
            out.contains("rbee_errors_total{node=\"a\",kind=\"x\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("rbee_up_seconds{node=\"a\"} 5\n"), "{out}");
        assert!(out.contains("rbee_t_seconds_bucket{node=\"b\\\"2\",le=\"+Inf\",model=\"m\"} 1\n"));
        // The histogram's samples stay under their family, not families of their own.
        let t = out.find("# TYPE rbee_t_seconds").unwrap();
        let u = out.find("# TYPE rbee_up_seconds").unwrap();
        let sum_b = out.find("rbee_t_seconds_sum{node=\"b").unwrap();
        assert!(u < t && t < sum_b, "{out}");
        assert!(out.ends_with("rbee_gateway_waiting 0\n"));
    }
}
