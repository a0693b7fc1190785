//! Compiles `apitoken/v1/*.proto` with protox (no system `protoc`), generates
//! the tonic client and server, and writes the encoded file descriptor set
//! that server reflection serves.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["apitoken/v1/apitoken.proto"];

/// Messages that carry a secret: their derived `Debug` is replaced by a
/// redacting one in `src/lib.rs`.
const SECRET_BEARING: &[&str] = &[
    ".apitoken.v1.CreateApiTokenResponse",
    ".apitoken.v1.RegenerateApiTokenResponse",
    ".apitoken.v1.VerifyApiTokenRequest",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    fs::write(out_dir.join("apitoken_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .skip_debug(SECRET_BEARING)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
