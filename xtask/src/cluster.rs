//! What several xtask commands set up: the test API server with the Gateway API CRDs of the
//! conformance data (and a kubeconfig for it), and an echo backend.

use std::{net::SocketAddr, path::Path, sync::Arc};

use cedille_apiserver::{ApiServer, Options};
use cedille_echo::{Echo, EchoConfig};

/// The test API server on loopback, serving the Gateway API CRDs; its kubeconfig is written
/// to `work/kubeconfig`.
pub async fn api_server(work: &Path) -> anyhow::Result<ApiServer> {
    let crds = crate::conformance::data_dir()?.join("crds");
    // The Gateway API's CRDs, and the chart's own (helm installs crds/ first).
    let mut all = cedille_apiserver::load_crds(&crds)?;
    all.extend(cedille_apiserver::load_crds(
        &crate::util::root().join("helm/cedille/crds"),
    )?);
    let api = ApiServer::start(
        "127.0.0.1:0".parse()?,
        Options {
            crds: all,
            ..Default::default()
        },
    )
    .await?;
    api.write_kubeconfig(&work.join("kubeconfig"))?;
    Ok(api)
}

/// An echo backend (pod `echo-0` of Service `default/echo`) on a loopback port.
pub async fn echo() -> anyhow::Result<SocketAddr> {
    let echo = Arc::new(Echo::new(EchoConfig {
        pod: "echo-0".into(),
        namespace: "default".into(),
        service: "echo".into(),
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(cedille_echo::serve(l, echo, None, std::future::pending()));
    Ok(addr)
}
