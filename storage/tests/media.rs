//! Media metadata in storage: quota and size limits checked before anything is stored,
//! identical ciphertext stored once, a blob forgotten after its last expected download, and
//! every byte given back to the quota; on both engines and across a reopen.

mod common;

use common::config;
use missive_proto::BlobId;
use missive_storage::{Engine, MediaLimits, OpenOutcome, Store};

const LIMITS: MediaLimits = MediaLimits {
    max_size: 1000,
    quota: 1500,
    ttl_ms: 60_000,
};

#[tokio::test]
async fn limits_dedup_downloads_and_quota() {
    for engine in [Engine::Sled, Engine::Fjall] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        let (a, b, c) = (BlobId([1; 32]), BlobId([2; 32]), BlobId([3; 32]));

        let open =
            |blob, size, downloads| store.open_upload("alice", blob, size, downloads, LIMITS, 5);
        assert_eq!(
            open(a, 1001, 1).await.unwrap(),
            OpenOutcome::TooLarge { max: 1000 }
        );
        assert_eq!(
            store.media_usage("alice").unwrap(),
            0,
            "a refusal reserves nothing"
        );
        assert_eq!(open(a, 900, 2).await.unwrap(), OpenOutcome::New);
        assert_eq!(open(a, 900, 2).await.unwrap(), OpenOutcome::Resume);
        assert_eq!(
            open(b, 700, 1).await.unwrap(),
            OpenOutcome::OverQuota {
                used: 900,
                quota: 1500
            }
        );
        assert_eq!(open(c, 600, 0).await.unwrap(), OpenOutcome::New);
        assert_eq!(store.media_usage("alice").unwrap(), 1500);

        // Not complete yet: downloads do not count.
        assert!(!store.record_download(a, 11).await.unwrap());
        assert!(store.complete_upload(a).await.unwrap());
        // bob uploads the same ciphertext (a forward): stored once, one more download expected,
        // and his quota is untouched.
        assert_eq!(
            store
                .open_upload("bob", a, 900, 1, LIMITS, 10)
                .await
                .unwrap(),
            OpenOutcome::Complete
        );
        assert_eq!(store.media_usage("bob").unwrap(), 0);
        assert_eq!(store.blob(&a).unwrap().unwrap().downloads, 3);

        drop(store);
        let store = Store::open(dir.path(), config(engine), None).unwrap();
        assert!(!store.record_download(a, 11).await.unwrap());
        assert!(
            !store.record_download(a, 11).await.unwrap(),
            "one device counts once"
        );
        assert!(!store.record_download(a, 12).await.unwrap());
        assert!(
            store.record_download(a, 13).await.unwrap(),
            "the third device was the last"
        );
        assert_eq!(store.blob(&a).unwrap(), None);
        assert_eq!(store.media_usage("alice").unwrap(), 600);

        assert!(store.delete_blob(c).await.unwrap());
        assert!(!store.delete_blob(c).await.unwrap());
        assert_eq!(store.media_usage("alice").unwrap(), 0);
        assert!(store.blobs().unwrap().is_empty());
    }
}
