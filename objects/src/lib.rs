//! Kubernetes objects as both Cedille binaries read them, wherever they come from.
//!
//! ```text
//! manifest directory (dir) --\
//!                             +--> Store (last good version of each object) --> the binary
//! kube list+watch (kube) ----/
//! ```
//!
//! Each binary describes its kinds with a [`Catalog`]; the [`store::Store`] and both
//! sources are generic over it. Nothing downstream of the store knows which source filled it.

pub mod catalog;
pub mod core;
pub mod dir;
pub mod discovery;
pub mod kube;
pub mod manifest;
pub mod meta;
pub mod rbac;
pub mod store;

pub use catalog::{Catalog, KindInfo};
pub use manifest::{ManifestError, Parsed};
pub use meta::{Labels, ObjKey, ObjectMeta, SharedStr, rfc3339};
pub use store::{Store, Stored};

/// Where a binary's objects come from.
pub enum Source<C: Catalog> {
    /// A watched directory of manifests (standalone mode).
    Dir(dir::DirSource<C>),
    /// The Kubernetes API server.
    Kube(kube::KubeSource<C>),
}

impl<C: Catalog> Source<C> {
    /// Completes when there may be something to [`Source::sync`].
    pub async fn changed(&mut self) {
        match self {
            Source::Dir(d) => d.changed().await,
            Source::Kube(k) => k.changed().await,
        }
    }

    /// Brings the store up to date. Returns whether an object changed (or, for files, what
    /// is known to be wrong with them).
    pub fn sync(&mut self, store: &mut Store<C>) -> bool {
        match self {
            Source::Dir(d) => d.sync(store),
            Source::Kube(k) => k.sync(store),
        }
    }

    /// True once everything the source watches has been read at least once: the directory,
    /// or the initial list of every watched kind.
    pub fn synced(&self) -> bool {
        match self {
            Source::Dir(d) => d.synced(),
            Source::Kube(k) => k.synced(),
        }
    }
}

#[cfg(test)]
mod tests;
