//! Every agent API request decoded from arbitrary bytes: never a panic, and whatever
//! decodes re-encodes to something that decodes to the same message.
#![no_main]

use husk_protocol::agent::*;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::parse_from_bytes(data) {
        let bytes = m.write_to_bytes().expect("a decoded message encodes");
        let back = M::parse_from_bytes(&bytes).expect("an encoded message decodes");
        assert_eq!(m, back);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 13 {
        0 => round_trip::<CreateSandboxRequest>(rest),
        1 => round_trip::<CreateContainerRequest>(rest),
        2 => round_trip::<ContainerRequest>(rest),
        3 => round_trip::<ProcessRequest>(rest),
        4 => round_trip::<ExecProcessRequest>(rest),
        5 => round_trip::<SignalProcessRequest>(rest),
        6 => round_trip::<WriteStdinRequest>(rest),
        7 => round_trip::<ReadOutputRequest>(rest),
        8 => round_trip::<ResizeTtyRequest>(rest),
        9 => round_trip::<UpdateContainerRequest>(rest),
        10 => round_trip::<Stdio>(rest),
        11 => round_trip::<ConfigureNetworkRequest>(rest),
        _ => round_trip::<Empty>(rest),
    }
});
