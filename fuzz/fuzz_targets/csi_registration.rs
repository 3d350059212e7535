//! kubelet's side of the plugin registration socket, as the registration responder reads it:
//! any bytes after the HTTP/2 preface (frames, header blocks it never decodes, gRPC bodies):
//! never a panic, a bounded answer, and the connection ends when the input does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_csi::proto::PluginInfo;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let mut input = Vec::with_capacity(PREFACE.len() + data.len());
    if !data.starts_with(PREFACE) {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(data);
    let info = PluginInfo {
        r#type: "CSIPlugin".into(),
        name: "volume.veil.dev".into(),
        endpoint: "/csi.sock".into(),
        supported_versions: vec!["1.0.0".into()],
    };
    let stream = tokio::io::join(std::io::Cursor::new(input), Vec::<u8>::new());
    let _ = rt.block_on(veil_csi::registration::serve_connection(stream, &info));
});
