//! Architecture invariant: the interceptor never pulls in storage or the
//! server. Services that import it must not compile sea-orm or sqlx.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

#[test]
fn never_depends_on_storage_or_the_server() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "apitoken-interceptor",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).expect("utf8");
    let packages: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        packages.contains(&"apitoken-proto"),
        "the tree is real: {packages:?}"
    );
    for forbidden in [
        "sea-orm",
        "sea-query",
        "sqlx",
        "sqlx-core",
        "apitoken-server",
        "apitoken-store",
        "apitoken-migration",
    ] {
        assert!(
            !packages.contains(&forbidden),
            "apitoken-interceptor depends on {forbidden}"
        );
    }
}
