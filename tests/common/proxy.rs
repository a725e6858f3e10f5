//! A TCP proxy that a test can cut and restore, to make a real store
//! unreachable without stopping it for everyone else.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Forwards them.
    Up,
    /// Closes them at once (a store that refuses connections).
    Refusing,
    /// Accepts and holds them without a byte (a partition: every
    /// connection attempt hangs until the client's own timeout).
    Silent,
}

/// Forwards connections to `target` while up.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
}

impl CuttableProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (link, _) = watch::channel(Link::Up);
        let state = link.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut changes = state.subscribe();
                let now = *changes.borrow();
                match now {
                    Link::Refusing => continue, // dropped: the connection is refused
                    Link::Silent => {
                        // Held, unanswered, until the link changes.
                        tokio::spawn(async move {
                            let _held = client;
                            let _ = changes.wait_for(|link| *link != Link::Silent).await;
                        });
                        continue;
                    }
                    Link::Up => {}
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = changes.wait_for(|link| *link != Link::Up) => {}
                    }
                });
            }
        });
        Self { addr, link }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Refusing);
    }

    /// Closes every connection and lets new ones hang unanswered.
    pub fn partition(&self) {
        self.link.send_replace(Link::Silent);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }
}
