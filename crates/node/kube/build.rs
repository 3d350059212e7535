//! Generates the gRPC service glue of the KMS v2 plugin API (`k8s.io/kms/apis/v2`, service
//! `v2.KeyManagementService`) around the hand-written prost messages in `src/kms.rs`. No
//! protoc is needed: the service is described here, the messages there.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::kms::{input}"))
            .output_type(format!("crate::kms::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("KeyManagementService")
        .package("v2")
        .method(method(
            "status",
            "Status",
            "StatusRequest",
            "StatusResponse",
        ))
        .method(method(
            "decrypt",
            "Decrypt",
            "DecryptRequest",
            "DecryptResponse",
        ))
        .method(method(
            "encrypt",
            "Encrypt",
            "EncryptRequest",
            "EncryptResponse",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}
