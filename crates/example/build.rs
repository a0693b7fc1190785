//! Compiles the example's proto with protox (no system `protoc`).

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let proto = "proto/inventory/v1/inventory.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
