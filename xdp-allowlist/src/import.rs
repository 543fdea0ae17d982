//! `allow import`: reads a provider's published range list from a file the
//! operator downloaded. Formats: a plain list, GitHub's `meta` JSON (pick a
//! key such as `hooks`), and AWS's `ip-ranges.json` (filter on its fields).

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde_json::Value;

use crate::UsageError;

/// The formats `--format` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One CIDR or address per line; `#` starts a comment.
    Plain,
    /// GitHub's meta API document; `--key` names the list (`hooks`, `web`, …).
    Github,
    /// AWS ip-ranges.json; `--filter service=EC2,region=eu-west-1` selects.
    Aws,
}

/// Reads the ranges in `text`. Host bits are cleared (providers publish
/// networks, but a stray address must not become a refusal).
///
/// # Errors
///
/// [`UsageError`] naming what is wrong with the document or the options.
pub fn parse(
    text: &str,
    format: Format,
    key: Option<&str>,
    filter: Option<&str>,
) -> Result<BTreeSet<IpNet>, UsageError> {
    let raw: Vec<String> = match format {
        Format::Plain => text
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim().to_owned())
            .filter(|line| !line.is_empty())
            .collect(),
        Format::Github => {
            let key = key.ok_or_else(|| {
                UsageError("--format github needs --key, the list to import (for example hooks, web, api, actions)".to_owned())
            })?;
            let doc: Value =
                serde_json::from_str(text).map_err(|e| UsageError(format!("not JSON: {e}")))?;
            let list = doc.get(key).and_then(Value::as_array).ok_or_else(|| {
                let keys: Vec<&str> = doc
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(_, v)| v.is_array())
                            .map(|(k, _)| k.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                UsageError(format!(
                    "the document has no list `{key}`; lists: {}",
                    keys.join(", ")
                ))
            })?;
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }
        Format::Aws => {
            let doc: Value =
                serde_json::from_str(text).map_err(|e| UsageError(format!("not JSON: {e}")))?;
            let conditions = parse_filter(filter)?;
            let mut out = Vec::new();
            for (list, field) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
                let Some(items) = doc.get(list).and_then(Value::as_array) else {
                    continue;
                };
                for item in items {
                    let selected = conditions.iter().all(|(k, v)| {
                        item.get(k)
                            .and_then(Value::as_str)
                            .is_some_and(|x| x.eq_ignore_ascii_case(v))
                    });
                    if selected {
                        if let Some(prefix) = item.get(field).and_then(Value::as_str) {
                            out.push(prefix.to_owned());
                        }
                    }
                }
            }
            if doc.get("prefixes").is_none() && doc.get("ipv6_prefixes").is_none() {
                return Err(UsageError(
                    "not an AWS ip-ranges document (no `prefixes`)".to_owned(),
                ));
            }
            out
        }
    };

    let mut nets = BTreeSet::new();
    for item in raw {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| UsageError(format!("`{item}` in the imported list is not a CIDR")))?;
        nets.insert(net.trunc());
    }
    if nets.is_empty() {
        return Err(UsageError(
            "the import selects no range; check --key or --filter".to_owned(),
        ));
    }
    Ok(nets)
}

fn parse_filter(filter: Option<&str>) -> Result<Vec<(String, String)>, UsageError> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    filter
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            part.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| {
                    UsageError(format!(
                        "filter `{part}` is not FIELD=VALUE, like service=EC2"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(nets: &BTreeSet<IpNet>) -> Vec<String> {
        nets.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_lists_skip_comments_and_dedupe() {
        let nets = parse(
            "# provider\n198.51.100.0/24\n\n203.0.113.7 # one host\n198.51.100.0/24\n",
            Format::Plain,
            None,
            None,
        )
        .expect("parse");
        assert_eq!(strings(&nets), ["198.51.100.0/24", "203.0.113.7/32"]);
    }

    #[test]
    fn github_meta_by_key() {
        let doc = r#"{"verifiable_password_authentication": false, "hooks": ["198.51.100.0/24", "2001:db8:5::/48"], "web": ["203.0.113.0/24"]}"#;
        let nets = parse(doc, Format::Github, Some("hooks"), None).expect("parse");
        assert_eq!(strings(&nets), ["198.51.100.0/24", "2001:db8:5::/48"]);
        let err = parse(doc, Format::Github, Some("nope"), None).expect_err("no key");
        assert!(err.0.contains("lists: hooks, web"), "{}", err.0);
        assert!(parse(doc, Format::Github, None, None).is_err());
    }

    #[test]
    fn aws_ranges_by_filter() {
        let doc = r#"{"prefixes": [
            {"ip_prefix": "198.51.100.0/24", "region": "eu-west-1", "service": "EC2"},
            {"ip_prefix": "203.0.113.0/24", "region": "us-east-1", "service": "EC2"},
            {"ip_prefix": "203.0.113.128/25", "region": "eu-west-1", "service": "S3"}],
          "ipv6_prefixes": [{"ipv6_prefix": "2001:db8:7::/48", "region": "eu-west-1", "service": "EC2"}]}"#;
        let nets =
            parse(doc, Format::Aws, None, Some("service=EC2,region=eu-west-1")).expect("parse");
        assert_eq!(strings(&nets), ["198.51.100.0/24", "2001:db8:7::/48"]);
        assert_eq!(parse(doc, Format::Aws, None, None).expect("all").len(), 4);
        assert!(parse(doc, Format::Aws, None, Some("region=mars")).is_err());
        assert!(parse(doc, Format::Aws, None, Some("oops")).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse("not a cidr\n", Format::Plain, None, None).is_err());
        assert!(parse("{", Format::Aws, None, None).is_err());
    }
}
