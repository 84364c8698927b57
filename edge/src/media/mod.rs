//! Media: client-encrypted blobs uploaded on QUIC transfer streams (resumable by range),
//! stored as content-addressed files, downloaded on transfer streams or over HTTPS with
//! signed URLs, and collected after their last download, their lifetime or a stalled upload.

pub mod janitor;
pub mod service;
pub mod streams;
pub mod transfer;
pub mod url;

pub use service::MediaService;
