//! Test support: connected loopback TCP streams on a tokio runtime, for the
//! unit tests that build a connection's futures on the epoll loop.

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// A current-thread runtime and a connected pair of its loopback streams:
/// the client's end and the accepted end. Keep the runtime for as long as
/// the streams.
pub fn connected_pair() -> (Runtime, TcpStream, TcpStream) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, accepted) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    });
    (runtime, client, accepted)
}
