//! A TCP forwarder in front of the brokers' PROXIED listeners that a test can cut and restore:
//! one client cut off from the cluster while everything else (IM, the other clients) is not.
#![allow(dead_code)]

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards each advertised port to the port its broker listens on, until cut.
pub struct CutProxy {
    cut: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
}

impl CutProxy {
    /// Listens on each `(advertised, listening)` pair's first port.
    pub async fn start(pairs: &[(u16, u16)]) -> CutProxy {
        let (cut, _) = watch::channel(false);
        let mut listeners = Vec::new();
        for &(advertised, listening) in pairs {
            let listener = TcpListener::bind(("127.0.0.1", advertised))
                .await
                .unwrap_or_else(|e| panic!("the proxy cannot listen on {advertised}: {e}"));
            let cut = cut.subscribe();
            listeners.push(tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, listening, cut.clone()));
                }
            }));
        }
        CutProxy { cut, listeners }
    }

    /// From now on no byte passes, either way, and new connections are accepted but silent:
    /// what a client sees when the network drops its packets.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Closes every connection held while cut (the client reconnects) and forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

async fn forward(mut client: TcpStream, listening: u16, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        let _ = cut.wait_for(|cut| !*cut).await;
        return;
    }
    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", listening)).await else {
        return;
    };
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => false,
        _ = cut.wait_for(|cut| *cut) => true,
    };
    if was_cut {
        // Held open and silent until restored, then closed.
        let _ = cut.wait_for(|cut| !*cut).await;
    }
}
