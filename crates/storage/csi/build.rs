//! Generates the gRPC service glue of the CSI spec (`csi.v1`: Identity, Controller, Node) and
//! of kubelet's plugin registration (`pluginregistration.Registration`) around the
//! hand-written prost messages in `src/proto.rs`. No protoc is needed.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::{input}"))
            .output_type(format!("crate::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    // (rust name, route) pairs; the messages are `<Route>Request` / `<Route>Response`.
    let service = |name: &str, package: &str, methods: &[(&str, &str)]| {
        let mut b = tonic_build::manual::Service::builder()
            .name(name)
            .package(package);
        for (rust, route) in methods {
            b = b.method(method(
                rust,
                route,
                &format!("{route}Request"),
                &format!("{route}Response"),
            ));
        }
        b.build()
    };
    let identity = service(
        "Identity",
        "csi.v1",
        &[
            ("get_plugin_info", "GetPluginInfo"),
            ("get_plugin_capabilities", "GetPluginCapabilities"),
            ("probe", "Probe"),
        ],
    );
    let controller = service(
        "Controller",
        "csi.v1",
        &[
            ("create_volume", "CreateVolume"),
            ("delete_volume", "DeleteVolume"),
            ("controller_publish_volume", "ControllerPublishVolume"),
            ("controller_unpublish_volume", "ControllerUnpublishVolume"),
            ("validate_volume_capabilities", "ValidateVolumeCapabilities"),
            ("controller_get_capabilities", "ControllerGetCapabilities"),
        ],
    );
    let node = service(
        "Node",
        "csi.v1",
        &[
            ("node_stage_volume", "NodeStageVolume"),
            ("node_unstage_volume", "NodeUnstageVolume"),
            ("node_publish_volume", "NodePublishVolume"),
            ("node_unpublish_volume", "NodeUnpublishVolume"),
            ("node_get_capabilities", "NodeGetCapabilities"),
            ("node_get_info", "NodeGetInfo"),
        ],
    );
    let registration = tonic_build::manual::Service::builder()
        .name("Registration")
        .package("pluginregistration")
        .method(method("get_info", "GetInfo", "InfoRequest", "PluginInfo"))
        .method(method(
            "notify_registration_status",
            "NotifyRegistrationStatus",
            "RegistrationStatus",
            "RegistrationStatusResponse",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[identity, controller, node, registration]);
}
