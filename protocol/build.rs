//! Generates the agent API's messages and ttrpc services from proto/agent.proto with the
//! pure-Rust parser (no protoc needed): sync client/server in OUT_DIR, async ones in
//! OUT_DIR/async.

use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// Generated files carry inner attributes (`#![...]`) that `include!` cannot take.
fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).expect("generated file is readable");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
        .collect();
    std::fs::write(path, kept.join("\n")).expect("generated file is writable");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto = "proto/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    Codegen::new()
        .out_dir(&out)
        .input(proto)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize::default())
        .run()
        .expect("generating the sync agent API");
    let async_out = out.join("async");
    std::fs::create_dir_all(&async_out).expect("creating OUT_DIR/async");
    Codegen::new()
        .out_dir(&async_out)
        .input(proto)
        .include("proto")
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the async agent API");
    for f in [
        out.join("agent.rs"),
        out.join("agent_ttrpc.rs"),
        async_out.join("agent_ttrpc.rs"),
    ] {
        strip_inner_attributes(&f);
    }
}
