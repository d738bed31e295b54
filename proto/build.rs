//! Compiles the protobufs with `protox` (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "logpb/log.proto",
        "logpb/butler.proto",
        "logdog/collector.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
