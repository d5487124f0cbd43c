//! The accept loop (what `axum::serve` did, with the limits it lacks): hyper's HTTP/1 connection
//! per socket with a timer, so a request head must arrive within `header_timeout` (an idle
//! keep-alive connection is closed after as long); a write blocked for `write_timeout` fails the
//! connection (a client that stopped reading a stream: its job is cancelled when the stream drops);
//! at most `max_connections` sockets are served at once; and a graceful shutdown with a deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::ServeConfig;

/// Serve `router` on `listener` until `signal` resolves. Then stop accepting, let each connection
/// finish its current response and close, and close the ones still open `shutdown_grace` + 2 s
/// later (running generations are ended at `shutdown_grace` by the caller).
pub async fn accept_loop(
    cfg: &ServeConfig,
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout).keep_alive(true);
    let mut conns = JoinSet::new();
    tokio::pin!(signal);
    loop {
        // Accept only with a free slot: beyond the cap, clients wait in the listen backlog.
        let next = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        tokio::select! {
            _ = &mut signal => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            (slot, accepted) = next => {
                let Ok(slot) = slot else { break };
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        // Out of file descriptors, or a connection reset before it was accepted:
                        // wait a moment instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let io = TokioIo::new(WriteTimeout { tcp, limit: cfg.write_timeout, blocked: None });
                let conn = http.serve_connection(io, TowerToHyperService::new(router.clone()));
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let _slot = slot;
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all_closed = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.shutdown_grace + Duration::from_secs(2), all_closed).await.is_err() {
        eprintln!("zhinao serve: closing {} connections still open after the grace period", conns.len());
        conns.shutdown().await;
    }
    Ok(())
}

/// A socket whose writes fail with `TimedOut` once one has been blocked for `limit`: the client
/// stopped reading and its buffers are full.
struct WriteTimeout {
    tcp: TcpStream,
    limit: Duration,
    /// Armed when a write is blocked; cleared by any progress.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.blocked = None;
            return r;
        }
        let limit = self.limit;
        let timer = self.blocked.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.progress(r, cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.tcp).poll_flush(cx);
        self.progress(r, cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.tcp).poll_shutdown(cx);
        self.progress(r, cx)
    }
}
