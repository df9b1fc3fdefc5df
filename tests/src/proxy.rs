//! A TCP forwarder in front of the local kube-apiserver that a test can cut (connections refused
//! and closed), freeze (connections held open, nothing forwarded: a hung apiserver) and restore;
//! TLS passes through untouched (it listens on 127.0.0.1, which the server certificate names).
//! It writes a kubeconfig of its own that points at it.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Mutex, watch},
    task::JoinHandle,
};

use crate::{LocalEnv, free_port};

pub struct KubeProxy {
    pub port: u16,
    upstream: String,
    /// A kubeconfig like the environment's, with the server at this proxy.
    pub kubeconfig: PathBuf,
    frozen: watch::Sender<bool>,
    /// Chunks from clients held by a freeze so far.
    held: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl KubeProxy {
    /// Forwarding from the start.
    pub async fn start(env: &LocalEnv) -> Result<Self> {
        let upstream = env.get("HF_KUBE_URL")?.trim_start_matches("https://").to_string();
        let port = free_port();
        let text = std::fs::read_to_string(env.get("KUBECONFIG")?)?
            .replace(&format!("https://{upstream}"), &format!("https://127.0.0.1:{port}"));
        let kubeconfig = std::env::temp_dir().join(format!("hyperfleet-kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&kubeconfig, text)?;
        let mut proxy = KubeProxy {
            port,
            upstream,
            kubeconfig,
            frozen: watch::channel(false).0,
            held: Default::default(),
            tasks: Default::default(),
            accept: None,
        };
        proxy.up().await?;
        Ok(proxy)
    }

    /// Accepts and forwards again (after [`KubeProxy::down`]).
    pub async fn up(&mut self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (upstream, tasks, frozen, held) =
            (self.upstream.clone(), self.tasks.clone(), self.frozen.clone(), self.held.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, frozen, held) = (upstream.clone(), frozen.clone(), held.clone());
                let conn = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&upstream).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(
                            pump(ri, wo, frozen.subscribe(), Some(held)),
                            pump(ro, wi, frozen.subscribe(), None)
                        );
                    }
                });
                tasks.lock().await.push(conn);
            }
        }));
        Ok(())
    }

    /// Closes the listener and every forwarded connection: calls fail at once.
    pub async fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
    }

    /// Holds every connection, open and new, without forwarding a byte: calls hang.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// How many chunks clients sent that a freeze held (a request waiting shows here).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Forwards again what [`KubeProxy::freeze`] held.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Stops forwarding and removes the kubeconfig.
    pub async fn stop(mut self) {
        self.down().await;
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is frozen (counted in `held`, if
/// given).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    held: Option<Arc<AtomicUsize>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(held) = held.as_ref().filter(|_| *frozen.borrow()) {
            held.fetch_add(1, Ordering::Relaxed);
        }
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
