//! Real gRPC on both sides of tidegate, with tonic: a test service (`test.Echo`: a unary
//! call and a server-streaming one) plus the standard health service, each backend on its
//! own thread and runtime so it can die like a process (every connection cut at once); and
//! a client. Messages are raw bytes (a pass-through codec), so no code generation.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http, BoxFuture, BoxStream, Context, Poll, Service},
    server::{Grpc, NamedService, ServerStreamingService, UnaryService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig},
    Request, Response, Status, Streaming,
};

/// Messages as they are: bytes in, bytes out.
#[derive(Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a backend counts.
#[derive(Default)]
pub struct Seen {
    pub unary: AtomicU64,
    pub streams: AtomicU64,
    /// Streams whose response is still being produced.
    pub open: AtomicI64,
}

#[derive(Clone)]
struct Echo {
    name: Arc<str>,
    seen: Arc<Seen>,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => Grpc::new(Raw).unary(me, req).await,
                "/test.Echo/Stream" => Grpc::new(Raw).server_streaming(me, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Unary: answers the backend's name; a request `sleep:MS` waits that long first.
impl UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            me.seen.unary.fetch_add(1, Ordering::SeqCst);
            let body = req.into_inner();
            if let Some(ms) = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.strip_prefix("sleep:"))
                .and_then(|s| s.parse().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(Response::new(Bytes::from(me.name.to_string())))
        })
    }
}

/// Counts a stream open while its response lives.
struct OpenGuard(Arc<Seen>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Server streaming: `NAME:i` every N ms (the request is N as text), forever.
impl ServerStreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = BoxFuture<Response<BoxStream<Bytes>>, Status>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let every: u64 = std::str::from_utf8(req.get_ref())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            me.seen.streams.fetch_add(1, Ordering::SeqCst);
            me.seen.open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(me.seen.clone());
            let s = futures_util::stream::unfold((guard, 0u64), move |(g, i)| {
                let name = me.name.clone();
                async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(every)).await;
                    }
                    Some((Ok(Bytes::from(format!("{name}:{i}"))), (g, i + 1)))
                }
            });
            Ok(Response::new(Box::pin(s) as BoxStream<Bytes>))
        })
    }
}

/// A gRPC backend on its own thread and runtime.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Seen>,
    pub health: tonic_health::server::HealthReporter,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcBackend {
    /// Plain HTTP/2 (h2c).
    pub fn start(name: &str) -> Self {
        Self::start_with(name, None)
    }

    /// HTTP/2 over TLS with this certificate and key (PEM).
    pub fn start_tls(name: &str, cert: &str, key: &str) -> Self {
        Self::start_with(
            name,
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key))),
        )
    }

    /// HTTP/2 over TLS that requires a client certificate signed by `client_ca` (mTLS).
    pub fn start_mtls(name: &str, cert: &str, key: &str, client_ca: &str) -> Self {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(client_ca));
        Self::start_with(name, Some(tls))
    }

    fn start_with(name: &str, tls: Option<ServerTlsConfig>) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let seen = Arc::new(Seen::default());
        let (health, health_svc) = tonic_health::server::health_reporter();
        let echo = Echo {
            name: name.into(),
            seen: seen.clone(),
        };
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
        let reporter = health.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                reporter.set_serving::<Echo>().await;
                let mut b = Server::builder();
                if let Some(tls) = tls {
                    b = b.tls_config(tls).unwrap();
                }
                let _ = b
                    .add_service(health_svc)
                    .add_service(echo)
                    .serve(addr)
                    .await;
            });
            let _ = up_tx.send(());
            let _ = stop_rx.recv();
            // Every task (the accept loop and each connection) is dropped: connections are
            // cut as when a process dies.
            rt.shutdown_background();
        });
        let _ = up_rx.recv();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "gRPC backend {name} did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            addr,
            name: name.to_string(),
            seen,
            health,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Die: every connection cut at once.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn open_streams(&self) -> i64 {
        self.seen.open.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client channel to `url` (`http://…` h2c, or `https://…` trusting `ca` for `domain`).
pub async fn channel(url: &str, tls: Option<(&str, &str)>) -> Result<Channel, String> {
    let mut e = Channel::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if let Some((ca, domain)) = tls {
        e = e
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name(domain),
            )
            .map_err(|e| e.to_string())?;
    }
    e.connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// One unary call; the answer is the backend's name.
pub async fn unary(ch: &Channel, payload: &str) -> Result<String, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let r = g
        .unary(
            Request::new(Bytes::from(payload.to_string())),
            http::uri::PathAndQuery::from_static("/test.Echo/Unary"),
            Raw,
        )
        .await?;
    Ok(String::from_utf8_lossy(r.get_ref()).into_owned())
}

/// Open a server stream sending every `every_ms`.
pub async fn stream(ch: &Channel, every_ms: u64) -> Result<Streaming<Bytes>, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let r = g
        .server_streaming(
            Request::new(Bytes::from(every_ms.to_string())),
            http::uri::PathAndQuery::from_static("/test.Echo/Stream"),
            Raw,
        )
        .await?;
    Ok(r.into_inner())
}

/// Read a stream to its end: the messages, and how it ended (`Ok` = status OK).
pub async fn drain_stream(mut s: Streaming<Bytes>) -> (Vec<String>, Result<(), Status>) {
    let mut got = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => got.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => return (got, Ok(())),
            Err(st) => return (got, Err(st)),
        }
    }
}

/// A CA, and a certificate it signed for `names`: (ca_pem, cert_pem, key_pem).
pub fn ca_and_cert(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("tidegate test CA {}", fastrand::u64(..)),
    );
    let ca = rcgen::CertifiedIssuer::self_signed(p, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}
