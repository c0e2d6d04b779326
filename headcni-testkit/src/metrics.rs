//! The one OpenMetrics reader of the tests: sample lookup ([`sample`]), the conversion to
//! the Prometheus 0.0.4 text format that `promtool` checks ([`openmetrics_to_text`]), and
//! `promtool check metrics` itself ([`promtool_check`]). Formats: OpenMetrics 1.0
//! (<https://prometheus.io/docs/specs/om/open_metrics_spec/>), Prometheus text 0.0.4.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Parses `a="x",b="y"`.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, v)) = rest.split_once("=\"") {
        let k = k.trim_start_matches(',').trim().to_owned();
        let mut val = String::new();
        let mut chars = v.char_indices();
        let mut end = v.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            o => o,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                o => val.push(o),
            }
        }
        out.insert(k, val);
        rest = &v[end..];
    }
    out
}

/// The value of the sample `name` whose labels include `labels` (first match).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (n, l, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(a), Some(b)) if a < b => {
                (&line[..a], parse_labels(&line[a + 1..b]), &line[b + 1..])
            }
            _ => match line.split_once(' ') {
                Some((n, rest)) => (n, BTreeMap::new(), rest),
                None => continue,
            },
        };
        if n != name
            || !labels
                .iter()
                .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        {
            continue;
        }
        return rest.split_whitespace().next().and_then(|v| v.parse().ok());
    }
    None
}

/// Converts an OpenMetrics exposition to the Prometheus 0.0.4 text format the way Prometheus
/// maps the two (promtool 2.42 only parses 0.0.4): counter families are named with their
/// `_total` suffix, `info` becomes a gauge `<name>_info`, `# UNIT` and `# EOF` go away.
/// Checks the OpenMetrics structure on the way (one final `# EOF`, unit suffixes, every
/// sample of a declared family). 0.0.4 input is returned unchanged.
pub fn openmetrics_to_text(om: &str) -> Result<String, String> {
    if !om.contains("# EOF") {
        return Ok(om.to_owned());
    }
    if !om.ends_with("# EOF\n") || om.matches("# EOF").count() != 1 {
        return Err("OpenMetrics must end with exactly one # EOF".into());
    }
    let types: BTreeMap<String, String> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    let mut out = String::new();
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            if !name.ends_with(&format!("_{unit}")) {
                return Err(format!("unit suffix missing: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            if !["counter", "gauge", "histogram", "info"].contains(&ty) {
                return Err(format!("unexpected type in {line}"));
            }
            out.push_str(&match ty {
                "counter" => format!("# TYPE {name}_total counter"),
                "info" => format!("# TYPE {name}_info gauge"),
                _ => line.to_owned(),
            });
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("bad {line}"))?;
            out.push_str(&match types.get(name).map(String::as_str) {
                Some("counter") => format!("# HELP {name}_total {help}"),
                Some("info") => format!("# HELP {name}_info {help}"),
                _ => line.to_owned(),
            });
        } else {
            if line.starts_with('#') {
                return Err(format!("unexpected comment {line}"));
            }
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            let declared = types.iter().any(|(name, ty)| {
                let suffixes: &[&str] = match ty.as_str() {
                    "counter" => &["_total", "_created"],
                    "info" => &["_info"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| sample == format!("{name}{s}"))
            });
            if !declared {
                return Err(format!("sample {sample} of an undeclared family"));
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// `promtool check metrics` on `text` (stdin): `Ok(output)` or `Err(output)`.
pub fn promtool_check(text: &str) -> Result<String, String> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed: it is required to check /metrics \
                 (Debian package `prometheus`: apt-get install prometheus)"
            )
        });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().expect("promtool");
    let msg = format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(msg)
    } else {
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_parse() {
        let t = "# TYPE x counter\nx_total{verb=\"ADD\",result=\"ok\"} 1\nheadcni_ready 1\n\
                 r{route=\"10.0.0.0/24\",state=\"approved\"} 0 1700000000\n# EOF\n";
        assert_eq!(
            sample(t, "x_total", &[("verb", "ADD"), ("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(sample(t, "x_total", &[("verb", "DEL")]), None);
        assert_eq!(sample(t, "headcni_ready", &[]), Some(1.0));
        assert_eq!(
            sample(t, "r", &[("route", "10.0.0.0/24"), ("state", "approved")]),
            Some(0.0)
        );
    }

    #[test]
    fn openmetrics_converts_to_prometheus_text() {
        let om = "# HELP c Ops.\n# TYPE c counter\nc_total 1\nc_created 1.7e9\n\
                  # TYPE b info\nb_info{v=\"1\"} 1\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\n\
                  d_seconds_bucket{le=\"+Inf\"} 1\nd_seconds_sum 0.1\nd_seconds_count 1\n# EOF\n";
        let t = openmetrics_to_text(om).unwrap();
        assert!(
            t.contains("# HELP c_total Ops.\n# TYPE c_total counter\nc_total 1\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE b_info gauge\n"), "{t}");
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
        // 0.0.4 input passes unchanged; structural errors are reported.
        assert_eq!(openmetrics_to_text("x 1\n").unwrap(), "x 1\n");
        assert!(openmetrics_to_text("# EOF\nx 1\n").is_err());
        assert!(openmetrics_to_text("# TYPE x counter\ny_total 1\n# EOF\n").is_err());
        assert!(openmetrics_to_text("# TYPE x stateset\nx 1\n# EOF\n").is_err());
        assert!(
            openmetrics_to_text("# TYPE x_bytes gauge\n# UNIT x_bytes seconds\n# EOF\n").is_err()
        );
    }
}
