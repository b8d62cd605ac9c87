//! Upgraded connections (WebSocket): bytes copied both ways until either side closes, the
//! connection stays idle too long, or it reaches its lifetime limit.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::idle::{Activity, Watched};

/// The longest an upgraded connection may live; a bound on what one client can hold.
const MAX_TUNNEL_LIFETIME: Duration = Duration::from_secs(3600);

pub async fn join(client: OnUpgrade, backend: OnUpgrade, idle_timeout: Duration) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let activity = Activity::new();
    let mut client = Watched::new(TokioIo::new(client), activity.clone());
    let mut backend = Watched::new(TokioIo::new(backend), activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    tokio::select! {
        r = tokio::time::timeout(MAX_TUNNEL_LIFETIME, copy) => match r {
            Ok(Ok((up, down))) => debug!(up, down, "tunnel closed"),
            Ok(Err(e)) => debug!(error = %e, "tunnel ended with an error"),
            Err(_) => debug!("tunnel closed at its lifetime limit"),
        },
        _ = activity.idle_for(idle_timeout) => {
            debug!(idle = ?idle_timeout, "tunnel closed: idle");
        }
    }
}
