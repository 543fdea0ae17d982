use std::fs;

use super::*;
use crate::guard::SshSession;

const ORIGINAL: &str = r#"# Production allowlist. Ask #netops before editing.
interfaces = ["eth0"]

[services.admin]
# Admin panel and SSH.
ports = ["tcp/8443", "tcp/22"]
allow = [
    "203.0.113.0/24",    # office
    "2001:db8:100::/48", # VPN egress
]

[services.api]
ports = ["tcp/443"]
allow = ["198.51.100.0/24"] # integration servers
"#;

fn file_with(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn add_keeps_comments_and_layout() {
    let (_dir, path) = file_with(ORIGINAL);
    let outcome = allow_add(
        &path,
        "admin",
        "198.51.100.7/32",
        Some("alice laptop"),
        None,
        Guard::default(),
    )
    .expect("add");
    assert_eq!(outcome, EditOutcome::Changed);

    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("# Production allowlist. Ask #netops before editing.\n"),
        "{text}"
    );
    assert!(text.contains("# Admin panel and SSH.\n"), "{text}");
    assert!(
        text.contains("    \"203.0.113.0/24\",    # office\n"),
        "{text}"
    );
    assert!(
        text.contains("    \"2001:db8:100::/48\", # VPN egress\n"),
        "{text}"
    );
    assert!(
        text.contains("    { cidr = \"198.51.100.7/32\", note = \"alice laptop\" }"),
        "{text}"
    );
    assert!(
        text.contains("allow = [\"198.51.100.0/24\"] # integration servers\n"),
        "{text}"
    );

    let config = config::parse_str(&text, &path).expect("still valid").config;
    let admin = &config.services["admin"];
    assert_eq!(admin.allow.len(), 3);
    assert_eq!(admin.allow[2].note.as_deref(), Some("alice laptop"));
}

#[test]
fn add_to_a_one_line_list_stays_on_one_line() {
    let (_dir, path) = file_with(ORIGINAL);
    allow_add(
        &path,
        "api",
        "203.0.113.64/26",
        None,
        None,
        Guard::default(),
    )
    .expect("add");
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("allow = [\"198.51.100.0/24\", \"203.0.113.64/26\"] # integration servers\n"),
        "{text}"
    );
}

#[test]
fn remove_keeps_the_rest() {
    let (_dir, path) = file_with(ORIGINAL);
    allow_remove(&path, "admin", "2001:db8:100::/48", Guard::default()).expect("remove");
    let text = fs::read_to_string(&path).expect("read");
    assert!(!text.contains("2001:db8:100::/48"), "{text}");
    assert!(text.contains("\"203.0.113.0/24\",    # office"), "{text}");
    assert!(text.contains("# Production allowlist."), "{text}");
}

#[test]
fn adding_what_is_there_changes_nothing() {
    let (_dir, path) = file_with(ORIGINAL);
    let before = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let outcome = allow_add(
        &path,
        "admin",
        "203.0.113.0/24",
        None,
        None,
        Guard::default(),
    )
    .expect("add");
    assert_eq!(outcome, EditOutcome::AlreadyThere);
    assert_eq!(fs::read_to_string(&path).expect("read"), ORIGINAL);
    assert_eq!(
        fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime"),
        before
    );
}

#[test]
fn refused_edits_change_nothing() {
    let (_dir, path) = file_with(ORIGINAL);
    let cases: [(&str, &str, &str); 4] = [
        ("admin", "203.0.113.7/24", "host bits set"),
        ("admin", "not-a-cidr", "is not a CIDR"),
        (
            "billing",
            "198.51.100.0/24",
            "there is no service `billing`",
        ),
        ("admin", "::ffff:198.51.100.1", "IPv4-mapped"),
    ];
    for (service, cidr, expected) in cases {
        let err =
            allow_add(&path, service, cidr, None, None, Guard::default()).expect_err("refused");
        assert!(err.to_string().contains(expected), "{cidr}: {err:#}");
        assert!(
            err.chain().any(|c| c.is::<UsageError>()),
            "{cidr} should be a usage error"
        );
        assert_eq!(fs::read_to_string(&path).expect("read"), ORIGINAL);
    }

    let err =
        allow_remove(&path, "admin", "198.51.100.99/32", Guard::default()).expect_err("not there");
    assert!(
        err.to_string().contains("is not in the allowlist"),
        "{err:#}"
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), ORIGINAL);
}

#[test]
fn an_invalid_file_is_not_edited() {
    let broken = ORIGINAL.replace("tcp/22", "tcp/0");
    let (_dir, path) = file_with(&broken);
    let err = allow_add(
        &path,
        "admin",
        "198.51.100.7/32",
        None,
        None,
        Guard::default(),
    )
    .expect_err("refused");
    assert!(
        err.chain().any(|c| c.is::<config::ConfigError>()),
        "{err:#}"
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), broken);
}

#[test]
fn the_rename_keeps_permissions_and_leaves_no_temporary_file() {
    use std::os::unix::fs::PermissionsExt as _;

    let (dir, path) = file_with(ORIGINAL);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
    allow_add(
        &path,
        "admin",
        "198.51.100.7/32",
        None,
        None,
        Guard::default(),
    )
    .expect("add");
    let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".xdp-allowlist-edit"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_edit_that_would_lock_out_the_ssh_caller_is_refused_unless_forced() {
    let text =
        "[services.ssh]\nports = [\"tcp/22\"]\nallow = [\"203.0.113.0/24\", \"198.51.100.0/24\"]\n";
    let (_dir, path) = file_with(text);
    let guard = Guard {
        force: false,
        ssh: Some(SshSession {
            client: "203.0.113.50".parse().expect("ip"),
            server_port: 22,
        }),
    };
    let err = allow_remove(&path, "ssh", "203.0.113.0/24", guard).expect_err("refused");
    assert!(err.to_string().contains("lock yourself out"), "{err:#}");
    assert!(err.chain().any(|c| c.is::<UsageError>()));
    assert_eq!(fs::read_to_string(&path).expect("read"), text);

    // Removing someone else's range is fine, and --force overrides.
    allow_remove(&path, "ssh", "198.51.100.0/24", guard).expect("not the caller's range");
    let forced = Guard {
        force: true,
        ..guard
    };
    allow_remove(&path, "ssh", "203.0.113.0/24", forced).expect("forced");
}

#[test]
fn adding_everything_needs_force() {
    let (_dir, path) = file_with(ORIGINAL);
    let err =
        allow_add(&path, "api", "0.0.0.0/0", None, None, Guard::default()).expect_err("refused");
    assert!(err.to_string().contains("allows every address"), "{err:#}");
    assert_eq!(fs::read_to_string(&path).expect("read"), ORIGINAL);
    let forced = Guard {
        force: true,
        ssh: None,
    };
    allow_add(&path, "api", "0.0.0.0/0", None, None, forced).expect("forced");
}

#[test]
fn a_ttl_writes_an_expiry_the_parser_reads_back() {
    let (_dir, path) = file_with(ORIGINAL);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    allow_add(
        &path,
        "api",
        "203.0.113.9",
        Some("on call"),
        Some(at),
        Guard::default(),
    )
    .expect("add");
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("expires = \"2027-01-15T08:00:00Z\""),
        "{text}"
    );
    let config = config::parse_str(&text, &path).expect("valid").config;
    let entry = &config.services["api"].allow[1];
    assert_eq!(entry.expires, Some(at));
    assert!(entry.is_live(at - std::time::Duration::from_secs(1)));
    assert!(!entry.is_live(at));
}

#[test]
fn an_import_replaces_its_own_entries_and_keeps_the_rest() {
    let (_dir, path) = file_with(ORIGINAL);
    let nets = |list: &[&str]| -> std::collections::BTreeSet<IpNet> {
        list.iter().map(|t| t.parse().expect("net")).collect()
    };
    let source = "hooks.json (github hooks)";
    let first = allow_import(
        &path,
        "api",
        &nets(&[
            "192.30.252.0/22",
            "185.199.108.0/22",
            "140.82.112.0/20",
            "2001:db8:30::/48",
        ]),
        source,
        false,
        Guard::default(),
    )
    .expect("import");
    assert_eq!(first.added.len(), 4);
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("note = \"imported from hooks.json (github hooks)\""),
        "{text}"
    );
    assert!(
        text.contains("\"198.51.100.0/24\""),
        "the manual entry stays: {text}"
    );

    let second = allow_import(
        &path,
        "api",
        &nets(&["192.30.252.0/22", "185.199.108.0/22", "143.55.64.0/20"]),
        source,
        false,
        Guard::default(),
    )
    .expect("import");
    assert_eq!(second.kept, 2);
    assert_eq!(second.added.len(), 1);
    assert_eq!(second.removed.len(), 2);

    let shrink = allow_import(
        &path,
        "api",
        &nets(&["192.30.252.0/22"]),
        source,
        false,
        Guard::default(),
    );
    let err = shrink.expect_err("shrinks by more than half");
    assert!(err.to_string().contains("by more than half"), "{err:#}");
    let forced = allow_import(
        &path,
        "api",
        &nets(&["192.30.252.0/22"]),
        source,
        true,
        Guard::default(),
    )
    .expect("forced");
    assert_eq!(forced.removed.len(), 2);
    let config = config::parse_str(&fs::read_to_string(&path).expect("read"), &path)
        .expect("valid")
        .config;
    assert_eq!(config.services["api"].allow.len(), 2);
}
