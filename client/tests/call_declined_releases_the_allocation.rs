//! An endpoint gathered for a call that never starts (declined, cancelled) gives its TURN
//! allocation back on `close()`: the edge's active allocations go back to zero at once
//! instead of after the allocation's lifetime.

mod calls;

use calls::*;
use missive_client::call_media::MediaEndpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_an_unused_endpoint_releases_its_allocation() {
    let e = relay_edge();
    let (_alice, ca) = credentials(&e.edge, "alice").await;
    let a = MediaEndpoint::gather(options(&ca)).await.unwrap();
    let b = MediaEndpoint::gather(options(&ca)).await.unwrap();
    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 2.0);
    a.close().await;
    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 1.0);
    b.close().await;
    assert_eq!(metric(&e.edge, "missive_relay_allocations_active"), 0.0);
}
