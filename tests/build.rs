//! Marks the PostgreSQL variants of the end-to-end tests `#[ignore]`d when
//! no server is configured at build time, so `cargo test` lists them as
//! ignored (with the reason) instead of passing them silently.

fn main() {
    println!("cargo::rerun-if-env-changed=APITOKEN_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(apitoken_postgres)");
    if std::env::var_os("APITOKEN_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=apitoken_postgres");
    }
}
