//! `allow add` and `allow remove`: edits of the configuration file that keep
//! its comments and layout.
//!
//! An edit takes a lock next to the file, validates the whole edited file
//! with the same checks as the daemon, writes it to a temporary file in the
//! same directory and renames it over the original. A refused edit changes
//! nothing; a reader never sees a half-written file.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use fs2::FileExt as _;
use ipnet::IpNet;
use toml_edit::{DocumentMut, InlineTable, Item, Value};

use crate::{
    config::{self, parse_cidr},
    guard::{self, SshSession},
    UsageError,
};

/// Lock-out protection for an edit: see [`crate::guard`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Guard {
    /// Apply even when the change introduces a risk.
    pub force: bool,
    /// The SSH session the command runs in, if any.
    pub ssh: Option<SshSession>,
}

impl Guard {
    /// Guard for the current process: its SSH session, and `force`.
    pub fn from_env(force: bool) -> Self {
        Guard {
            force,
            ssh: SshSession::from_env(),
        }
    }

    /// Refuses a change that introduces a risk, unless forced.
    ///
    /// # Errors
    ///
    /// [`UsageError`] listing every new risk.
    pub fn check(&self, before: &config::Config, after: &config::Config) -> anyhow::Result<()> {
        let risks = guard::new_risks(Some(before), after, self.ssh);
        if risks.is_empty() || self.force {
            for risk in &risks {
                tracing::warn!("forced: {risk}");
            }
            return Ok(());
        }
        Err(UsageError(format!(
            "refused, nothing was changed:\n  {}\nadd --force to do it anyway",
            risks.join("\n  ")
        ))
        .into())
    }
}

/// What an edit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditOutcome {
    Changed,
    /// The file already said so; it was not rewritten.
    AlreadyThere,
}

/// Adds `cidr` to `service`'s allowlist.
///
/// # Errors
///
/// [`UsageError`] for an unknown service, a bad CIDR or an edit that would
/// make the file invalid; other errors for I/O failures.
pub fn allow_add(
    path: &Path,
    service: &str,
    cidr: &str,
    note: Option<&str>,
    expires: Option<std::time::SystemTime>,
    guard: Guard,
) -> anyhow::Result<EditOutcome> {
    let net = parse_cidr(cidr).map_err(|e| UsageError(e.to_string()))?;
    edit(path, guard, |doc| {
        let array = allow_array(doc, service, true)?;
        if find(array, net).is_some() {
            return Ok(EditOutcome::AlreadyThere);
        }
        let value = if note.is_none() && expires.is_none() {
            Value::from(net.to_string())
        } else {
            let mut table = InlineTable::new();
            table.insert("cidr", net.to_string().into());
            if let Some(note) = note {
                table.insert("note", note.into());
            }
            if let Some(at) = expires {
                table.insert(
                    "expires",
                    humantime::format_rfc3339_seconds(at).to_string().into(),
                );
            }
            Value::InlineTable(table)
        };
        push_like_siblings(array, value);
        Ok(EditOutcome::Changed)
    })
}

/// Removes `cidr` from `service`'s allowlist.
///
/// # Errors
///
/// [`UsageError`] when the service or the entry does not exist.
pub fn allow_remove(
    path: &Path,
    service: &str,
    cidr: &str,
    guard: Guard,
) -> anyhow::Result<EditOutcome> {
    let net = parse_cidr(cidr).map_err(|e| UsageError(e.to_string()))?;
    edit(path, guard, |doc| {
        let array = allow_array(doc, service, false)?;
        let Some(index) = find(array, net) else {
            return Err(UsageError(format!(
                "`{net}` is not in the allowlist of service `{service}`; `xdp-allowlist allow list {service}` shows what is"
            ))
            .into());
        };
        remove_keeping_comments(array, index);
        Ok(EditOutcome::Changed)
    })
}

/// The `allow` array of `service`, created when `create` is set.
fn allow_array<'a>(
    doc: &'a mut DocumentMut,
    service: &str,
    create: bool,
) -> anyhow::Result<&'a mut toml_edit::Array> {
    let known: Vec<String> = doc
        .get("services")
        .and_then(Item::as_table_like)
        .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default();
    let table = doc
        .get_mut("services")
        .and_then(Item::as_table_like_mut)
        .and_then(|services| services.get_mut(service))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| {
            UsageError(format!(
                "there is no service `{service}`; the configured services are: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
    if table.get("allow").is_none() {
        if !create {
            return Err(UsageError(format!("service `{service}` has no allow list")).into());
        }
        table.insert("allow", Item::Value(Value::Array(toml_edit::Array::new())));
    }
    table
        .get_mut("allow")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| UsageError(format!("`allow` of service `{service}` is not a list")).into())
}

/// Index of the entry for `net` (written as a string or as `{ cidr = ... }`).
fn find(array: &toml_edit::Array, net: IpNet) -> Option<usize> {
    array.iter().position(|value| {
        let text = match value {
            Value::String(s) => Some(s.value().as_str()),
            Value::InlineTable(t) => t.get("cidr").and_then(Value::as_str),
            _ => None,
        };
        text.and_then(|t| parse_cidr(t).ok()) == Some(net)
    })
}

/// Appends `value` formatted like the entries before it, so that a list
/// written one entry per line stays that way.
///
/// toml_edit keeps the comment that ends an entry's line in the *next*
/// entry's prefix (or, for the last entry, in the array's trailing text), so
/// that text moves to the new entry's prefix and the trailing text keeps
/// only the closing bracket's indentation.
fn push_like_siblings(array: &mut toml_edit::Array, mut value: Value) {
    let Some(last) = array.iter().last() else {
        array.push_formatted(value);
        return;
    };
    let last_prefix = raw(last.decor().prefix());
    let trailing = raw(Some(array.trailing()));
    let (line_end, closing_indent) = split_after_last_newline(&trailing);
    if line_end.is_empty() {
        // One line: `["a", "b"]`.
        let prefix = if last_prefix.is_empty() {
            " ".to_owned()
        } else {
            last_prefix
        };
        value.decor_mut().set_prefix(prefix);
    } else {
        let (_, indent) = split_after_last_newline(&last_prefix);
        value.decor_mut().set_prefix(format!("{line_end}{indent}"));
        array.set_trailing(format!("\n{closing_indent}"));
    }
    array.push_formatted(value);
}

/// Removes entry `index`, keeping the comments of the entries that stay.
fn remove_keeping_comments(array: &mut toml_edit::Array, index: usize) {
    let removed_prefix = array
        .get(index)
        .map(|v| raw(v.decor().prefix()))
        .unwrap_or_default();
    let is_last = index + 1 == array.len();
    array.remove(index);
    if is_last {
        // The removed entry's comment sat in the trailing text; the comment
        // of the entry before it sat in the removed entry's prefix.
        let trailing = raw(Some(array.trailing()));
        let (line_end, _) = split_after_last_newline(&removed_prefix);
        let (_, closing_indent) = split_after_last_newline(&trailing);
        if !line_end.is_empty() {
            array.set_trailing(format!("{line_end}{closing_indent}"));
        }
    } else if let Some(next) = array.get_mut(index) {
        next.decor_mut().set_prefix(removed_prefix);
    }
}

fn raw(text: Option<&toml_edit::RawString>) -> String {
    text.and_then(|r| r.as_str()).unwrap_or("").to_owned()
}

/// `(text up to and including its last newline, the rest)`.
fn split_after_last_newline(text: &str) -> (String, String) {
    match text.rfind('\n') {
        Some(i) => (text[..=i].to_owned(), text[i + 1..].to_owned()),
        None => (String::new(), text.to_owned()),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".to_owned());
    path.with_file_name(format!(".{name}.lock"))
}

/// Locks, reads, edits, validates and atomically replaces the file.
fn edit(
    path: &Path,
    guard: Guard,
    change: impl FnOnce(&mut DocumentMut) -> anyhow::Result<EditOutcome>,
) -> anyhow::Result<EditOutcome> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .with_context(|| format!("cannot create the lock file {}", lock_path(path).display()))?;
    lock.lock_exclusive()
        .with_context(|| format!("cannot lock {}", lock_path(path).display()))?;

    let text = fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read `{}`: {e}; pass --config PATH or set XDP_ALLOWLIST_CONFIG",
            path.display()
        ))
    })?;
    // The file must be valid before the edit too: an edit never hides
    // problems that were already there.
    let before = config::parse_str(&text, path)?.config;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| UsageError(format!("{} is not valid TOML: {e}", path.display())))?;

    let outcome = change(&mut doc)?;
    if outcome == EditOutcome::AlreadyThere {
        return Ok(outcome);
    }
    let new_text = doc.to_string();
    let after = config::parse_str(&new_text, path)?.config;
    guard.check(&before, &after)?;
    write_atomically(path, &new_text)?;
    Ok(outcome)
}

/// Writes `text` to a temporary file beside `path`, syncs it, keeps the
/// original's permissions, and renames it into place.
///
/// # Errors
///
/// When the directory is not writable or the rename fails.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".xdp-allowlist-edit")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    if let Ok(meta) = fs::metadata(path) {
        fs::set_permissions(temp.path(), meta.permissions())?;
    }
    temp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// What `allow import` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    pub kept: usize,
}

/// Replaces the entries of `service` that came from `source` (recognised by
/// their note) with `nets`, keeping every other entry.
///
/// # Errors
///
/// [`UsageError`] when the result would shrink the imported list by more
/// than half without `force`, or the usual edit errors.
pub fn allow_import(
    path: &Path,
    service: &str,
    nets: &std::collections::BTreeSet<IpNet>,
    source: &str,
    force: bool,
    guard: Guard,
) -> anyhow::Result<ImportReport> {
    let note = format!("imported from {source}");
    let mut report = ImportReport::default();
    edit(path, guard, |doc| {
        let array = allow_array(doc, service, true)?;
        let mut previous = std::collections::BTreeSet::new();
        let mut others = std::collections::BTreeSet::new();
        for value in array.iter() {
            let table = value.as_inline_table();
            let cidr = table
                .and_then(|t| t.get("cidr"))
                .and_then(Value::as_str)
                .or_else(|| value.as_str())
                .and_then(|t| parse_cidr(t).ok());
            let from_source =
                table.and_then(|t| t.get("note")).and_then(Value::as_str) == Some(note.as_str());
            match (cidr, from_source) {
                (Some(net), true) => {
                    previous.insert(net);
                }
                (Some(net), false) => {
                    others.insert(net);
                }
                (None, _) => {}
            }
        }
        if !force && nets.len() * 2 < previous.len() {
            return Err(UsageError(format!(
                "the import would shrink the list from {source} from {} to {} entries (by more than half); check the file, or add --force",
                previous.len(),
                nets.len()
            ))
            .into());
        }
        report.removed = previous.difference(nets).copied().collect();
        report.added = nets
            .difference(&previous)
            .filter(|n| !others.contains(n))
            .copied()
            .collect();
        report.kept = previous.intersection(nets).count();
        if report.added.is_empty() && report.removed.is_empty() {
            return Ok(EditOutcome::AlreadyThere);
        }
        for net in &report.removed {
            let found = array.iter().position(|v| {
                v.as_inline_table()
                    .is_some_and(|t| t.get("note").and_then(Value::as_str) == Some(note.as_str()))
                    && find_one(v, *net)
            });
            if let Some(index) = found {
                remove_keeping_comments(array, index);
            }
        }
        for net in &report.added {
            let mut table = InlineTable::new();
            table.insert("cidr", net.to_string().into());
            table.insert("note", note.as_str().into());
            push_like_siblings(array, Value::InlineTable(table));
        }
        Ok(EditOutcome::Changed)
    })?;
    Ok(report)
}

fn find_one(value: &Value, net: IpNet) -> bool {
    value
        .as_inline_table()
        .and_then(|t| t.get("cidr"))
        .and_then(Value::as_str)
        .and_then(|t| parse_cidr(t).ok())
        == Some(net)
}
