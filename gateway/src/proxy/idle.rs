//! Idleness of long-lived connections: when a connection last carried something, and a
//! wait that ends once it has carried nothing for a given time.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, ReadBuf},
    time::Instant,
};

/// When a connection last carried something (shared between its IO and its watcher).
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last activity.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Returns once nothing was carried for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(limit) else {
                // Beyond what the clock can name: never.
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An IO that records its reads as activity (bytes read on either side of a tunnel are
/// bytes carried).
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

super::passthrough_write!(Watched);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_from_the_last_activity() {
        let a = Activity::new();
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        a.touch();
        a.idle_for(Duration::from_secs(1)).await;
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(1600) && waited < Duration::from_millis(1700),
            "{waited:?}"
        );
    }
}
