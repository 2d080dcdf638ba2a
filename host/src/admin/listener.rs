//! Binds the admin API's address and serves the router on it, over plain
//! http or, with `host.admin_tls`, over TLS only (rustls through
//! axum-server; a plain-http client gets no HTTP answer).
//!
//! [`AdminSetup::new`] checks who may reach the API
//! ([`HostConfig::check_admin_access`]) and loads the certificate, so a
//! wrong setting fails startup before anything is bound or connected.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

use crate::config::HostConfig;

/// Why the admin API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The configuration does not allow serving it (names the field).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The certificate or key could not be loaded.
    #[error("cannot load host.admin_tls (cert_path {cert}, key_path {key}): {source}")]
    Tls {
        /// `cert_path`.
        cert: String,
        /// `key_path`.
        key: String,
        /// What rustls or the file system said.
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on host.admin_listen {addr}: {source}")]
    Bind {
        /// `admin_listen`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The admin API's settings, checked, with TLS material loaded: what
/// startup does first, before it connects to Kafka or binds anything.
pub struct AdminSetup {
    listen: String,
    tls: Option<RustlsConfig>,
}

impl AdminSetup {
    /// Checks the access settings and loads the certificate and key. Logs
    /// a warning when the API will be open to other machines
    /// (`admin_insecure`).
    pub async fn new(host: &HostConfig) -> Result<AdminSetup, ListenError> {
        host.check_admin_access()?;
        let tls = match &host.admin_tls {
            Some(t) => Some(
                RustlsConfig::from_pem_file(&t.cert_path, &t.key_path)
                    .await
                    .map_err(|source| ListenError::Tls {
                        cert: t.cert_path.display().to_string(),
                        key: t.key_path.display().to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        if host.admin_open_to_network() {
            tracing::warn!(
                admin = %host.admin_listen,
                "the admin API is served without a token on a non-loopback address \
                 (host.admin_insecure = true): anyone who reaches it can deploy plugins"
            );
        }
        Ok(AdminSetup {
            listen: host.admin_listen.clone(),
            tls,
        })
    }

    /// Binds `host.admin_listen`.
    pub fn bind(self) -> Result<AdminListener, ListenError> {
        let bind_error = |source| ListenError::Bind {
            addr: self.listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(&self.listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(AdminListener {
            listener,
            tls: self.tls,
        })
    }
}

/// A bound admin address, ready to serve.
pub struct AdminListener {
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
}

impl AdminListener {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `app` until `shutdown` completes, then lets open requests
    /// finish for up to `grace`.
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.graceful_shutdown(Some(grace));
        });
        let service = app.into_make_service();
        match self.tls {
            Some(tls) => {
                axum_server::from_tcp_rustls(self.listener, tls)?
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => {
                axum_server::from_tcp(self.listener)?
                    .handle(handle)
                    .serve(service)
                    .await
            }
        }
    }
}
