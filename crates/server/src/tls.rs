//! TLS for the server: certificate and key from PEM files, optional mutual
//! TLS (`--tls-client-ca`), reloaded without restart.
//!
//! The files are read at start (a bad file stops the server). Afterwards
//! their modification times and sizes are checked every
//! `--tls-reload-interval`, and on SIGHUP they are read again whatever their
//! times: a good new set replaces the rustls configuration for new
//! connections (open ones keep theirs); a bad one (unreadable, not PEM, key
//! not matching the certificate) is logged as an error and the current
//! certificate stays.
//!
//! rustls on ring, TLS 1.2 and 1.3, ALPN `h2`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use apitoken_proto::pem;
use tokio::{sync::watch, task::JoinHandle};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{RootCertStore, ServerConfig, crypto::ring, server::WebPkiClientVerifier},
};
use tracing::{error, info, warn};

/// Where the server's certificate, key and (for mutual TLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key, PEM (`--tls-key`).
    pub key: PathBuf,
    /// Only clients with a certificate signed by this CA may connect
    /// (`--tls-client-ca`); any client otherwise.
    pub client_ca: Option<PathBuf>,
}

/// A file's modification time and size, to notice replacements.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The current TLS configuration, replaced when the files change.
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    /// gRPC's (ALPN `h2`) and the web console's (`h2`, `http/1.1`).
    current: RwLock<Configs>,
    stamps: Mutex<Vec<Stamp>>,
    generation: AtomicU64,
}

/// One certificate set, as each listener offers it.
#[derive(Debug)]
struct Configs {
    grpc: Arc<ServerConfig>,
    web: Arc<ServerConfig>,
}

impl Configs {
    fn of(grpc: ServerConfig) -> Self {
        let mut web = grpc.clone();
        // Browsers speak HTTP/2, but scripts and older tools HTTP/1.1: a
        // client offering only that would be refused the handshake.
        web.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            grpc: Arc::new(grpc),
            web: Arc::new(web),
        }
    }
}

impl TlsReloader {
    /// Reads the files; an error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<TlsReloader, String> {
        let stamps = Self::stamps_of(&files);
        let config = build(&files)?;
        Ok(TlsReloader {
            files,
            current: RwLock::new(Configs::of(config)),
            stamps: Mutex::new(stamps),
            generation: AtomicU64::new(1),
        })
    }

    fn stamps_of(files: &TlsFiles) -> Vec<Stamp> {
        let mut paths = vec![stamp(&files.cert), stamp(&files.key)];
        if let Some(ca) = &files.client_ca {
            paths.push(stamp(ca));
        }
        paths
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// How many configurations have been loaded (1 at start).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// An acceptor with the current configuration (gRPC: ALPN `h2`).
    pub fn acceptor(&self) -> TlsAcceptor {
        let configs = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&configs.grpc))
    }

    /// An acceptor for the web console: the same certificate, ALPN `h2`
    /// or `http/1.1`.
    pub fn web_acceptor(&self) -> TlsAcceptor {
        let configs = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&configs.web))
    }

    /// Reads the files again if any changed since the last attempt: `None`
    /// if none did, else whether the new set was taken.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = Self::stamps_of(&self.files);
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
            if *stamps == now {
                return None;
            }
            // Remember the attempt even if it fails: a half-written pair is
            // tried again when the files change again.
            *stamps = now;
        }
        Some(self.reload_now())
    }

    /// Reads the files again, changed or not (SIGHUP).
    pub fn reload(&self) -> Result<(), String> {
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = Self::stamps_of(&self.files);
        self.reload_now()
    }

    fn reload_now(&self) -> Result<(), String> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Configs::of(config);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the files every `interval` and reloads on SIGHUP, logging the
    /// outcome, until `stopping`.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        mut stopping: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let reloader = Arc::clone(self);
        // Installed now, before the server says it is serving: a SIGHUP
        // right after must reload, not end the process (its default).
        let mut hangup = Hangup::new();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                let outcome = tokio::select! {
                    _ = ticker.tick() => reloader.reload_if_changed(),
                    () = hangup.recv() => Some(reloader.reload()),
                    _ = stopping.changed() => return,
                };
                match outcome {
                    None => {}
                    Some(Ok(())) => info!(
                        cert = %reloader.files.cert.display(),
                        generation = reloader.generation(),
                        "TLS certificate reloaded: new connections use it"
                    ),
                    Some(Err(reason)) => error!(
                        error = %reason,
                        "TLS certificate reload failed: keeping the current certificate"
                    ),
                }
            }
        })
    }
}

/// SIGHUP, where there is such a thing.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Self {
        #[cfg(unix)]
        {
            let signal =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            if signal.is_none() {
                warn!("cannot listen for SIGHUP: TLS files are reloaded on change only");
            }
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}

/// The rustls configuration for `files`.
fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let named = |flag: &str, path: &Path| format!("{flag} {}", path.display());
    let cert_name = named("--tls-cert", &files.cert);
    let key_name = named("--tls-key", &files.key);
    let certs = pem::certificates(&cert_name, &pem::read_file("--tls-cert", &files.cert)?)?;
    let key = pem::private_key(&key_name, &pem::read_file("--tls-key", &files.key)?)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let ca_name = named("--tls-client-ca", path);
            let mut roots = RootCertStore::empty();
            for cert in pem::certificates(&ca_name, &pem::read_file("--tls-client-ca", path)?)? {
                roots
                    .add(cert)
                    .map_err(|err| format!("{ca_name}: not a usable CA certificate: {err}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| format!("{ca_name}: {err}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("{cert_name} with {key_name}: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
