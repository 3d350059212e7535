//! The driver's CSI services over their gRPC socket (`veil-csi local`, real `veil-volume`,
//! FUSE, loop device, ext4): a volume is created, attached, staged and published, written
//! through the mount, and opened again after unstaging with every byte there; the pool holds
//! no plaintext; an older copy of the backing file is refused at stage (`rolled back`); an
//! attachment to a node that is not a member, a block volume and a multi-node mode are refused;
//! a deleted volume leaves nothing in the pool.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hyper_util::rt::TokioIo;
use veil_csi::proto::{self, volume_capability as vc};

fn bin(name: &str) -> PathBuf {
    let csi = PathBuf::from(env!("CARGO_BIN_EXE_veil-csi"));
    csi.with_file_name(name)
}

fn mount_cap() -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
        access_mode: Some(vc::AccessMode {
            mode: vc::Mode::SingleNodeWriter as i32,
        }),
    }
}

struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

async fn channel(sock: &Path) -> tonic::transport::Channel {
    let p = sock.to_path_buf();
    tonic::transport::Endpoint::try_from("http://csi")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .unwrap()
}

fn pool_bytes(pool: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(pool).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_is_made_staged_published_written_and_opened_again() {
    if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        panic!("this test needs /dev/fuse and root (loop devices, mounts)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (sock, pool, work) = (
        dir.path().join("csi.sock"),
        dir.path().join("pool"),
        dir.path().join("work"),
    );
    let mut child = Command::new(bin("veil-csi"))
        .arg("local")
        .arg("--socket")
        .arg(&sock)
        .arg("--pool")
        .arg(&pool)
        .arg("--volume-binary")
        .arg(bin("veil-volume"))
        .arg("--work")
        .arg(&work)
        .args(["--node-id", "node-a"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _served = Served(child);
    assert!(ready.contains("ready"), "{ready}");
    let ch = channel(&sock).await;
    let mut identity = veil_csi::identity_client::IdentityClient::new(ch.clone());
    let mut ctl = veil_csi::controller_client::ControllerClient::new(ch.clone());
    let mut node = veil_csi::node_client::NodeClient::new(ch);

    let info = identity
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, veil_csi::DRIVER);

    // Refused before anything is made: a block volume, a volume for several nodes.
    let block = proto::VolumeCapability {
        access_type: Some(vc::AccessType::Block(vc::BlockVolume {})),
        ..mount_cap()
    };
    let many = proto::VolumeCapability {
        access_mode: Some(vc::AccessMode {
            mode: vc::Mode::MultiNodeMultiWriter as i32,
        }),
        ..mount_cap()
    };
    for (cap, why) in [(block, "block"), (many, "one node at a time")] {
        let e = ctl
            .create_volume(proto::CreateVolumeRequest {
                name: "refused".into(),
                volume_capabilities: vec![cap],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(why), "{}", e.message());
    }

    let create = |name: &str| proto::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(proto::CapacityRange {
            required_bytes: 32 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        ..Default::default()
    };
    let v = ctl
        .create_volume(create("pvc-1"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes, 32 << 20);
    // Idempotent by name; another size under the same name is refused.
    let again = ctl
        .create_volume(create("pvc-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.volume.unwrap().volume_id, v.volume_id);
    let mut bigger = create("pvc-1");
    bigger.capacity_range = Some(proto::CapacityRange {
        required_bytes: 64 << 20,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );

    let publish = |node_id: &str| proto::ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node_id.into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    };
    ctl.controller_publish_volume(publish("node-a"))
        .await
        .unwrap();
    // A node that is not a member: NOT_FOUND, as the specification asks.
    let e = ctl
        .controller_publish_volume(publish("node-b"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    assert!(e.message().contains("node-b"), "{}", e.message());

    let staging = dir.path().join("staging");
    let target = dir.path().join("target");
    let stage = proto::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    };
    let publish_node = proto::NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    };
    // Publishing before staging is refused.
    assert_eq!(
        node.node_publish_volume(publish_node.clone())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::FailedPrecondition
    );
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_publish_volume(publish_node.clone())
        .await
        .unwrap();
    let canary = format!("veil-csi-canary-{}", std::process::id());
    let payload: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(target.join("canary"), &canary).unwrap();
    std::fs::write(target.join("payload"), &payload).unwrap();
    let f = std::fs::File::open(target.join("payload")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let unpublish = proto::NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.display().to_string(),
    };
    let unstage = proto::NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    };
    node.node_unpublish_volume(unpublish.clone()).await.unwrap();
    node.node_unstage_volume(unstage.clone()).await.unwrap();
    assert!(!target.exists(), "the target directory is left behind");
    assert!(
        !veil_csi::node::is_mount_point(&staging),
        "the staging path is still mounted"
    );
    assert!(
        !pool_bytes(&pool)
            .windows(canary.len())
            .any(|w| w == canary.as_bytes()),
        "the canary is in the pool in plaintext"
    );

    // Opened again: everything written is there. Something more is written, so the copy of
    // the backing file taken now is older than the volume's anchor after this.
    let backing = pool.join(format!("{}.vol", v.volume_id));
    let older = dir.path().join("older.vol");
    std::fs::copy(&backing, &older).unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_publish_volume(publish_node.clone())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("canary")).unwrap(),
        canary
    );
    assert!(std::fs::read(target.join("payload")).unwrap() == payload);
    std::fs::write(target.join("later"), b"later").unwrap();
    std::fs::File::open(target.join("later"))
        .unwrap()
        .sync_all()
        .unwrap();
    node.node_unpublish_volume(unpublish.clone()).await.unwrap();
    node.node_unstage_volume(unstage.clone()).await.unwrap();

    // The host puts the older copy back: staging refuses it, naming the check.
    let newer = std::fs::read(&backing).unwrap();
    std::fs::copy(&older, &backing).unwrap();
    let e = node.node_stage_volume(stage.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("rolled back"), "{}", e.message());
    assert!(
        !veil_csi::node::is_mount_point(&staging),
        "a refused volume is mounted"
    );
    // The current copy opens again, with what was written last.
    std::fs::write(&backing, newer).unwrap();
    node.node_stage_volume(stage).await.unwrap();
    node.node_publish_volume(publish_node).await.unwrap();
    assert_eq!(std::fs::read(target.join("later")).unwrap(), b"later");
    node.node_unpublish_volume(unpublish).await.unwrap();
    node.node_unstage_volume(unstage).await.unwrap();

    ctl.controller_unpublish_volume(proto::ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctl.delete_volume(proto::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_dir(&pool).unwrap().count(),
        0,
        "the pool is not empty"
    );
    // Deleting again is no error; staging a deleted volume is.
    ctl.delete_volume(proto::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}
