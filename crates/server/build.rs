//! Compiles the descriptors of Envoy's `envoy.service.auth.v3` (the
//! wire-compatible subset vendored under `tests/clients/envoy/`, with
//! `google/rpc/status.proto` from `proto/`) with protox, for reflection:
//! the Rust types themselves come from the `envoy-types` crate.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const ENVOY: &str = "../../tests/clients/envoy";
const PROTOS: &str = "../../proto";
const FILES: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={ENVOY}");
    println!("cargo:rerun-if-changed={PROTOS}/google/rpc/status.proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(FILES, [ENVOY, PROTOS])?;
    fs::write(out_dir.join("envoy_descriptor.bin"), fds.encode_to_vec())?;
    Ok(())
}
