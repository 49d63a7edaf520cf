//! Generated gRPC client stubs and the connection helpers.
use std::net::SocketAddr;

use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, clippy::pedantic, dead_code)]
pub mod pb {
    tonic::include_proto!("taskmcp.v1");
}

pub type ChangesClient = pb::changes_client::ChangesClient<Channel>;

/// One HTTP/2 connection (TCP_NODELAY, as the gateway's own upstream channel).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<ChangesClient> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    Ok(pb::changes_client::ChangesClient::new(channel))
}

/// The change every scenario reads.
pub async fn open_bench_change(addr: SocketAddr, slug: &str) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    client
        .open_change(pb::OpenChangeRequest {
            title: "Bench change".into(),
            slug: slug.into(),
            rationale: "A change the benchmark reads over and over: change.show on it is the measured call.".into(),
            owner: "bench".into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}
