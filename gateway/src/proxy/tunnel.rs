//! Upgraded connections (WebSocket): bytes copied both ways until either side closes.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// The longest an upgraded connection may live; a bound on what one client can hold.
const MAX_TUNNEL_LIFETIME: Duration = Duration::from_secs(3600);

pub async fn join(client: OnUpgrade, backend: OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    match tokio::time::timeout(MAX_TUNNEL_LIFETIME, copy).await {
        Ok(Ok((up, down))) => debug!(up, down, "tunnel closed"),
        Ok(Err(e)) => debug!(error = %e, "tunnel ended with an error"),
        Err(_) => debug!("tunnel closed at its lifetime limit"),
    }
}
