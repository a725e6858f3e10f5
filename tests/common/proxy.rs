//! A TCP proxy that a test can cut and restore, to make a real store
//! unreachable without stopping it for everyone else.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to `target` while up.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl CuttableProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, _) = watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut down = state.subscribe();
                if !*down.borrow() {
                    continue; // dropped: the connection is refused
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
